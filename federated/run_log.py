"""The run log: one JSON line per round, the record that later goes on the ledger.

Each line names the round, the SHA-256 of the global model it produced, the sites that took
part (and those that dropped out), per-site and global metrics, and the privacy settings in
force. Every metric on a line is of *that line's* model: each site reports the SHA-256 of the
model it evaluated (``site_metrics[site]["evaluate"]["model_sha256"]``), and ``evaluation``
says which exchange carried the evaluation (``next-train-message``: round r+1's train messages,
``final-evaluate-message``: the evaluate-only exchange after the last round,
``evaluate-message``: a separate evaluate message right after aggregation). A line is written
once its evaluation is in, so with evaluation riding on the next round's train messages line r
is written during round r+1. Appending whole lines with a flush + fsync means a crash loses at
most the line being written; a reader skips a torn last line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RoundRecord:
    """What happened in one round."""

    run_id: str
    server_round: int
    strategy: str
    model: str
    model_sha256: str
    participants: list[str]
    dropped: list[str]
    site_metrics: dict[str, dict[str, Any]]
    global_metrics: dict[str, Any]
    privacy: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        """A record read back from the log or a checkpoint (unknown keys are refused)."""
        return cls(**data)


def json_safe(value: Any) -> Any:
    """JSON has no NaN: undefined AUROCs (a finding absent at a site) become null."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class RunLog:
    """Append-only JSON-lines file of ``RoundRecord``s."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: RoundRecord) -> None:
        """Append one round's record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(json_safe(asdict(record)), sort_keys=True, allow_nan=False)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, oldest first."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    # A torn last line after a crash; the round will be rerun on resume.
                    continue

    def truncate_after(self, server_round: int) -> None:
        """Drop records of rounds after ``server_round`` (their checkpoint was never written)."""
        if not self.path.exists():
            return
        kept = [r for r in self.records() if int(r.get("server_round", 0)) <= server_round]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in kept:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
