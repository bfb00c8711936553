"""Default deny, route by route: every route of the app × every role (issue #6).

The routes come from the FastAPI app itself, so a route added without an entry here fails the
test; the expectations are written out below, independently of the middleware's rule table.
Allowed means the request got past authorization (not 401/403, and no server error: the
handler answered, often 400/404/415 for these empty requests). Denied means 401 with a Bearer
challenge without a (valid) token, a token whose account was removed or disabled after it was
issued included, and 403 with a token that lacks the rights.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from node.auth.policy import PatientBinding, parse_scopes
from node.auth.users import remove_user, set_disabled
from tests.node.authhelpers import account_token
from tests.node.fhir_helpers import FhirNode, serve_node

STAFF = frozenset({"clinician", "radiologist", "admin"})
DEVICE = "capture-device"  # admin-owned service account narrowed to system/ImagingStudy.write
READER = "reader-service"  # admin-owned service account narrowed to system/ImagingStudy.read
TRAINER = "trainer"  # the AI-training credential (role trainer, purpose ai-training)
PRINCIPALS = (
    "clinician",
    "radiologist",
    "patient",
    "auditor",
    "admin",
    DEVICE,
    READER,
    TRAINER,
    "no token",
    "expired token",
    "removed account",
    "disabled account",
)
# Refused with 401 whatever the route, and the challenge says why.
UNAUTHENTICATED = {
    "no token": "",
    "expired token": "token expired",
    "removed account": "token revoked: its account no longer exists",
    "disabled account": "token revoked: its account is disabled",
}
EVERYONE = frozenset(PRINCIPALS)
NOBODY: frozenset[str] = frozenset()

PUBLIC = {
    "/healthz",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/auth/token",
    "/auth/jwks.json",
    "/fhir/metadata",
}
_CLINICAL_READERS = frozenset({"clinician", "radiologist", "patient", "admin"})

# (method, path template with every {param} written as {}) -> who may call it.
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/gateway/captures"): STAFF | {DEVICE},
    ("GET", "/fhir/Patient"): _CLINICAL_READERS,
    ("GET", "/fhir/Patient/{}"): _CLINICAL_READERS,
    ("GET", "/fhir/ServiceRequest"): _CLINICAL_READERS,
    ("GET", "/fhir/ServiceRequest/{}"): _CLINICAL_READERS,
    ("GET", "/fhir/ImagingStudy"): _CLINICAL_READERS | {READER},
    ("GET", "/fhir/ImagingStudy/{}"): _CLINICAL_READERS | {READER},
    ("GET", "/fhir/Observation"): _CLINICAL_READERS,
    ("GET", "/fhir/Observation/{}"): _CLINICAL_READERS,
    ("GET", "/fhir/DiagnosticReport"): _CLINICAL_READERS,
    ("GET", "/fhir/DiagnosticReport/{}"): _CLINICAL_READERS,
    ("GET", "/fhir/DiagnosticReport/{}/_history"): _CLINICAL_READERS,
    ("GET", "/fhir/DiagnosticReport/{}/_history/{}"): _CLINICAL_READERS,
    ("POST", "/fhir/DiagnosticReport"): frozenset({"radiologist", "admin"}),
    ("PUT", "/fhir/DiagnosticReport/{}"): frozenset({"radiologist", "admin"}),
    ("GET", "/fhir/Endpoint/{}"): frozenset({"clinician", "radiologist", "auditor", "admin"}),
    # Other helpers' routes of this round (audit-wire, consent-node), once merged:
    ("GET", "/fhir/AuditEvent"): frozenset({"auditor", "admin", "patient"}),
    ("GET", "/fhir/AuditEvent/{}"): frozenset({"auditor", "admin", "patient"}),
    ("GET", "/fhir/Consent"): STAFF | {"auditor"},
    ("GET", "/fhir/Consent/{}"): STAFF | {"auditor"},
    ("POST", "/fhir/Patient/{}/$link"): frozenset({"admin"}),
    ("POST", "/fhir/Patient/{}/$unlink"): frozenset({"admin"}),
    ("POST", "/fhir/Consent"): frozenset({"patient", "admin"}),
    # Any other FHIR path or interaction: nobody gets past authorization.
    **{(m, "/fhir/{}"): NOBODY for m in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    # Cross-hospital exchange (docs/exchange.md): the staff who treat search and retrieve;
    # provenance for them, auditors and admins (not service credentials: no Consent.read).
    ("GET", "/network/studies"): frozenset({"clinician", "radiologist"}),
    ("POST", "/network/studies/{}/$retrieve"): frozenset({"clinician", "radiologist"}),
    ("GET", "/network/transfers"): frozenset({"clinician", "radiologist", "auditor", "admin"}),
    # Peer routes take no token at all: only a member's certificate (PEER_ROUTES below).
    ("GET", "/network/peer/studies"): NOBODY,
    ("GET", "/network/peer/studies/{}"): NOBODY,
    ("GET", "/admin/reconciliation"): frozenset({"admin"}),
    ("POST", "/admin/reconciliation/{}/resolve"): frozenset({"admin"}),
    ("GET", "/admin/orders"): frozenset({"admin"}),
    ("GET", "/admin/outbox"): frozenset({"admin"}),
    ("POST", "/admin/outbox/{}/retry"): frozenset({"admin"}),
}
# DICOMweb (every route, by method): staff and a reader service read; staff and capture
# devices store; only a full admin deletes (crypto-shredding). No patient access yet.
DICOMWEB = {
    "GET": STAFF | {READER},
    "POST": STAFF | {DEVICE},
    "DELETE": frozenset({"admin"}),
}
# The training credential reads only searches, instances and metadata, which the node
# de-identifies; frames, bulk data, rendered images and thumbnails are refused to it. (This node
# has no ledger, so the routes it may call answer 503 past authorization.)
_LEVELS = ("/dicom-web/studies/{}", "/dicom-web/studies/{}/series/{}")
TRAINING_READS = frozenset(
    {
        "/dicom-web/studies",
        "/dicom-web/series",
        "/dicom-web/instances",
        "/dicom-web/studies/{}/series",
        "/dicom-web/studies/{}/instances",
        "/dicom-web/studies/{}/series/{}/instances",
        *_LEVELS,
        "/dicom-web/studies/{}/series/{}/instances/{}",
        *(f"{p}/metadata" for p in (*_LEVELS, "/dicom-web/studies/{}/series/{}/instances/{}")),
    }
)
_PARAM = re.compile(r"\{[^}]*\}")
# Node-to-node routes: whatever token (or none) a caller brings, without a consortium member's
# client certificate the answer is 403 (tests/node/test_exchange.py covers member certificates).
PEER_PREFIX = "/network/peer/"


def expected(method: str, template: str) -> frozenset[str] | None:
    """Who may call a route; None when the matrix does not know the route."""
    if template in PUBLIC:
        return EVERYONE
    if template.startswith("/dicom-web/"):
        allowed = DICOMWEB.get(method)
        if allowed is not None and method == "GET" and _PARAM.sub("{}", template) in TRAINING_READS:
            allowed = allowed | {TRAINER}
        return allowed
    return MATRIX.get((method, _PARAM.sub("{}", template)))


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route, included routers flattened."""
    found: list[tuple[str, str]] = []

    def visit(route: Any) -> None:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # a router included with a prefix
            for inner in contexts():
                visit(inner)
            return
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":  # Starlette adds HEAD beside GET; same rule
                found.append((method, route.path))

    for route in app.routes:
        visit(route)
    return found


def concrete(template: str) -> str:
    """A request path for a template: each parameter becomes a plausible value."""
    return _PARAM.sub("1.2.3", template)


class Matrix:
    def __init__(self, node: FhirNode, app: FastAPI) -> None:
        self.node = node
        self.routes = app_routes(app)
        settings = node.archive.settings
        ttl = 600
        self.headers: dict[str, dict[str, str]] = {"no token": {}}
        for role in ("clinician", "radiologist", "auditor", "admin"):
            self.headers[role] = _bearer(account_token(settings, role, role, ttl))
        self.headers["patient"] = _bearer(
            account_token(
                settings, "p1", "patient", ttl, patient=PatientBinding("MRN-MATRIX", "HOSP")
            )
        )
        for name, scope in (
            (DEVICE, "system/ImagingStudy.write"),
            (READER, "system/ImagingStudy.read"),
        ):
            issued = account_token(settings, name, "admin", ttl, scopes=parse_scopes(scope))
            self.headers[name] = _bearer(issued)
        self.headers[TRAINER] = _bearer(account_token(settings, TRAINER, "trainer", ttl))
        expired = account_token(settings, "clinician", "clinician", 60, now=time.time() - 3600)
        self.headers["expired token"] = _bearer(expired)
        # Admins whose accounts were removed or disabled after their tokens were issued.
        engine = node.archive.engine
        for principal, account, cut_off in (
            ("removed account", "gone", remove_user),
            ("disabled account", "barred", lambda e, name: set_disabled(e, name, True)),
        ):
            self.headers[principal] = _bearer(account_token(settings, account, "admin", ttl))
            cut_off(engine, account)


def _bearer(issued: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.access_token}"}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    with serve_node(tmp_path_factory.mktemp("matrix") / "node", auth_enabled=True) as node:
        assert node.app is not None
        yield Matrix(node, node.app)


def test_every_route_is_in_the_matrix(matrix: Matrix) -> None:
    unknown = [f"{m} {t}" for m, t in matrix.routes if expected(m, t) is None]
    assert not unknown, "routes without an expected row in the access matrix: " + ", ".join(unknown)
    # The app has routes under every prefix the matrix covers.
    prefixes = {t.split("/")[1] for _, t in matrix.routes}
    assert {"dicom-web", "fhir", "gateway", "admin", "auth", "network"} <= prefixes


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_route_by_role(matrix: Matrix, principal: str) -> None:
    wrong: list[str] = []
    with httpx.Client(base_url=matrix.node.url, timeout=60) as client:
        for method, template in matrix.routes:
            allowed = expected(method, template)
            assert allowed is not None, f"{method} {template} is not in the matrix"
            r = client.request(method, concrete(template), headers=matrix.headers[principal])
            got = f"{method} {template}: {r.status_code} {r.text[:120]}"
            if template.startswith(PEER_PREFIX):
                if r.status_code != 403 or "peer" not in r.json()["error"]:
                    wrong.append(f"a peer route should be 403 without a certificate, got {got}")
            elif principal in allowed:
                # 503 is a dependency that is not there (this node has no ledger, so Consent
                # answers "unavailable" once authorization has let the caller through).
                if r.status_code in (401, 403) or (r.status_code >= 500 and r.status_code != 503):
                    wrong.append(f"should pass authorization, got {got}")
            elif principal in UNAUTHENTICATED:
                challenge = r.headers.get("www-authenticate", "")
                if r.status_code != 401 or not challenge.startswith("Bearer"):
                    wrong.append(f"should be 401 with a Bearer challenge, got {got}")
                elif UNAUTHENTICATED[principal] not in challenge:
                    reason = UNAUTHENTICATED[principal]
                    wrong.append(f"should say {reason!r}, got {got} ({challenge})")
            elif r.status_code != 403:
                wrong.append(f"should be 403, got {got}")
            elif template.startswith("/fhir/") and r.json().get("resourceType") != (
                "OperationOutcome"
            ):
                wrong.append(f"a FHIR refusal should be an OperationOutcome, got {got}")
    assert not wrong, f"{principal}:\n" + "\n".join(wrong)


def test_every_role_gets_somewhere_and_none_gets_everywhere(matrix: Matrix) -> None:
    """Guards the table itself: no role is locked out of everything or let into everything."""
    closed = [(m, t) for m, t in matrix.routes if expected(m, t) != EVERYONE]
    for role in (
        "clinician",
        "radiologist",
        "patient",
        "auditor",
        "admin",
        DEVICE,
        READER,
        TRAINER,
    ):
        reachable = [r for r in closed if role in (expected(*r) or NOBODY)]
        assert reachable, f"{role} can reach no protected route"
        assert len(reachable) < len(closed), f"{role} can reach every protected route"


def test_a_route_missing_from_the_rule_table_is_closed(tmp_path: Path) -> None:
    """Default deny for routes added later: a new route with no rule refuses every token."""
    with serve_node(tmp_path / "node", auth_enabled=True) as node:
        admin = _bearer(account_token(node.archive.settings, "root", "admin", 60))
        # A path no rule names stays closed, even to an admin, even under /network.
        r = httpx.get(f"{node.url}/network/members", headers=admin, timeout=30)
        assert r.status_code == 403
        assert "no access rule" in r.json()["error"]
        assert httpx.get(f"{node.url}/network/members", timeout=30).status_code == 401
