"""HTTP interfaces: routers translate protocols into service calls and back."""
