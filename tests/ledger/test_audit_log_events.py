"""Audit events: PS3.15 / FHIR vocabulary, reproducible canonical bytes, no plaintext identities."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ledger.audit_events import (
    Action,
    AuditEvent,
    AuditEventError,
    EventType,
    Outcome,
    canonical_json,
    parse_event,
    patient_ref,
    uid_hash,
)

PATIENT = "0x" + "ab" * 20


def raw_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "110103",
        "action": "R",
        "outcome": 0,
        "recorded": "2026-03-01T09:30:00.250+01:00",
        "agents": [
            {
                "who": "user:radiologist-4@hospital-b",
                "role": "radiologist",
                "requestor": True,
                "network_address": "192.0.2.10",
            },
            {"who": "node:hospital-a", "role": "110153", "requestor": False},
        ],
        "entities": [
            {"kind": "patient", "ref": PATIENT},
            {"kind": "study", "ref": uid_hash("1.2.826.0.1.3680043.8.498.1")},
        ],
        "source": {"node": "hospital-a", "site": "radiology"},
        "purpose": "treatment",
    }
    event.update(overrides)
    return event


def test_canonical_bytes_are_sorted_compact_utf8_and_fixed() -> None:
    event = parse_event(raw_event())
    body = event.canonical()
    assert body == (
        b'{"action":"R","agents":[{"network_address":"192.0.2.10","requestor":true,'
        b'"role":"radiologist","who":"user:radiologist-4@hospital-b"},{"requestor":false,'
        b'"role":"110153","who":"node:hospital-a"}],"entities":[{"kind":"patient","ref":"0x'
        + b"ab" * 20
        + b'"},{"kind":"study","ref":"'
        + uid_hash("1.2.826.0.1.3680043.8.498.1").encode()
        + b'"}],"event_type":"110103","outcome":0,"purpose":"treatment",'
        b'"recorded":"2026-03-01T08:30:00.250000Z","source":{"node":"hospital-a",'
        b'"site":"radiology"},"v":1}'
    )
    # Decoding and re-encoding gives the same bytes, whatever the input's key order.
    assert AuditEvent.from_canonical(body).canonical() == body
    shuffled = dict(reversed(list(raw_event().items())))
    assert parse_event(shuffled).canonical() == body


def test_equal_instants_in_other_zones_encode_identically() -> None:
    a = parse_event(raw_event(recorded="2026-03-01T08:30:00.25Z")).canonical()
    b = parse_event(raw_event(recorded="2026-03-01T03:30:00.250-05:00")).canonical()
    c = parse_event(
        raw_event(recorded=datetime(2026, 3, 1, 17, 30, 0, 250000, timezone(timedelta(hours=9))))
    ).canonical()
    assert a == b == c


def test_vocabulary_aliases_map_to_dicom_and_fhir_codes() -> None:
    event = parse_event(raw_event(event_type="query", action="E", outcome="serious-failure"))
    assert event.event_type is EventType.QUERY and event.event_type.display == "Query"
    assert event.action is Action.EXECUTE
    assert event.outcome is Outcome.SERIOUS_FAILURE
    assert b'"event_type":"110112"' in event.canonical()
    assert b'"outcome":8' in event.canonical()
    now = AuditEvent.now(**{k: v for k, v in raw_event().items() if k != "recorded"})
    assert abs(now.recorded - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"entities": [{"kind": "patient", "ref": "Jane Roe"}]}, "plaintext identifiers"),
        ({"entities": [{"kind": "patient", "ref": "MRN-00042"}]}, "plaintext identifiers"),
        ({"entities": [{"kind": "study", "ref": "1.2.840.113619.2.1"}]}, "hash of the Study"),
        ({"entities": [{"kind": "query", "ref": "PatientName=ROE^JANE"}]}, "hash of the query"),
        (
            {"agents": [{"who": "Jane Roe", "role": "patient", "requestor": True}]},
            "patient agent's who must be their ledger address",
        ),
        ({"patient_name": "Jane Roe"}, "Extra inputs are not permitted"),
        ({"recorded": "2026-03-01T09:30:00"}, "time zone"),
        ({"agents": []}, "at least 1 item"),
        ({"action": "X"}, "action"),
        ({"event_type": "110199"}, "event_type"),
    ],
)
def test_events_that_could_leak_identity_or_are_malformed_are_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuditEventError, match=message) as err:
        parse_event(raw_event(**change))
    # The message names the rule, never the offending value.
    assert "Roe" not in str(err.value) and "00042" not in str(err.value)


def test_patient_refs_and_uid_hashes() -> None:
    assert patient_ref("0x" + "AB" * 20) == PATIENT
    with pytest.raises(AuditEventError):
        patient_ref("Jane Roe")
    digest = hashlib.sha256(b"1.2.3").hexdigest()
    assert uid_hash("1.2.3") == f"sha256:{digest}"
    keccak_style = "0x" + "cd" * 32  # on-chain study hashes are accepted as they are
    event = parse_event(raw_event(entities=[{"kind": "study", "ref": keccak_style}]))
    assert event.entities[0].ref == keccak_style


def test_canonical_json_follows_rfc8785_for_the_allowed_types() -> None:
    # RFC 8785 §3.2.2.2: short escapes for \b \t \n \f \r, \u00xx (lower-case) for the other
    # controls, raw UTF-8 for everything else; §3.2.3: members sorted by key.
    value = {"b": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/", "a": [True, None, 7, -3]}
    expected = '{"a":[true,null,7,-3],"b":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(value) == expected.encode("utf-8")
    assert json.loads(canonical_json(value)) == value
    with pytest.raises(AuditEventError, match="float"):
        canonical_json({"x": 1.5})
    with pytest.raises(AuditEventError, match="53 bits"):
        canonical_json({"x": 2**60})
    with pytest.raises(AuditEventError, match="lone surrogates"):
        canonical_json({"x": "\ud800"})
