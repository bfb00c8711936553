"""What every pacsmesh strategy adds to Flower's: which sites took part, and stable dtypes.

Flower's strategies average whatever arrays come back and forget who sent them. The run log
needs the participating sites and each site's metrics per round, so replies carry a ConfigRecord
``site`` with the site id; this mixin collects them while aggregating.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord

SITE_RECORD = "site"


@dataclass
class SiteReport:
    """One site's reply in one round: who it was and the metrics it reported."""

    site_id: str
    node_id: int
    metrics: dict[str, Any] = field(default_factory=dict)


def site_reports(replies: Iterable[Message]) -> tuple[list[SiteReport], list[int]]:
    """Split replies into per-site reports and the node ids whose reply was an error."""
    reports: list[SiteReport] = []
    failed: list[int] = []
    for msg in replies:
        if msg.has_error():
            failed.append(msg.metadata.src_node_id)
            continue
        content = msg.content
        site = content.config_records.get(SITE_RECORD, ConfigRecord())
        metrics: dict[str, Any] = {}
        for record in content.metric_records.values():
            metrics.update(dict(record))
        reports.append(
            SiteReport(
                site_id=str(site.get("site-id", f"node-{msg.metadata.src_node_id}")),
                node_id=msg.metadata.src_node_id,
                metrics=metrics,
            )
        )
    reports.sort(key=lambda r: r.site_id)
    return reports, failed


def restore_dtypes(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """Cast aggregated arrays back to the reference dtypes (averaging turns int64 into float64).

    BatchNorm's ``num_batches_tracked`` is an int64 counter; keeping the model's own dtypes
    keeps the model hash identical to hashing the state dict of the loaded model.
    """
    out = ArrayRecord()
    for key, value in arrays.items():
        target = reference[key].numpy().dtype if key in reference else None
        data = value.numpy()
        if target is not None and data.dtype != target:
            data = np.rint(data) if np.issubdtype(target, np.integer) else data
            data = data.astype(target)
        out[key] = Array(np.ascontiguousarray(data))
    return out


class SiteAwareMixin:
    """Mixin for Flower Message-API strategies: remember per-site reports of the last round."""

    last_train_reports: list[SiteReport]
    last_train_failures: list[int]
    last_evaluate_reports: list[SiteReport]
    last_evaluate_failures: list[int]
    _reference: ArrayRecord | None = None

    def remember_reference(self, arrays: ArrayRecord) -> None:
        """Keep the arrays sent this round, to restore the dtypes of the aggregate."""
        self._reference = arrays

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as the parent strategy does, remembering who took part."""
        replies = list(replies)
        self.last_train_reports, self.last_train_failures = site_reports(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None and self._reference is not None:
            arrays = restore_dtypes(arrays, self._reference)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate as the parent strategy does, remembering per-site metrics."""
        replies = list(replies)
        self.last_evaluate_reports, self.last_evaluate_failures = site_reports(replies)
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]
