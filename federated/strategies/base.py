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
# The SHA-256 of the global model a site evaluated, as the site computed it from what it received
# (in the ``site`` ConfigRecord, or the FitRes metrics under SecAgg+): ties each metric to a model.
EVALUATED_MODEL_KEY = "evaluated-model"
# A train reply that also evaluated the model it brought carries the evaluation's metrics in the
# same MetricRecord under this prefix, flattened to scalars (legacy FitRes metrics under SecAgg+
# take no lists): ``eval-loss``, ``eval-auroc-0`` .. ``eval-auroc-8``, ...
EVAL_PREFIX = "eval-"
# Train config flag: evaluate the received model on the validation split before training it.
EVALUATE_FIRST_KEY = "evaluate-first"


@dataclass
class SiteReport:
    """One site's reply in one round: who it was and the metrics it reported."""

    site_id: str
    node_id: int
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluated_model: str = ""


def flatten_eval_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's metrics as ``eval-`` scalars, to ride in a train reply."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, list | tuple):
            flat |= {f"{EVAL_PREFIX}{key}-{i}": v for i, v in enumerate(value)}
        else:
            flat[EVAL_PREFIX + key] = value
    return flat


def split_eval_report(report: SiteReport) -> tuple[SiteReport, SiteReport | None]:
    """Split a train reply's report into its training part and the evaluation it carried."""
    train = {k: v for k, v in report.metrics.items() if not k.startswith(EVAL_PREFIX)}
    flat = {
        k[len(EVAL_PREFIX) :]: v for k, v in report.metrics.items() if k.startswith(EVAL_PREFIX)
    }
    trained = SiteReport(report.site_id, report.node_id, train)
    if not flat:
        return trained, None
    lists: dict[str, dict[int, Any]] = {}
    scalars: dict[str, Any] = {}
    for key, value in flat.items():
        stem, _, index = key.rpartition("-")
        if stem and index.isdigit():
            lists.setdefault(stem, {})[int(index)] = value
        else:
            scalars[key] = value
    scalars |= {k: [v[i] for i in sorted(v)] for k, v in lists.items()}
    return trained, SiteReport(report.site_id, report.node_id, scalars, report.evaluated_model)


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
                evaluated_model=str(site.get(EVALUATED_MODEL_KEY, "")),
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
