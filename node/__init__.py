"""pacsmesh node package."""
