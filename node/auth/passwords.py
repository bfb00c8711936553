"""Password hashing with scrypt (RFC 7914) and a per-user random salt.

Stored form: `scrypt$N$r$p$salt$hash` (base64), so parameters can be raised later and old
hashes still verify. N=2^15, r=8 (32 MiB, tens of milliseconds) follows OWASP's scrypt advice.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

_N, _R, _P = 1 << 15, 8, 1
_LEN = 32
_MAXMEM = 64 << 20


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password` in the stored form."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_LEN
    )
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches; False for a wrong password or a malformed/absent hash.

    With no stored hash the work is still done, so timing does not reveal which accounts exist.
    """
    try:
        scheme, n, r, p, salt, digest = (stored or _dummy()).split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        salt_b, expected = base64.b64decode(salt), base64.b64decode(digest)
    except ValueError:
        return False
    if scheme != "scrypt" or n_ > 1 << 20:
        return False
    actual = hashlib.scrypt(
        password.encode(), salt=salt_b, n=n_, r=r_, p=p_, maxmem=_MAXMEM * 2, dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected) and stored is not None


@functools.cache
def _dummy() -> str:
    return hash_password(secrets.token_urlsafe(16))
