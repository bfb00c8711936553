"""Connection to the chain: the embedded eth-tester chain or any JSON-RPC node (stub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Chain:
    """A connected chain with the node's signing account."""

    w3: Any
    chain_id: int


def connect(data_dir: Path, rpc_url: str | None = None) -> Chain:
    """Connect to the chain for this data directory (embedded when rpc_url is None)."""
    raise NotImplementedError
