"""Without a working ledger the node still serves, and consent answers a clear 503."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from eth_account import Account

from ledger.chain import connect
from ledger.consent import Purpose
from ledger.keystore import ensure_node_account
from node.fhir.consents import SEARCH_PARAMS
from node.services.consent_decisions import ConsentDecisions
from node.services.consent_errors import LedgerRefusedError
from node.services.patient_links import sign_link
from tests.ledger.conftest import Anvil
from tests.node.conftest import start_node
from tests.node.consent_helpers import (
    ConsentNode,
    make_consortium,
    serve_consent_node,
)


def _unavailable(node: ConsentNode, words: str) -> None:
    replies = [
        node.get("Consent"),
        node.get("Consent/" + "ab" * 32),
        node.post("Consent", {"resourceType": "Consent"}),
        node.post("Patient/1/$link", sign_link(Account.create(), "h", "m").to_parameters()),
    ]
    for reply in replies:
        assert reply.status_code == 503, reply.text
        issue = reply.json()["issue"][0]
        assert issue["code"] == "transient"
        assert words in issue["diagnostics"]


def test_node_without_deployment_serves_and_consent_is_503(tmp_path: Path) -> None:
    with serve_consent_node(tmp_path / "node") as node:
        assert node.app is not None and node.app.state.ledger is None
        assert node.get("Patient").status_code == 200  # local care goes on
        _unavailable(node, "no ledger deployment")
        capabilities = node.get("metadata").json()
        types = {r["type"]: r for r in capabilities["rest"][0]["resource"]}
        consent = types["Consent"]
        assert {p["name"] for p in consent["searchParam"]} == SEARCH_PARAMS
        assert {i["code"] for i in consent["interaction"]} == {"read", "search-type", "create"}
        assert types["Patient"]["operation"][0]["name"] == "link"


def test_embedded_chain_held_by_another_process_degrades_to_503(tmp_path: Path) -> None:
    consortium = make_consortium(tmp_path / "node" / "ledger")
    holder = connect(
        consortium.ledger_dir, None, account=ensure_node_account(consortium.ledger_dir)
    )
    try:
        with serve_consent_node(tmp_path / "node", consortium) as node:
            assert node.app is not None and node.app.state.ledger is None
            _unavailable(node, "open in another process")
    finally:
        holder.close()


@pytest.mark.integration
def test_chain_outage_makes_decisions_stale_not_wrong(tmp_path: Path) -> None:
    anvil = Anvil().start()
    try:
        consortium = make_consortium(tmp_path / "node" / "ledger", anvil)
        with serve_consent_node(
            tmp_path / "node", consortium, ledger_consent_max_age_seconds=1.0
        ) as node:
            decisions = ConsentDecisions(node.ledger)
            patient = Account.create().address
            b = consortium.member_b.address
            assert not decisions.decide(b, patient, Purpose.TREATMENT, None).permitted
            anvil.stop()
            time.sleep(1.6)
            with pytest.raises(LedgerRefusedError) as err:
                decisions.decide(b, patient, Purpose.TREATMENT, None)
            assert err.value.http_status == 503
            reply = node.get("Consent")
            assert reply.status_code == 503
            assert "last synced" in reply.json()["issue"][0]["diagnostics"]
    finally:
        anvil.stop()


def test_misconfigured_member_key_stops_the_node_without_leaking_it(tmp_path: Path) -> None:
    make_consortium(tmp_path / "node" / "ledger")
    env = {"NODE_LEDGER_KEY_PASSPHRASE": "env:PACSMESH_TEST_NO_SUCH_VARIABLE"}
    with pytest.raises(RuntimeError) as err:
        start_node(tmp_path / "node", env=env)
    assert "PACSMESH_TEST_NO_SUCH_VARIABLE is not set" in str(err.value)
    wrong = {"NODE_LEDGER_KEY_PASSPHRASE": "env:PACSMESH_TEST_PW", "PACSMESH_TEST_PW": "hunter2x"}
    with pytest.raises(RuntimeError) as err:
        start_node(tmp_path / "node", env=wrong)
    assert "wrong password" in str(err.value) and "hunter2x" not in str(err.value)
