"""Hardware drivers. Each kind has a small interface and a registry."""
