"""Services: the only place with policy. Protocol-agnostic; never imports FastAPI or pynetdicom."""
