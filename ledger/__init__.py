"""pacsmesh ledger package."""
