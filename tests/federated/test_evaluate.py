"""Learning really happens, and federation pays: synthetic sites, three seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from federated.evaluate import EvalSettings, evaluate_methods
from federated.synth import synthesize


@pytest.mark.slow
def test_fedavg_nears_centralized_and_beats_local_on_locally_rare_findings(
    tmp_path: Path,
) -> None:
    synthesize(tmp_path, sites=3, per_site=80, seed=11, image_size=48)
    results = evaluate_methods(
        tmp_path,
        seeds=[0, 1, 2],
        settings=EvalSettings(rounds=6, image_size=48),
        methods=["centralized", "fedavg", "local"],
    )
    methods = results["methods"]
    central, fedavg, local = (methods[m] for m in ("centralized", "fedavg", "local"))
    # Everyone learnt something real.
    assert central["macro_auroc"] > 0.8, central
    assert fedavg["macro_auroc"] >= central["macro_auroc"] - 0.05, (fedavg, central)
    assert fedavg["macro_auroc"] > local["macro_auroc"]
    # Each site has findings it rarely sees (the generator's label skew) ...
    rare = results["locally_rare_findings"]
    assert set(rare) == {"site-1", "site-2", "site-3"}
    assert all(len(findings) >= 2 for findings in rare.values()), rare
    # ... and on exactly those, the consortium model beats the site's own model.
    for site in rare:
        assert fedavg["locally_rare_auroc"][site] > local["locally_rare_auroc"][site], site
