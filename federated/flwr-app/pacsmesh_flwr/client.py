"""The ClientApp component: re-exported from the installed ``federated`` package."""

from federated.client_app import app

__all__ = ["app"]
