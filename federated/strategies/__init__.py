"""Server strategies, one module each, chosen by the run config's ``strategy``."""

from __future__ import annotations

from federated.run_config import RunSettings
from federated.strategies.base import SiteAwareMixin, SiteReport
from federated.strategies.fedavg import PacsFedAvg
from federated.strategies.fedbn import PacsFedBN
from federated.strategies.fedprox import PacsFedProx

Strategy = PacsFedAvg | PacsFedProx | PacsFedBN

__all__ = [
    "PacsFedAvg",
    "PacsFedBN",
    "PacsFedProx",
    "SiteAwareMixin",
    "SiteReport",
    "build_strategy",
]


def build_strategy(run: RunSettings) -> Strategy:
    """The strategy named by the run config, with its node-sampling thresholds."""
    common = {
        "fraction_train": run.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": run.min_train_nodes,
        "min_evaluate_nodes": run.min_train_nodes,
        "min_available_nodes": run.min_available_nodes,
    }
    if run.strategy == "fedprox":
        return PacsFedProx(proximal_mu=run.proximal_mu, **common)
    if run.strategy == "fedbn":
        return PacsFedBN(**common)
    return PacsFedAvg(**common)
