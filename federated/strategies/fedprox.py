"""FedProx (Li et al., 2020): FedAvg plus a proximal term that keeps non-IID sites close.

The server side is FedAvg; Flower's FedProx puts ``proximal-mu`` into every train config and the
ClientApp hands it to ``task.train(proximal_mu=..., global_params=...)``.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from federated.strategies.base import SiteAwareMixin


class PacsFedProx(SiteAwareMixin, FedProx):
    """Flower's FedProx, remembering which sites took part in each round."""
