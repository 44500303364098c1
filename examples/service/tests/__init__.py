"""notes-service's tests (a package, so that they can share fixtures' types)."""
