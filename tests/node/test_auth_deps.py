"""The default-deny middleware and the route dependencies, on a small app over real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from node.auth import signing_key
from node.auth.deps import CurrentPrincipal, require_scope
from node.auth.middleware import BearerAuthMiddleware, RouteRule
from node.auth.policy import PatientBinding, check_patient_access
from node.auth.tokens import NodeTokens
from tests.node.authhelpers import add_node_error_handler, serve_in_thread

ISSUER = "https://node.test"
RULES = (
    RouteRule("/patients/", frozenset({"GET"}), ("user/Patient.read", "patient/Patient.read")),
    RouteRule("/reports", frozenset({"POST"}), ("user/DiagnosticReport.write",)),
    RouteRule("/admin/", frozenset({"POST"}), ("user/Organization.write",), frozenset({"admin"})),
)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> NodeTokens:
    path = Path(tmp_path_factory.mktemp("k")) / "token-signing.pem"
    return NodeTokens(signing_key.load_or_create(path), issuer=ISSUER, audience=ISSUER)


@pytest.fixture(scope="module")
def guarded(tokens: NodeTokens) -> Iterator[str]:
    """An app behind the middleware (its own rule table) with dependencies on each route."""
    app = FastAPI()
    app.state.node_tokens = tokens
    add_node_error_handler(app)
    app.add_middleware(
        BearerAuthMiddleware,
        tokens=lambda: tokens,
        public_paths=frozenset({"/healthz"}),
        rules=RULES,
    )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/patients/{mrn}",
        dependencies=[require_scope("user/Patient.read", "patient/Patient.read")],
    )
    def patient(mrn: str, principal: CurrentPrincipal) -> dict[str, str]:
        check_patient_access(principal, mrn, "HOSP-A")
        return {"mrn": mrn, "seen_by": principal.subject}

    @app.post("/reports", dependencies=[require_scope("user/DiagnosticReport.write")])
    def report(principal: CurrentPrincipal) -> dict[str, str]:
        return {"author": principal.subject}

    @app.get("/unlisted")
    def unlisted() -> dict[str, str]:
        return {"leak": "should never be reachable"}

    @app.post("/admin/org")
    def admin_org() -> dict[str, str]:
        return {"ok": "yes"}

    with serve_in_thread(app) as url:
        yield url


def _auth(tokens: NodeTokens, role: str, patient: PatientBinding | None = None) -> dict[str, str]:
    token = tokens.issue(subject=f"{role}-1", role=role, ttl_seconds=60, patient=patient)
    return {"Authorization": f"Bearer {token.access_token}"}


def test_public_paths_need_no_token_and_everything_else_does(guarded: str) -> None:
    assert httpx.get(f"{guarded}/healthz").json() == {"status": "ok"}
    for method, path in (("GET", "/patients/MRN-1"), ("POST", "/reports"), ("GET", "/unlisted")):
        r = httpx.request(method, f"{guarded}{path}")
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == 'Bearer realm="pacsmesh"'
        assert r.json() == {"error": "a bearer token is required"}


def test_routes_without_a_rule_are_denied_to_every_role(guarded: str, tokens: NodeTokens) -> None:
    for role in ("clinician", "radiologist", "auditor", "admin"):
        r = httpx.get(f"{guarded}/unlisted", headers=_auth(tokens, role))
        assert r.status_code == 403, role
        assert r.json() == {"error": "no access rule admits this route"}


def test_scopes_and_roles_decide(guarded: str, tokens: NodeTokens) -> None:
    r = httpx.post(f"{guarded}/reports", headers=_auth(tokens, "radiologist"))
    assert r.status_code == 200 and r.json() == {"author": "radiologist-1"}
    r = httpx.post(f"{guarded}/reports", headers=_auth(tokens, "clinician"))
    assert r.status_code == 403
    assert 'scope="user/DiagnosticReport.write"' in r.headers["www-authenticate"]
    # Role-limited rule: the admin passes; nobody else, whatever their scopes.
    assert httpx.post(f"{guarded}/admin/org", headers=_auth(tokens, "admin")).status_code == 200
    r = httpx.post(f"{guarded}/admin/org", headers=_auth(tokens, "auditor"))
    assert r.status_code == 403


def test_a_patient_sees_only_their_own_compartment(guarded: str, tokens: NodeTokens) -> None:
    me = _auth(tokens, "patient", PatientBinding("MRN-1", "HOSP-A"))
    r = httpx.get(f"{guarded}/patients/MRN-1", headers=me)
    assert r.status_code == 200 and r.json()["mrn"] == "MRN-1"
    r = httpx.get(f"{guarded}/patients/MRN-2", headers=me)
    assert r.status_code == 403
    assert r.json() == {"error": "a patient may access only their own records"}
    # Staff read any patient their scopes cover; the auditor's scopes do not.
    r = httpx.get(f"{guarded}/patients/MRN-2", headers=_auth(tokens, "clinician"))
    assert r.status_code == 200 and r.json()["seen_by"] == "clinician-1"
    assert (
        httpx.get(f"{guarded}/patients/MRN-2", headers=_auth(tokens, "auditor")).status_code == 403
    )


def test_dependencies_alone_guard_a_route_without_middleware(tokens: NodeTokens) -> None:
    app = FastAPI()
    app.state.node_tokens = tokens
    add_node_error_handler(app)

    @app.get("/studies", dependencies=[require_scope("user/ImagingStudy.read")])
    def studies(principal: CurrentPrincipal) -> dict[str, str]:
        return {"role": principal.role}

    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/studies").status_code == 401
        ok = httpx.get(f"{url}/studies", headers=_auth(tokens, "clinician"))
        assert ok.status_code == 200 and ok.json() == {"role": "clinician"}
        patient = _auth(tokens, "patient", PatientBinding("MRN-1"))
        # The route did not opt in to patient access: a patient token is refused.
        assert httpx.get(f"{url}/studies", headers=patient).status_code == 403


def test_require_scope_rejects_typos_at_definition() -> None:
    with pytest.raises(ValueError, match="not a SMART scope"):
        require_scope("user/ImagingStudy.raed")
    with pytest.raises(ValueError, match="at least one"):
        require_scope()
