"""notes-service: a small FastAPI service on platform-db (examples/service/README.md)."""
