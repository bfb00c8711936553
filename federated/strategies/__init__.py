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
    if run.strategy == "fedprox":
        return PacsFedProx(
            fraction_train=run.fraction_train,
            min_train_nodes=run.min_train_nodes,
            min_evaluate_nodes=run.min_train_nodes,
            min_available_nodes=run.min_available_nodes,
            proximal_mu=run.proximal_mu,
        )
    kind = PacsFedBN if run.strategy == "fedbn" else PacsFedAvg
    return kind(
        fraction_train=run.fraction_train,
        min_train_nodes=run.min_train_nodes,
        min_evaluate_nodes=run.min_train_nodes,
        min_available_nodes=run.min_available_nodes,
    )
