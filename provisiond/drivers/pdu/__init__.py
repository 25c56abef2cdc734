"""PDU drivers: switch outlets and read power (registry.py + one file per model)."""
