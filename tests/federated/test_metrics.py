"""AUROC within each site then averaged, macro and worst-site AUROC, single-class exclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federated.metrics import SingleClassError, auroc, federated_auroc, site_auroc
from federated.task import FINDINGS


def test_auroc_hand_checked() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: pairs won 1+0+1+1 of 4 = 0.75.
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # A tie counts one half: (1 + 0.5) / 2.
    assert auroc(np.array([0.2, 0.5, 0.5]), np.array([0, 0, 1])) == 0.75
    assert auroc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    with pytest.raises(SingleClassError, match="only positives"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="unknown"):
        auroc(np.array([0.1, 0.2]), np.array([1, math.nan]))


def _site(
    columns: dict[str, tuple[list[float], list[float]]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    probs = np.full((n, 9), 0.5)
    labels = np.zeros((n, 9))
    labels[0, :] = 1  # every other finding: one positive, tied scores -> AUROC 0.5
    for finding, (p, y) in columns.items():
        j = FINDINGS.index(finding)
        probs[:, j], labels[:, j] = p, y
    return probs, labels


def test_site_averaged_macro_and_worst_site_hand_checked() -> None:
    nan = math.nan
    a = _site(
        {
            "cardiomegaly": ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]),  # 0.75
            "nodule": ([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]),  # 1.0
            "pneumothorax": ([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0]),  # only negatives: excluded
        },
        4,
    )
    b = _site(
        {
            "cardiomegaly": ([0.2, 0.1, 0.9, 0.8], [1, 1, 0, 0]),  # 0.0
            "nodule": ([0.3, 0.6, 0.7, 0.1], [0, 1, nan, 0]),  # unknown dropped: 1.0
            "pneumothorax": ([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]),  # 0.75
        },
        4,
    )
    report = federated_auroc({"A": a, "B": b})
    assert report.per_site["A"]["cardiomegaly"] == 0.75
    assert report.per_site["B"]["cardiomegaly"] == 0.0
    assert report.per_finding["cardiomegaly"] == pytest.approx(0.375)  # not pooled
    assert report.per_finding["nodule"] == 1.0
    assert report.per_finding["pneumothorax"] == 0.75  # only site B counts
    assert {"site": "A", "finding": "pneumothorax", "reason": "only negatives"} in report.excluded
    # Six untouched findings score 0.5 at both sites.
    assert report.macro == pytest.approx((0.375 + 1.0 + 0.75 + 6 * 0.5) / 9)
    assert report.site_macro["A"] == pytest.approx((0.75 + 1.0 + 6 * 0.5) / 8)
    assert report.site_macro["B"] == pytest.approx((0.0 + 1.0 + 0.75 + 6 * 0.5) / 9)
    assert report.worst_site_name == "B"
    assert report.worst_site == pytest.approx(report.site_macro["B"])
    as_json = report.to_dict()
    assert as_json["worst_site"] == "B" and "pneumothorax" in as_json["per_finding"]


def test_pooling_would_differ_from_site_averaging() -> None:
    # Each site ranks perfectly, but site B's scores are all higher: pooled AUROC < 1.
    a = _site({"nodule": ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])}, 4)
    b = _site({"nodule": ([0.6, 0.7, 0.8, 0.9], [0, 0, 1, 1])}, 4)
    report = federated_auroc({"A": a, "B": b})
    assert report.per_finding["nodule"] == 1.0
    pooled = auroc(np.r_[a[0][:, 4], b[0][:, 4]], np.r_[a[1][:, 4], b[1][:, 4]])
    assert pooled < 1.0


def test_findings_without_labels_are_excluded_and_reported() -> None:
    probs = np.random.default_rng(0).random((6, 9))
    labels = np.tile([[1.0], [0.0]], (3, 9))
    labels[:, 0] = math.nan  # calcification not annotated (NIH)
    values, excluded = site_auroc(probs, labels)
    assert "calcification" not in values and excluded == {"calcification": "no known labels"}
    empty = federated_auroc({})
    assert math.isnan(empty.macro) and empty.worst_site_name is None
    assert empty.to_dict()["macro_auroc"] is None
    with pytest.raises(ValueError, match=r"\(N, 9\)"):
        site_auroc(probs[:, :3], labels[:, :3])
