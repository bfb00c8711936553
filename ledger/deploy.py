"""Deploy the contract suite and read the deployment file (stub)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Deployment:
    """Where the suite lives on a chain."""

    chain_id: int
    consortium_registry: str
    consent_registry: str
    audit_anchor: str
    block_number: int


def load_deployment(data_dir: Path) -> Deployment:
    """Read deployment.json from the data directory."""
    raise NotImplementedError
