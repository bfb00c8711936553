"""Authentication and authorization errors, with the RFC 6750 §3 `WWW-Authenticate` they carry."""

from __future__ import annotations

from node.errors import ForbiddenError, NodeError

REALM = "pacsmesh"


class AuthenticationError(NodeError):
    """The bearer token is missing, malformed, expired, or not one this node trusts (401).

    Messages are fixed phrases (never token content), so they are safe inside the header.
    """

    http_status = 401
    fhir_code = "login"

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error

    @property
    def headers(self) -> dict[str, str]:
        """The challenge to send back (RFC 6750 §3)."""
        if self.error is None:
            # §3.1: a request without credentials gets no error code.
            return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
        return {
            "WWW-Authenticate": (
                f'Bearer realm="{REALM}", error="{self.error}", error_description="{self.message}"'
            )
        }


class MissingTokenError(AuthenticationError):
    """The request carries no bearer token."""

    def __init__(self, message: str = "a bearer token is required") -> None:
        super().__init__(message, error=None)


class InsufficientScopeError(ForbiddenError):
    """The token is valid but its scopes do not cover this request (403, RFC 6750 §3.1)."""

    def __init__(self, required: str) -> None:
        super().__init__(f"this request needs scope {required}")
        self.required = required

    @property
    def headers(self) -> dict[str, str]:
        """The challenge naming the scope that was missing."""
        return {
            "WWW-Authenticate": (
                f'Bearer realm="{REALM}", error="insufficient_scope", scope="{self.required}"'
            )
        }
