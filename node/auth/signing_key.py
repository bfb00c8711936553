"""The node's token-signing key: an ECDSA P-256 key (ES256), created on first use, mode 0600.

The node process and the `node user` commands (which run beside a live node) both load it; the
first to need it creates it atomically, so the two never end up with different keys. The key is
never logged; only its RFC 7638 thumbprint (the JWS `kid`) is shown.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import NodeError
from node.storage.crypto import create_secret_file

ALGORITHM = "ES256"


class SigningKeyError(NodeError):
    """The token-signing key file is unreadable or not an ES256 key."""

    http_status = 503
    fhir_code = "security"


@dataclass(frozen=True)
class SigningKey:
    """The private key, its public half and its key id."""

    private: ec.EllipticCurvePrivateKey
    kid: str

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK (RFC 7517), for the node's JWKS document."""
        return {**_ec_jwk(self.public), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


def default_key_path(data_dir: Path) -> Path:
    """Where a node keeps its signing key unless configured otherwise."""
    return data_dir / "keys" / "token-signing.pem"


def _b64url_uint(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def _ec_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url_uint(numbers.x, 32),
        "y": _b64url_uint(numbers.y, 32),
    }


def thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps(_ec_jwk(public), sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def load_or_create(path: Path) -> SigningKey:
    """Load the signing key, creating it (0600, in a 0700 folder) if there is none yet."""
    if not path.exists():
        _create(path)
    try:
        pem = path.read_bytes()
        private = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"token signing key {path} is unreadable: {type(exc).__name__}"
        ) from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise SigningKeyError(f"token signing key {path} is not an ECDSA P-256 key")
    return SigningKey(private, thumbprint(private.public_key()))


def _create(path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    create_secret_file(path, pem)
