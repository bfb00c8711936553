"""DIMSE status datasets (PS3.7 Annex C): a status code with an Error Comment that says why."""

from __future__ import annotations

from pydicom.dataset import Dataset

# PS3.7 C.4: Error Comment (0000,0902) is LO, at most 64 characters.
_ERROR_COMMENT_MAX = 64


def failure(code: int, comment: str) -> Dataset:
    """A status dataset: `code` plus an Error Comment (never carrying personal data)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return status
