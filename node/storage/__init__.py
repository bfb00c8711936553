"""Storage: the index (SQLModel) and the encrypted blob store. Never raises HTTP errors."""
