"""Inventory as code and its objects: plan/apply, spec, YAML, check, state, racks,
switches, PDUs, placement, images."""

#: The largest inventory: admission's body limit for /api/v1/inventory/, and the CLI's.
#: Here, not in .plan, so the CLI reads it without importing the models.
MAX_BYTES = 8 * 1024 * 1024
