"""Node errors for the ledger side: unavailable, refused, and the translation of ledger errors.

`ledger` knows nothing of the node, so its errors (LedgerError) are rendered here as NodeErrors
keeping their declared HTTP status and FHIR code: a stale cache is 503, a replayed signature
409, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ledger.errors import LedgerError
from node.errors import NodeError


class LedgerUnavailableError(NodeError):
    """This node has no working ledger connection, so cross-hospital consent cannot be judged."""

    http_status = 503
    fhir_code = "transient"


class LedgerConfigError(NodeError):
    """The ledger settings are wrong (key, passphrase, deployment); the node refuses to start."""

    http_status = 503
    fhir_code = "exception"


class LedgerRefusedError(NodeError):
    """The chain refused or failed an operation; status and code come from the ledger error."""

    def __init__(self, exc: LedgerError) -> None:
        super().__init__(f"ledger: {exc}")
        self.http_status = exc.http_status
        self.fhir_code = exc.fhir_code


@contextmanager
def ledger_errors() -> Iterator[None]:
    """Re-raise ledger errors as NodeErrors with the same status and code."""
    try:
        yield
    except LedgerError as exc:
        raise LedgerRefusedError(exc) from None
