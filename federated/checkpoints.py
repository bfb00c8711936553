"""Per-round checkpoints of the global model, so a restarted ServerApp resumes where it stopped.

One file per round, ``round-0003.npz``: the state-dict arrays by name plus the round number and
the model hash. Written to a temp file, fsynced and renamed, so a crash mid-write leaves the
previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NAME = re.compile(r"^round-(\d{4,})\.npz$")
_META_ROUND = "__pacsmesh_round__"
_META_HASH = "__pacsmesh_hash__"
_META_PENDING = "__pacsmesh_pending__"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not match the model (exit code 3 on the CLI)."""

    exit_code = 3


@dataclass(frozen=True)
class Checkpoint:
    """The global model after ``server_round`` rounds."""

    server_round: int
    arrays: dict[str, np.ndarray]
    model_hash: str
    # The run-log record of this round while its evaluation is still to come (JSON; "" when the
    # round's log line was written before this checkpoint). With evaluation riding on the next
    # round's train messages, a round's metrics arrive one exchange after its model: keeping the
    # unfinished record here lets a restarted server finish it exactly once.
    pending: str = ""


class CheckpointStore:
    """Round checkpoints in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, server_round: int) -> Path:
        """The file that holds round ``server_round``."""
        return self.directory / f"round-{server_round:04d}.npz"

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write a checkpoint atomically; return its path."""
        if any(k.startswith("__pacsmesh") for k in checkpoint.arrays):
            raise CheckpointError("array names may not start with __pacsmesh")
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path(checkpoint.server_round)
        tmp = final.with_suffix(".tmp")
        payload = dict(checkpoint.arrays)
        payload[_META_ROUND] = np.asarray(checkpoint.server_round, dtype=np.int64)
        payload[_META_HASH] = np.asarray(checkpoint.model_hash)
        if checkpoint.pending:
            payload[_META_PENDING] = np.asarray(checkpoint.pending)
        with tmp.open("wb") as handle:
            np.savez(handle, **payload)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(final)
        return final

    def rounds(self) -> list[int]:
        """The rounds that have a checkpoint, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, server_round: int) -> Checkpoint:
        """Read the checkpoint of one round."""
        path = self.path(server_round)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if not k.startswith("__pacsmesh")}
                stored_round = int(data[_META_ROUND])
                stored_hash = str(data[_META_HASH])
                pending = str(data[_META_PENDING]) if _META_PENDING in data.files else ""
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path.name} is unreadable: {exc}") from exc
        if stored_round != server_round:
            raise CheckpointError(f"{path.name} claims to be round {stored_round}")
        return Checkpoint(
            server_round=stored_round, arrays=arrays, model_hash=stored_hash, pending=pending
        )

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None when the run has none yet."""
        rounds = self.rounds()
        return self.load(rounds[-1]) if rounds else None
