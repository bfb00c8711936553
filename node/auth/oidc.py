"""Verifying access tokens from an external OpenID Connect provider (Keycloak, Entra ID, ...).

Keys come from the provider's JWKS (OIDC Discovery `jwks_uri`, fetched through PyJWKClient and
cached) or from a JWKS file. The token's `kid` picks the key; the configured algorithms, issuer
and audience are enforced; the role and scopes come from the configured claims and are capped by
the role's ceiling, as for this node's own tokens.
"""

from __future__ import annotations

import json
from typing import Any

import jwt

from node.auth.errors import AuthenticationError
from node.auth.oidc_config import OidcIssuer
from node.auth.policy import (
    ROLES,
    PatientBinding,
    Principal,
    make_principal,
    parse_scopes,
    role_scopes,
)


def _claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted claim path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class OidcVerifier:
    """Verifies tokens of one configured OIDC issuer."""

    def __init__(self, config: OidcIssuer) -> None:
        self.config = config
        self._client = (
            jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if config.jwks_url
            else None
        )
        self._keys: jwt.PyJWKSet | None = None
        if config.jwks_file is not None:
            try:
                document = json.loads(config.jwks_file.read_text())
                self._keys = jwt.PyJWKSet.from_dict(document)
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ValueError(
                    f"OIDC issuer {config.issuer}: cannot read JWKS file: {type(exc).__name__}"
                ) from exc

    def _key(self, token: str, header: dict[str, Any]) -> Any:
        if self._client is not None:
            try:
                return self._client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError:
                raise AuthenticationError("the issuer's keys could not be fetched") from None
            except jwt.PyJWKClientError:
                raise AuthenticationError(
                    "token signed by a key the issuer does not list"
                ) from None
        assert self._keys is not None
        kid = header.get("kid")
        candidates = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        if len(candidates) != 1:
            raise AuthenticationError("token signed by a key the issuer does not list")
        return candidates[0].key

    def verify(self, token: str, header: dict[str, Any], leeway: int) -> Principal:
        """The principal for a token from this issuer."""
        from node.auth.tokens import decode_error

        cfg = self.config
        if header.get("alg") not in cfg.algorithms:
            raise AuthenticationError("token signing algorithm not accepted")
        key = self._key(token, header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=cfg.algorithms,
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=leeway,
                options={"require": ["iss", "aud", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise decode_error(exc) from None
        subject = _claim(claims, cfg.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("token lacks a required claim")
        role = self._role(claims)
        if cfg.scope_claim is None:
            scopes = role_scopes(role)
        else:
            raw = _claim(claims, cfg.scope_claim) or ""
            scopes = parse_scopes(raw if isinstance(raw, str | list) else "")
        patient = None
        if cfg.patient_mrn_claim:
            mrn = _claim(claims, cfg.patient_mrn_claim)
            if isinstance(mrn, str) and mrn:
                patient = PatientBinding(mrn, cfg.patient_issuer)
        if role == "patient" and patient is None:
            raise AuthenticationError("patient token names no patient")
        token_id = claims.get("jti") or claims.get("uti") or ""
        return make_principal(
            subject=subject,
            role=role,
            scopes=scopes,
            issuer=cfg.issuer,
            token_id=str(token_id),
            patient=patient,
        )

    def _role(self, claims: dict[str, Any]) -> str:
        """The pacsmesh role the provider's role claim maps to; '' (no access) if none does."""
        raw = _claim(claims, self.config.role_claim)
        values = {raw} if isinstance(raw, str) else {v for v in raw or () if isinstance(v, str)}
        mapping = self.config.role_map or {r: r for r in ROLES}
        for provider_value, role in mapping.items():
            if provider_value in values and role in ROLES:
                return role
        return ""
