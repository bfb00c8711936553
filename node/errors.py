"""The node's typed domain errors.

Every error declares how it surfaces on each interface: an HTTP status (DICOMweb, FHIR, network
API), a FHIR OperationOutcome issue code, and where it applies a DIMSE status. One exception
handler renders them; messages never carry personal data.
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error the node reports to a client."""

    http_status: int = 500
    fhir_code: str = "exception"
    dimse_status: int = 0xC000

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(NodeError):
    """The request is malformed: bad syntax, bad parameter, bad body."""

    http_status = 400
    fhir_code = "invalid"
    dimse_status = 0xC000


class UnsupportedMediaTypeError(NodeError):
    """The request body has a media type this endpoint does not accept."""

    http_status = 415
    fhir_code = "not-supported"


class NotAcceptableError(NodeError):
    """No representation the client accepts can be produced."""

    http_status = 406
    fhir_code = "not-supported"


class NotFoundError(NodeError):
    """The addressed study, series, instance, frame or attribute does not exist."""

    http_status = 404
    fhir_code = "not-found"
    dimse_status = 0xA801


class ConflictError(NodeError):
    """The request conflicts with what is stored."""

    http_status = 409
    fhir_code = "conflict"


class PayloadTooLargeError(NodeError):
    """The request exceeds a configured limit (size or instance count)."""

    http_status = 413
    fhir_code = "too-costly"
    dimse_status = 0xA700


class ForbiddenError(NodeError):
    """The caller is authenticated but not allowed to do this."""

    http_status = 403
    fhir_code = "forbidden"
    dimse_status = 0x0124


class StorageError(NodeError):
    """The archive could not complete an operation (disk, database, keys)."""

    http_status = 503
    fhir_code = "transient"
    dimse_status = 0xA700


class KeyEncryptionKeyError(NodeError):
    """The key-encryption key is missing, malformed or not the one the archive was made with."""

    http_status = 503
    fhir_code = "security"


class BlobIntegrityError(NodeError):
    """A stored object failed authentication: tampered, swapped or corrupted ciphertext."""

    http_status = 500
    fhir_code = "exception"
    dimse_status = 0xA700


class TlsConfigurationError(NodeError):
    """A TLS certificate, key or CA file named in the settings cannot be used (names the file)."""

    http_status = 503
    fhir_code = "security"
