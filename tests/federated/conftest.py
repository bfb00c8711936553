"""Fixtures for the federated tests: small synthetic sites written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from federated.synth import synthesize


@pytest.fixture(scope="session")
def synth_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three synthetic sites of 24 DICOM images each at 64 px (seed 7)."""
    return synthesize(tmp_path_factory.mktemp("synth"), sites=3, per_site=24, seed=7, image_size=64)
