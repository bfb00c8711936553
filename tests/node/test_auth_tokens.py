"""The node's tokens: what verification accepts and every way it refuses, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from sqlalchemy import create_engine

from node.auth import signing_key
from node.auth.deps import CurrentPrincipal, require_scope
from node.auth.errors import AuthenticationError
from node.auth.policy import PatientBinding, parse_scopes
from node.auth.tokens import NodeTokens
from tests.node.authhelpers import (
    add_node_error_handler,
    hs256_token,
    serve_in_thread,
    tamper_payload,
    unsigned_token,
)

ISSUER = "https://node-a.hospital.test"
OTHER_ISSUER = "https://node-b.hospital.test"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def tokens(keys_dir: Path) -> NodeTokens:
    key = signing_key.load_or_create(keys_dir / "a" / "token-signing.pem")
    return NodeTokens(key, issuer=ISSUER, audience=ISSUER, leeway=5)


@pytest.fixture(scope="module")
def other_node(keys_dir: Path) -> NodeTokens:
    key = signing_key.load_or_create(keys_dir / "b" / "token-signing.pem")
    return NodeTokens(key, issuer=OTHER_ISSUER, audience=OTHER_ISSUER)


@pytest.fixture(scope="module")
def api(tokens: NodeTokens) -> Iterator[str]:
    """A small FastAPI app guarded by the real dependencies, on a real uvicorn."""
    app = FastAPI()
    app.state.node_tokens = tokens
    add_node_error_handler(app)

    @app.get("/studies", dependencies=[require_scope("user/ImagingStudy.read")])
    def studies(principal: CurrentPrincipal) -> dict[str, str]:
        return {"subject": principal.subject, "role": principal.role}

    with serve_in_thread(app) as url:
        yield url


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": ISSUER,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "t-1",
        "role": "clinician",
        "scope": "user/ImagingStudy.read",
    }
    claims.update(overrides)
    return claims


def _public_pem(tokens: NodeTokens) -> bytes:
    return tokens.key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed(tokens: NodeTokens, claims: dict[str, object]) -> str:
    return jwt.encode(claims, tokens.key.private, algorithm="ES256")


Case = Callable[[NodeTokens, NodeTokens], str]
REFUSALS: dict[str, tuple[Case, str]] = {
    "expired": (
        lambda t, o: (
            t.issue(
                subject="alice", role="clinician", ttl_seconds=60, now=time.time() - 3600
            ).access_token
        ),
        "token expired",
    ),
    "not yet valid (nbf)": (
        lambda t, o: _signed(t, _claims(nbf=int(time.time()) + 600)),
        "token not yet valid",
    ),
    "issued in the future (iat)": (
        lambda t, o: (
            t.issue(
                subject="alice", role="clinician", ttl_seconds=60, now=time.time() + 600
            ).access_token
        ),
        "token not yet valid",
    ),
    "another node's token": (
        lambda t, o: o.issue(subject="alice", role="clinician", ttl_seconds=60).access_token,
        "token from an untrusted issuer",
    ),
    "another key claiming our issuer": (
        lambda t, o: _signed(o, _claims()),
        "token signature does not verify",
    ),
    "alg none": (lambda t, o: unsigned_token(_claims()), "token signing algorithm not accepted"),
    "HS256 keyed with our public key": (
        lambda t, o: hs256_token(_claims(), _public_pem(t)),
        "token signing algorithm not accepted",
    ),
    "tampered payload": (
        lambda t, o: tamper_payload(
            t.issue(subject="alice", role="auditor", ttl_seconds=60).access_token, role="admin"
        ),
        "token signature does not verify",
    ),
    "wrong audience": (
        lambda t, o: _signed(t, _claims(aud="https://elsewhere.test")),
        "token not meant for this audience",
    ),
    "missing jti": (
        lambda t, o: _signed(t, {k: v for k, v in _claims().items() if k != "jti"}),
        "token lacks a required claim",
    ),
    "garbage": (lambda t, o: "not.a.jwt", "token is malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_bad_token_gets_401_with_its_own_reason(
    case: str, api: str, tokens: NodeTokens, other_node: NodeTokens
) -> None:
    make, message = REFUSALS[case]
    r = httpx.get(f"{api}/studies", headers={"Authorization": f"Bearer {make(tokens, other_node)}"})
    assert r.status_code == 401, r.text
    assert r.json() == {"error": message}
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert f'error_description="{message}"' in challenge


def test_distinct_reasons_cover_every_case() -> None:
    # Operators debug from the reason alone: the token matrix must not collapse into one text.
    assert len({m for _, m in REFUSALS.values()}) >= 8


def test_a_valid_token_is_accepted_and_no_token_is_challenged(api: str, tokens: NodeTokens) -> None:
    good = tokens.issue(subject="alice", role="clinician", ttl_seconds=60).access_token
    r = httpx.get(f"{api}/studies", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200 and r.json() == {"subject": "alice", "role": "clinician"}
    # Scheme is case-insensitive (RFC 6750 §2.1 via RFC 9110 §11.1).
    r = httpx.get(f"{api}/studies", headers={"Authorization": f"bearer {good}"})
    assert r.status_code == 200
    r = httpx.get(f"{api}/studies")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="pacsmesh"'  # RFC 6750 §3.1
    r = httpx.get(f"{api}/studies", headers={"Authorization": f"Basic {good}"})
    assert r.status_code == 401 and "not a bearer token" in r.json()["error"]


def test_a_valid_token_without_the_scope_gets_403_naming_it(api: str, tokens: NodeTokens) -> None:
    auditor = tokens.issue(subject="audrey", role="auditor", ttl_seconds=60).access_token
    r = httpx.get(f"{api}/studies", headers={"Authorization": f"Bearer {auditor}"})
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert 'scope="user/ImagingStudy.read"' in r.headers["www-authenticate"]


def test_clock_skew_leeway_is_honoured(tokens: NodeTokens) -> None:
    # Expired 3 seconds ago: inside a 5 s leeway, outside a 0 s one.
    late = tokens.issue(
        subject="alice", role="clinician", ttl_seconds=60, now=time.time() - 63
    ).access_token
    assert tokens.verify(late).subject == "alice"
    strict = NodeTokens(tokens.key, issuer=ISSUER, audience=ISSUER, leeway=0)
    with pytest.raises(AuthenticationError, match="token expired"):
        strict.verify(late)


def test_issued_claims_and_patient_binding(tokens: NodeTokens) -> None:
    issued = tokens.issue(
        subject="pat",
        role="patient",
        ttl_seconds=120,
        patient=PatientBinding("MRN-7", "HOSP-A"),
    )
    claims = jwt.decode(
        issued.access_token, tokens.key.public, algorithms=["ES256"], audience=ISSUER
    )
    assert claims["iss"] == ISSUER and claims["role"] == "patient"
    assert claims["exp"] - claims["iat"] == 120 and claims["nbf"] == claims["iat"]
    assert claims["patient"] == {"mrn": "MRN-7", "issuer": "HOSP-A"}
    assert claims["scope"] == "patient/*.read patient/Consent.write"
    assert jwt.get_unverified_header(issued.access_token)["kid"] == tokens.key.kid
    principal = tokens.verify(issued.access_token)
    assert principal.patient == PatientBinding("MRN-7", "HOSP-A")
    assert principal.token_id == claims["jti"]


def test_a_signed_token_cannot_lift_its_role(tokens: NodeTokens) -> None:
    # Even a correctly signed token is capped by its role's ceiling (defence in depth).
    lifted = _signed(tokens, _claims(role="auditor", scope="system/*.* user/*.*"))
    principal = tokens.verify(lifted)
    assert not principal.allows("ImagingStudy", "read")
    unknown = _signed(tokens, _claims(role="superuser", scope="user/*.*"))
    assert tokens.verify(unknown).scopes == ()
    with pytest.raises(AuthenticationError, match="names no patient"):
        tokens.verify(_signed(tokens, _claims(role="patient", scope="patient/*.read")))


def test_issuing_refuses_scopes_beyond_the_role(tokens: NodeTokens) -> None:
    from node.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="exceeds"):
        tokens.issue(
            subject="c",
            role="clinician",
            ttl_seconds=60,
            scopes=parse_scopes("user/AuditEvent.read"),
        )
    narrowed = tokens.issue(
        subject="svc", role="admin", ttl_seconds=60, scopes=parse_scopes("system/ImagingStudy.read")
    )
    assert narrowed.scope == "system/ImagingStudy.read"
    principal = tokens.verify(narrowed.access_token)
    assert principal.satisfies("user/ImagingStudy.read")
    assert not principal.satisfies("user/ImagingStudy.write")


def test_signing_key_is_private_stable_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "token-signing.pem"
    first = signing_key.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert signing_key.load_or_create(path).kid == first.kid
    path.write_text("not a key")
    with pytest.raises(signing_key.SigningKeyError, match="unreadable"):
        signing_key.load_or_create(path)


def test_tokens_for_caches_per_app(tmp_path: Path) -> None:
    from node.auth.tokens import tokens_for
    from node.settings import load_settings

    settings = load_settings(data_dir=tmp_path, port=9999)
    holder = SimpleNamespace(archive=SimpleNamespace(engine=create_engine("sqlite://")))
    first = tokens_for(settings, holder)
    assert tokens_for(settings, holder) is first
    assert first.issuer == "http://127.0.0.1:9999" == first.audience
    assert (tmp_path / "keys" / "token-signing.pem").exists()


def test_a_token_accepted_before_is_refused_once_expired_and_any_edit_is_verified_anew(
    tokens: NodeTokens,
) -> None:
    # Verified tokens are remembered (a client sends the same one with every request): the
    # memory must never outlive the token, nor cover a token that differs from it.
    from node.auth.middleware import BearerAuthMiddleware

    strict = NodeTokens(tokens.key, issuer=ISSUER, audience=ISSUER, leeway=0)
    app = FastAPI()
    add_node_error_handler(app)

    @app.get("/dicom-web/studies")
    def studies() -> list[str]:
        return []

    app.add_middleware(BearerAuthMiddleware, tokens=lambda: strict)
    issued = strict.issue(subject="alice", role="clinician", ttl_seconds=2)
    expires = jwt.decode(issued.access_token, options={"verify_signature": False})["exp"]
    with serve_in_thread(app) as url, httpx.Client() as http:

        def ask(token: str) -> httpx.Response:
            return http.get(
                f"{url}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
            )

        assert ask(issued.access_token).status_code == 200
        assert ask(issued.access_token).status_code == 200
        edited = tamper_payload(issued.access_token, role="admin")
        r = ask(edited)
        assert r.status_code == 401 and r.json() == {"error": "token signature does not verify"}
        while time.time() < expires:
            time.sleep(0.2)
        r = ask(issued.access_token)
        assert r.status_code == 401 and r.json() == {"error": "token expired"}


def test_an_unreachable_account_database_answers_503_never_a_yes(tokens: NodeTokens) -> None:
    from node.auth.users import TokenHolders
    from node.errors import StorageError

    # Nothing listens on port 1: the account behind a well-signed token cannot be looked up.
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    checked = NodeTokens(
        tokens.key,
        issuer=ISSUER,
        audience=ISSUER,
        accounts=TokenHolders(engine),
    )
    token = checked.issue(subject="alice", role="clinician", ttl_seconds=60).access_token
    with pytest.raises(StorageError, match="index database is unreachable") as refused:
        checked.verify(token)
    assert refused.value.http_status == 503
    engine.dispose()


def test_a_rotated_key_signs_anew_and_the_old_one_verifies_only_what_it_signed(
    tmp_path: Path,
) -> None:
    from node.settings import load_settings

    settings = load_settings(data_dir=tmp_path, token_issuer=ISSUER)
    path, lifetime = signing_key.key_path(settings), signing_key.token_lifetime(settings)
    serving = NodeTokens.from_settings(settings)  # the node process, built before the rotation
    old_key = serving.key
    before = serving.issue(subject="alice", role="clinician", ttl_seconds=600).access_token
    assert serving.verify(before).subject == "alice"

    # Another process (`node signing-key rotate`) replaces the key on disk.
    new_key, retired = signing_key.rotate(path, lifetime)
    assert retired.kid == old_key.kid != new_key.kid
    cli = NodeTokens.from_settings(settings)
    after = cli.issue(subject="bob", role="clinician", ttl_seconds=60)
    assert serving.verify(after.access_token).subject == "bob"
    assert serving.verify(before).subject == "alice"  # signed by the retired key, still alive
    signed_now = serving.issue(subject="carol", role="clinician", ttl_seconds=60).access_token
    assert jwt.get_unverified_header(signed_now)["kid"] == new_key.kid
    assert [k["kid"] for k in serving.jwks()["keys"]] == [new_key.kid, old_key.kid]

    # A leaked copy of the retired key cannot mint a token that outlives its retirement.
    leaked = NodeTokens(old_key, issuer=ISSUER, audience=ISSUER)
    forged = leaked.issue(subject="mallory", role="admin", ttl_seconds=lifetime + 3600)
    with pytest.raises(AuthenticationError, match="outlives the retired key"):
        serving.verify(forged.access_token)

    # Once its tokens have all expired a retired key is forgotten (here: a lifetime of 0).
    newest, _ = signing_key.rotate(path, 0)
    with pytest.raises(AuthenticationError, match="token signature does not verify"):
        serving.verify(after.access_token)
    assert serving.verify(before).subject == "alice"
    assert [k["kid"] for k in serving.jwks()["keys"]] == [newest.kid, old_key.kid]
