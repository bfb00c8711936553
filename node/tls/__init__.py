"""Node-to-node mutual TLS: ssl contexts, the uvicorn hook that exposes the peer certificate,
and the peer acceptance rule (consortium CA + fingerprint of an active member)."""
