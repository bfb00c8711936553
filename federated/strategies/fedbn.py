"""FedBN (Li et al., 2021): BatchNorm layers stay at each site; everything else is averaged.

Scanner differences between hospitals (noise, gamma, resolution) shift feature statistics;
keeping BatchNorm local lets each site normalise its own scanners. The ClientApp does the work:
told ``fedbn`` in the config, it loads its own BN parameters and running statistics from its
state dir over the global ones, and replies with the *received* BN values, so no site's BN
state ever leaves the site and the average of the BN entries stays the server's own.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from federated.strategies.base import SiteAwareMixin

FEDBN_CONFIG_KEY = "fedbn"


class PacsFedBN(SiteAwareMixin, FedAvg):
    """FedAvg on the shared layers; tells every site to keep its BatchNorm state local."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure training like FedAvg, flagging FedBN for the sites."""
        config[FEDBN_CONFIG_KEY] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sites evaluate the shared layers with their own BatchNorm, as they will deploy it."""
        config[FEDBN_CONFIG_KEY] = True
        return super().configure_evaluate(server_round, arrays, config, grid)


def batchnorm_keys(model: nn.Module) -> list[str]:
    """State-dict keys that belong to BatchNorm layers (weights, biases, running stats)."""
    keys: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            prefix = f"{name}." if name else ""
            keys.extend(prefix + k for k in module.state_dict())
    return keys
