"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample DICOM files beside the checkout (../shared/data)."""
    assert SHARED_DATA.is_dir(), f"real sample data expected at {SHARED_DATA}"
    return SHARED_DATA
