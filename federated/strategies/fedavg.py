"""FedAvg (McMahan et al., 2017): the default; the sample-weighted mean of the sites' models."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from federated.strategies.base import SiteAwareMixin


class PacsFedAvg(SiteAwareMixin, FedAvg):
    """Flower's FedAvg, remembering which sites took part in each round."""
