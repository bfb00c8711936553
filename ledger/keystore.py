"""Encrypted eth-account key files for node and patient keys (stub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_node_account(data_dir: Path) -> Any:
    """The node's signing account from the data directory's keystore."""
    raise NotImplementedError
