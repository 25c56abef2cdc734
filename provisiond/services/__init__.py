"""Use cases, one module each. Routers and CLI commands call these and nothing else."""
