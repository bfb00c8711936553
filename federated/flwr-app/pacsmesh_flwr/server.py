"""The ServerApp component: re-exported from the installed ``federated`` package."""

from federated.server_app import app

__all__ = ["app"]
