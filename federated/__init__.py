"""pacsmesh federated package."""
