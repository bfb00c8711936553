"""External OIDC issuers (Keycloak-like and Entra-ID-like) with real keys from a JWKS."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from node.auth import signing_key
from node.auth.errors import AuthenticationError
from node.auth.oidc import OidcVerifier
from node.auth.oidc_config import OidcIssuer
from node.auth.tokens import NodeTokens
from node.settings import load_settings
from tests.node.authhelpers import hs256_token

KEYCLOAK = "https://idp.hospital.test/realms/radiology"
ENTRA = "https://login.microsoftonline.com/tenant-id/v2.0"
AUDIENCE = "pacsmesh-node"


class IdP:
    """A provider's signing keys: one RSA (RS256) and one EC (ES256), published as a JWKS."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        self.jwks = {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
                {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"},
            ]
        }

    def token(self, claims: dict[str, Any], kid: str = "rsa-1", **overrides: Any) -> str:
        now = int(time.time())
        body = {"iss": KEYCLOAK, "aud": AUDIENCE, "sub": "u-123", "iat": now, "exp": now + 300}
        body.update(claims)
        body.update(overrides)
        key, alg = (self.rsa, "RS256") if kid.startswith("rsa") else (self.ec, "ES256")
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def idp() -> IdP:
    return IdP()


@pytest.fixture(scope="module")
def jwks_file(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("idp")) / "jwks.json"
    path.write_text(json.dumps(idp.jwks))
    return path


@pytest.fixture(scope="module")
def node_tokens(jwks_file: Path, tmp_path_factory: pytest.TempPathFactory) -> NodeTokens:
    keycloak = OidcIssuer(
        issuer=KEYCLOAK,
        audience=AUDIENCE,
        jwks_file=jwks_file,
        role_claim="realm_access.roles",
        role_map={"pacs-radiologist": "radiologist", "pacs-clinician": "clinician"},
        scope_claim="scope",
    )
    key = signing_key.load_or_create(Path(tmp_path_factory.mktemp("n")) / "k.pem")
    return NodeTokens(
        key, issuer="https://node.test", audience="https://node.test", oidc=[OidcVerifier(keycloak)]
    )


def test_keycloak_style_token_maps_role_and_caps_scopes(idp: IdP, node_tokens: NodeTokens) -> None:
    token = idp.token(
        {
            "realm_access": {"roles": ["offline_access", "pacs-radiologist"]},
            "scope": "openid profile user/*.read user/DiagnosticReport.write system/*.*",
            "jti": "kc-1",
        }
    )
    principal = node_tokens.verify(token)
    assert (principal.subject, principal.role, principal.issuer) == (
        "u-123",
        "radiologist",
        KEYCLOAK,
    )
    assert principal.token_id == "kc-1"
    assert principal.satisfies("user/ImagingStudy.read")
    assert principal.satisfies("user/DiagnosticReport.write")
    # Narrowed to the role: no audit trail, no system scope, however broad the request.
    assert not principal.allows("AuditEvent", "read")
    assert not principal.satisfies("system/ImagingStudy.read")
    # The EC key of the same set verifies too.
    ec_token = idp.token(
        {"realm_access": {"roles": ["pacs-clinician"]}, "scope": "user/*.read"}, kid="ec-1"
    )
    assert node_tokens.verify(ec_token).role == "clinician"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: i.token({}, exp=int(time.time()) - 600), "token expired"),
        (lambda i: i.token({}, aud="another-api"), "token not meant for this audience"),
        (
            lambda i: i.token({}, kid="rsa-unknown"),
            "token signed by a key the issuer does not list",
        ),
        (
            lambda i: i.token({}, kid="ec-1")[:-6] + "AAAAAA",
            "token signature does not verify",
        ),
        (
            lambda i: hs256_token({"iss": KEYCLOAK, "aud": AUDIENCE}, b"shared"),
            "token signing algorithm not accepted",
        ),
    ],
)
def test_bad_provider_tokens_are_refused(
    make: Any, reason: str, idp: IdP, node_tokens: NodeTokens
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        node_tokens.verify(make(idp))
    assert caught.value.message == reason


def test_unmapped_roles_get_nothing(idp: IdP, node_tokens: NodeTokens) -> None:
    token = idp.token({"realm_access": {"roles": ["offline_access"]}, "scope": "user/*.*"})
    principal = node_tokens.verify(token)
    assert principal.role == "" and principal.scopes == ()


class _JwksHandler(BaseHTTPRequestHandler):
    document: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_url(idp: IdP) -> Iterator[str]:
    """The provider's jwks_uri, served over real HTTP on loopback."""
    handler = type("H", (_JwksHandler,), {"document": json.dumps(idp.jwks).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/discovery/v2.0/keys"
    server.shutdown()
    server.server_close()


def test_entra_style_issuer_from_config_file_with_jwks_url(
    idp: IdP, jwks_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f"""[node]
data_dir = "{tmp_path / "data"}"
token_issuer = "https://pacs.hospital.test"

[[node.oidc_issuers]]
issuer = "{ENTRA}"
audience = "api://pacsmesh"
jwks_url = "{jwks_url}"
subject_claim = "oid"
role_claim = "roles"
scope_claim = ""
role_map = {{ "PACS.Clinician" = "clinician", "PACS.Auditor" = "auditor" }}
"""
    )
    settings = load_settings(config_file=config)
    tokens = NodeTokens.from_settings(settings)
    token = idp.token(
        {"oid": "0f8b-user", "roles": ["PACS.Auditor"], "scp": "access_as_user"},
        iss=ENTRA,
        aud="api://pacsmesh",
    )
    principal = tokens.verify(token)
    # No SMART scopes in Entra tokens: the role's defaults apply.
    assert (principal.subject, principal.role) == ("0f8b-user", "auditor")
    assert principal.satisfies("user/AuditEvent.read")
    assert not principal.satisfies("user/ImagingStudy.read")
    with pytest.raises(AuthenticationError, match="does not list"):
        tokens.verify(
            idp.token({"oid": "x", "roles": []}, iss=ENTRA, aud="api://pacsmesh", kid="rsa-9")
        )


def test_unsafe_issuer_configurations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="asymmetric"):
        OidcIssuer(issuer=KEYCLOAK, audience=AUDIENCE, jwks_url="https://x", algorithms=["HS256"])
    with pytest.raises(ValidationError, match="exactly one of jwks_url, jwks_file"):
        OidcIssuer(issuer=KEYCLOAK, audience=AUDIENCE)
    bad = tmp_path / "jwks.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read JWKS file"):
        OidcVerifier(OidcIssuer(issuer=KEYCLOAK, audience=AUDIENCE, jwks_file=bad))


def test_an_unreachable_provider_is_named_and_leaves_local_tokens_working(
    idp: IdP, tmp_path: Path
) -> None:
    from tests.node.conftest import free_port

    down = OidcIssuer(
        issuer=ENTRA, audience="api://pacsmesh", jwks_url=f"http://127.0.0.1:{free_port()}/keys"
    )
    key = signing_key.load_or_create(tmp_path / "k.pem")
    tokens = NodeTokens(
        key, issuer="https://node.test", audience="https://node.test", oidc=[OidcVerifier(down)]
    )
    with pytest.raises(AuthenticationError, match="keys could not be fetched"):
        tokens.verify(idp.token({"roles": ["clinician"]}, iss=ENTRA, aud="api://pacsmesh"))
    own = tokens.issue(subject="admin", role="admin", ttl_seconds=60).access_token
    assert tokens.verify(own).role == "admin"
