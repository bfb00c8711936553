"""The node's token-signing key: an ECDSA P-256 key (ES256), created on first use, mode 0600.

The node process and the `node user` commands (which run beside a live node) both load it; the
first to need it creates it atomically, so the two never end up with different keys. The key is
never logged; only its RFC 7638 thumbprint (the JWS `kid`) is shown.

`rotate` replaces it with a new key (`pacsmesh node signing-key rotate`, also beside a live
node). The old key's public half is kept in `<key>-retired.json`, with the time until which it
still verifies: long enough for every token it signed to expire, and no longer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import NodeError
from node.settings import NodeSettings
from node.storage.crypto import create_secret_file, replace_secret_file

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


def key_path(settings: NodeSettings) -> Path:
    """Where the node keeps its signing key: `token_signing_key`, else in its data directory."""
    return settings.token_signing_key or settings.data_dir / "keys" / "token-signing.pem"


def token_lifetime(settings: NodeSettings) -> int:
    """The longest a token of this node can live, the clock leeway included: how long a
    retired key must go on verifying."""
    longest = max(settings.token_ttl_seconds, settings.token_max_ttl_seconds)
    return longest + settings.token_leeway_seconds


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


@dataclass(frozen=True)
class RetiredKey:
    """A former signing key's public half: it verifies the tokens it signed, until they expire."""

    public: ec.EllipticCurvePublicKey
    kid: str
    verifies_until: int  # seconds since the epoch

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK (RFC 7517), for the node's JWKS document."""
        return {**_ec_jwk(self.public), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def stored(self) -> dict[str, Any]:
        """Its entry in the retired-keys file."""
        pem = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"kid": self.kid, "public_key": pem.decode(), "verifies_until": self.verifies_until}


def load_or_create(path: Path) -> SigningKey:
    """Load the signing key, creating it (0600, in a 0700 folder) if there is none yet."""
    if not path.exists():
        create_secret_file(path, _new_pem())
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


def retired_path(path: Path) -> Path:
    """Where the retired public keys of the signing key at `path` are kept."""
    return path.with_name(f"{path.stem}-retired.json")


def load_retired(path: Path, now: float) -> list[RetiredKey]:
    """The retired keys of the signing key at `path` that still verify at `now`."""
    file = retired_path(path)
    if not file.exists():
        return []
    try:
        entries = json.loads(file.read_text())["keys"]
        keys = [
            RetiredKey(_public_key(e["public_key"]), str(e["kid"]), int(e["verifies_until"]))
            for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SigningKeyError(
            f"retired token signing keys {file} are unreadable: {type(exc).__name__}"
        ) from None
    return [k for k in keys if now < k.verifies_until]


def rotate(
    path: Path, token_lifetime: int, now: float | None = None
) -> tuple[SigningKey, RetiredKey]:
    """Sign with a new key from now on; the old one verifies for `token_lifetime` seconds more
    (the longest a token lives, plus the clock leeway), then is forgotten.

    The retired key is recorded before the new key takes its place, so a process that sees the
    new key also finds the old one.
    """
    now = time.time() if now is None else now
    old = load_or_create(path)
    retired = RetiredKey(old.public, old.kid, int(now) + token_lifetime)
    kept = [k for k in load_retired(path, now) if k.kid != old.kid] + [retired]
    document = {"keys": [k.stored() for k in kept]}
    replace_secret_file(retired_path(path), json.dumps(document, indent=1).encode())
    replace_secret_file(path, _new_pem())
    return load_or_create(path), retired


def _public_key(pem: str) -> ec.EllipticCurvePublicKey:
    public = serialization.load_pem_public_key(pem.encode())
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return public


def _new_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
