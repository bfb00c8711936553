"""Configuration of an external OpenID Connect issuer (part of NodeSettings; no heavy imports)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator


class OidcIssuer(BaseModel):
    """An external OpenID Connect provider whose access tokens this node accepts.

    Keys come from `jwks_url` (fetched and cached) or `jwks_file` (a JWKS JSON document).
    `role_claim` is a dotted path (Keycloak: `realm_access.roles`; Entra ID: `roles`);
    `role_map` maps the provider's values to pacsmesh roles, first entry that matches wins.
    """

    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    subject_claim: str = "sub"
    role_claim: str = "roles"
    role_map: dict[str, str] = Field(default_factory=dict)
    # None or "" (TOML has no null): the role's default scopes apply. A claim name: the SMART
    # scopes found there, capped by the role (a token without SMART scopes then allows nothing).
    scope_claim: str | None = "scope"
    patient_mrn_claim: str | None = None
    patient_issuer: str = ""

    @field_validator("scope_claim", "patient_mrn_claim")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _check(self) -> OidcIssuer:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"OIDC issuer {self.issuer}: give exactly one of jwks_url, jwks_file")
        # Symmetric or absent signatures would let anyone holding the shared secret (or no one)
        # mint tokens: refuse them at configuration time (RFC 8725 §3.1).
        if not self.algorithms or any(
            a.lower() == "none" or a.upper().startswith("HS") for a in self.algorithms
        ):
            raise ValueError(
                f"OIDC issuer {self.issuer}: algorithms must be asymmetric (RS*, PS*, ES*, EdDSA)"
            )
        return self
