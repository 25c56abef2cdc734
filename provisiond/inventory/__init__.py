"""Inventory as code and its objects: plan/apply, spec, YAML, check, state, racks,
switches, PDUs, placement, images."""
