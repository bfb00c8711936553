"""The node's bearer tokens: short-lived JWTs it signs (ES256), and verifying any it trusts.

Claims (RFC 7519 §4.1): iss (this node's issuer id), aud, sub, exp, iat, nbf, jti; plus `role`,
`scope` (space-separated SMART scopes, RFC 8693 §4.2) and, for patients, `patient` (MRN and its
issuer). Verification follows RFC 8725: the algorithm is pinned per issuer (never taken from the
token), so `alg: none` and HS256-with-the-public-key tokens are refused before any key is used;
the token's `iss` picks which keys may verify it (this node's, or a configured OIDC issuer's).

A token of this node stands only while its account does (RFC 7009's revocation, done by the
account instead of a token list): a node verifying for its app asks the index database, on
every request, whether the account still exists, is enabled, and was not re-enabled or
re-created after the token was issued (`node.auth.users.TokenHolders`).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from node.auth import signing_key
from node.auth.errors import AuthenticationError
from node.auth.oidc import OidcVerifier
from node.auth.policy import (
    PatientBinding,
    Principal,
    Scope,
    make_principal,
    parse_scopes,
    role_scopes,
)
from node.auth.signing_key import ALGORITHM, RetiredKey, SigningKey
from node.auth.users import TokenHolders
from node.errors import InvalidRequestError
from node.settings import NodeSettings

REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "nbf", "jti"]
# Tokens of this node already verified, kept until they expire: a client sends the same token
# with every request, and a full verification (three base64 passes, an ECDSA check) costs
# ~0.5 ms. Bounded, so that many distinct valid tokens only evict one another. What it keeps
# is the signature's verdict only: the account behind a token is asked about every time.
VERIFIED_CACHE_SIZE = 1024


@dataclass(frozen=True)
class IssuedToken:
    """A signed token and what a token endpoint reports about it (RFC 6749 §5.1)."""

    access_token: str
    expires_in: int
    scope: str
    token_id: str


def decode_error(exc: jwt.PyJWTError) -> AuthenticationError:
    """One clear, fixed message per way a token can fail (no token content is echoed)."""
    cases: list[tuple[type[jwt.PyJWTError], str]] = [
        (jwt.ExpiredSignatureError, "token expired"),
        (jwt.ImmatureSignatureError, "token not yet valid"),
        (jwt.InvalidIssuerError, "token from an untrusted issuer"),
        (jwt.InvalidAudienceError, "token not meant for this audience"),
        (jwt.InvalidAlgorithmError, "token signing algorithm not accepted"),
        (jwt.InvalidSignatureError, "token signature does not verify"),
        (jwt.MissingRequiredClaimError, "token lacks a required claim"),
        (jwt.DecodeError, "token is malformed"),
    ]
    for kind, message in cases:
        if isinstance(exc, kind):
            return AuthenticationError(message)
    return AuthenticationError("token rejected")


class NodeTokens:
    """Issues this node's tokens and verifies bearer tokens from every trusted issuer."""

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str,
        audience: str,
        leeway: int = 30,
        oidc: Iterable[OidcVerifier] = (),
        accounts: TokenHolders | None = None,
        key_path: Path | None = None,
    ) -> None:
        # The key that signs, and retired keys (by kid) that still verify what they signed.
        self._keyring: tuple[SigningKey, dict[str, RetiredKey]] = (key, {})
        # Where the key lives, when it may be rotated by another process; None: `key` for good.
        self._key_path = key_path
        self._key_stamp: tuple[int, int, int] | None = None
        # None only where nothing is served: the CLI that issues, and tests of the token itself.
        self.accounts = accounts
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._oidc = {v.config.issuer.rstrip("/"): v for v in oidc}
        # token -> (principal, issued at, valid from, valid until), the leeway applied to the
        # validity (as PyJWT applies it)
        self._verified: dict[str, tuple[Principal, int, float, float]] = {}
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: NodeSettings, accounts: TokenHolders | None = None
    ) -> NodeTokens:
        """Load (or create) the signing key and the configured OIDC issuers."""
        path = signing_key.key_path(settings)
        tokens = cls(
            signing_key.load_or_create(path),
            issuer=settings.token_issuer_id,
            audience=settings.token_audience_id,
            leeway=settings.token_leeway_seconds,
            oidc=[OidcVerifier(c) for c in settings.oidc_issuers],
            accounts=accounts,
            key_path=path,
        )
        tokens.refresh_keys()
        return tokens

    def close(self) -> None:
        """Release the account lookups' connection (before the index closes)."""
        if self.accounts is not None:
            self.accounts.close()

    @property
    def key(self) -> SigningKey:
        """The key this node signs with now."""
        return self._keyring[0]

    def refresh_keys(self) -> None:
        """Take up a rotation of the signing key (`node signing-key rotate`, run by any process).

        One `stat` when nothing changed. On a change, verdicts remembered under the old key set
        are dropped, so a token is never accepted by a key the node no longer holds.
        """
        if self._key_path is None:
            return
        stamp = _file_stamp(self._key_path)
        if stamp == self._key_stamp:
            return
        with self._verified_lock:
            key = signing_key.load_or_create(self._key_path)
            retired = signing_key.load_retired(self._key_path, time.time())
            self._keyring = (key, {k.kid: k for k in retired if k.kid != key.kid})
            self._key_stamp = stamp
            self._verified.clear()

    def jwks(self) -> dict[str, Any]:
        """This node's public keys as a JWKS document (RFC 7517 §5): the signing key, and the
        retired keys whose tokens may still be alive."""
        self.refresh_keys()
        key, retired = self._keyring
        now = time.time()
        alive = [k.public_jwk() for k in retired.values() if now < k.verifies_until]
        return {"keys": [key.public_jwk(), *alive]}

    def issue(
        self,
        *,
        subject: str,
        role: str,
        ttl_seconds: int,
        scopes: Iterable[Scope] | None = None,
        patient: PatientBinding | None = None,
        now: float | None = None,
    ) -> IssuedToken:
        """Sign a token for a subject; `scopes` narrows the role's scopes, never widens them."""
        self.refresh_keys()
        ceiling = role_scopes(role)
        if not ceiling:
            raise InvalidRequestError("unknown role")
        granted = ceiling
        if scopes is not None:
            scopes = tuple(scopes)
            principal = make_principal(
                subject=subject, role=role, scopes=scopes, issuer="", token_id="", patient=patient
            )
            if set(principal.scopes) != set(scopes):
                raise InvalidRequestError("requested scope exceeds what the role may hold")
            granted = principal.scopes
        if role == "patient" and patient is None:
            raise InvalidRequestError("a patient token needs the patient it belongs to")
        issued_at = int(now if now is not None else time.time())
        token_id = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + ttl_seconds,
            "jti": token_id,
            "role": role,
            "scope": " ".join(str(s) for s in granted),
        }
        if patient is not None and role == "patient":
            claims["patient"] = {"mrn": patient.mrn, "issuer": patient.issuer}
            if patient.address:
                claims["patient"]["address"] = patient.address
        key = self.key
        token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return IssuedToken(token, ttl_seconds, claims["scope"], token_id)

    def answers_at_once(self, token: str) -> bool:
        """True when verifying `token` waits on nothing: its signature was verified before and
        its account is looked up in this process (SQLite). The event loop may then verify it."""
        return token in self._verified and (self.accounts is None or self.accounts.in_process)

    def verify(self, token: str) -> Principal:
        """The principal a bearer token stands for, or AuthenticationError saying why not.

        Blocking: a token of this node asks the account check (a database lookup), an OIDC
        token may fetch its provider's keys.
        """
        self.refresh_keys()
        own = self._cached(token)
        if own is None:
            try:
                header = jwt.get_unverified_header(token)
                unverified = jwt.decode(token, options={"verify_signature": False})
            except jwt.PyJWTError as exc:
                raise decode_error(exc) from None
            issuer = unverified.get("iss")
            if not isinstance(issuer, str):
                raise AuthenticationError("token lacks a required claim")
            issuer = issuer.rstrip("/")
            if issuer != self.issuer:
                oidc = self._oidc.get(issuer)
                if oidc is None:
                    raise AuthenticationError("token from an untrusted issuer")
                return oidc.verify(token, header, self.leeway)
            own = self._verify_own(token, header)
        principal, issued_at = own
        if self.accounts is not None:
            self.accounts(principal.subject, issued_at)
        return principal

    def _verify_own(self, token: str, header: dict[str, Any]) -> tuple[Principal, int]:
        # RFC 8725 §3.1: the algorithm is ours to choose; the header only has to agree.
        if header.get("alg") != ALGORITHM:
            raise AuthenticationError("token signing algorithm not accepted")
        key, retired = self._keyring
        old = retired.get(str(header.get("kid")))
        try:
            claims = jwt.decode(
                token,
                key.public if old is None else old.public,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise decode_error(exc) from None
        principal = _principal_from_claims(claims)
        issued_at = int(claims["iat"])
        # The token string is the key: any other bytes, even one changed character of the
        # signature, are verified in full. Only the clock can make this signature invalid later.
        valid_from = max(int(claims["nbf"]), issued_at) - self.leeway
        valid_until = int(claims["exp"]) + self.leeway
        if old is not None:
            # A retired key verifies only what lives no longer than the tokens it signed could:
            # one minted later with a leaked copy of it cannot outlast its retirement.
            if int(claims["exp"]) > old.verifies_until:
                raise AuthenticationError("token outlives the retired key that signed it")
            valid_until = min(valid_until, old.verifies_until)
        with self._verified_lock:
            if self._keyring[0] is key:  # a verdict under keys rotated away meanwhile is not kept
                if len(self._verified) >= VERIFIED_CACHE_SIZE:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[token] = (principal, issued_at, valid_from, valid_until)
        return principal, issued_at

    def _cached(self, token: str) -> tuple[Principal, int] | None:
        """A token of this node whose signature and clock were verified before and still hold
        (its principal and issue time), else None."""
        entry = self._verified.get(token)
        if entry is None:
            return None
        principal, issued_at, valid_from, valid_until = entry
        now = time.time()
        if valid_from <= now < valid_until:
            return principal, issued_at
        with self._verified_lock:
            self._verified.pop(token, None)  # verify() says why it no longer passes
        return None


def _file_stamp(path: Path) -> tuple[int, int, int]:
    """What changes when the file is replaced (a rotation renames a new file into place)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0)  # made on first use by load_or_create
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    role = claims.get("role")
    scope = claims.get("scope", "")
    if not isinstance(role, str) or not isinstance(scope, str):
        raise AuthenticationError("token claims are malformed")
    patient = None
    bound = claims.get("patient")
    if isinstance(bound, dict) and isinstance(bound.get("mrn"), str):
        issuer = bound.get("issuer", "")
        address = bound.get("address")
        patient = PatientBinding(
            bound["mrn"],
            issuer if isinstance(issuer, str) else "",
            address if isinstance(address, str) else None,
        )
    if role == "patient" and patient is None:
        raise AuthenticationError("patient token names no patient")
    return make_principal(
        subject=str(claims["sub"]),
        role=role,
        scopes=parse_scopes(scope),
        issuer=str(claims["iss"]),
        token_id=str(claims["jti"]),
        patient=patient,
    )


_cache_lock = threading.Lock()


def tokens_for(settings: NodeSettings, holder: Any) -> NodeTokens:
    """The NodeTokens cached on `holder` (app.state), built on first use (a request, so after
    start-up opened the archive); its tokens stand only while their accounts do in the index
    of `holder.archive`."""
    with _cache_lock:
        tokens: NodeTokens | None = getattr(holder, "node_tokens", None)
        if tokens is None:
            accounts = TokenHolders(holder.archive.engine)
            tokens = NodeTokens.from_settings(settings, accounts=accounts)
            holder.node_tokens = tokens
        return tokens
