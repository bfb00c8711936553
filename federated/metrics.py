"""AUROC the way the issue asks: per finding within each site, then averaged across sites.

Pooling predictions across sites would let a site's calibration offset pass for
discrimination, so each site's AUROC is computed on its own and the sites are averaged. A
finding that has only one class (or no known labels) at a site has no AUROC there: it is left
out of that site's average and listed in ``excluded`` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federated.task import FINDINGS


class SingleClassError(ValueError):
    """AUROC is undefined: the labels hold only one class."""


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted as one half.

    AUROC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with mid-ranks
    for tied scores (Hanley & McNeil, 1982).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    positive = labels == 1.0
    n_pos = int(positive.sum())
    n_neg = int((labels == 0.0).sum())
    if n_pos + n_neg != len(labels):
        raise ValueError("labels must be 0 or 1 (drop unknown labels first)")
    if n_pos == 0 or n_neg == 0:
        raise SingleClassError("only negatives" if n_pos == 0 else "only positives")
    ranks = _midranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # 1-based mid-rank
        start = end + 1
    return ranks


def site_auroc(probs: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], dict[str, str]]:
    """AUROC per finding at one site, and the reason for each finding left out."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if probs.shape != labels.shape or probs.ndim != 2 or probs.shape[1] != len(FINDINGS):
        raise ValueError(f"expected probs and labels of shape (N, 9), got {probs.shape}")
    values: dict[str, float] = {}
    excluded: dict[str, str] = {}
    for j, finding in enumerate(FINDINGS):
        known = ~np.isnan(labels[:, j])
        if not known.any():
            excluded[finding] = "no known labels"
            continue
        try:
            values[finding] = auroc(probs[known, j], labels[known, j])
        except SingleClassError as exc:
            excluded[finding] = str(exc)
    return values, excluded


@dataclass
class AurocReport:
    """Site-averaged AUROC per finding, macro AUROC and the worst site."""

    per_site: dict[str, dict[str, float]]
    per_finding: dict[str, float]
    macro: float
    worst_site: float
    worst_site_name: str | None
    site_macro: dict[str, float]
    excluded: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes None)."""
        return {
            "macro_auroc": _json(self.macro),
            "worst_site_auroc": _json(self.worst_site),
            "worst_site": self.worst_site_name,
            "per_finding": {k: _json(v) for k, v in self.per_finding.items()},
            "site_macro": {k: _json(v) for k, v in self.site_macro.items()},
            "per_site": {s: {k: _json(v) for k, v in d.items()} for s, d in self.per_site.items()},
            "excluded": self.excluded,
        }


def _json(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def federated_auroc(sites: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> AurocReport:
    """Per-finding AUROC within each site, averaged over the sites where it is defined.

    ``sites`` maps a site name to (probs, labels), both (N, 9). Macro AUROC is the mean of the
    per-finding averages; worst-site AUROC is the lowest of the sites' own macro AUROCs.
    """
    per_site: dict[str, dict[str, float]] = {}
    excluded: list[dict[str, str]] = []
    for site, (probs, labels) in sites.items():
        values, reasons = site_auroc(probs, labels)
        per_site[site] = values
        excluded += [{"site": site, "finding": f, "reason": r} for f, r in reasons.items()]
    per_finding = {}
    for finding in FINDINGS:
        found = [v[finding] for v in per_site.values() if finding in v]
        if found:
            per_finding[finding] = float(np.mean(found))
    site_macro = {s: float(np.mean(list(v.values()))) for s, v in per_site.items() if v}
    worst = min(site_macro, key=lambda s: site_macro[s]) if site_macro else None
    return AurocReport(
        per_site=per_site,
        per_finding=per_finding,
        macro=float(np.mean(list(per_finding.values()))) if per_finding else math.nan,
        worst_site=site_macro[worst] if worst is not None else math.nan,
        worst_site_name=worst,
        site_macro=site_macro,
        excluded=excluded,
    )
