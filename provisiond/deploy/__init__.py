"""Deploys, inspections and releases: records, the engine, boot scripts, seeds and the
OS callback, boot telemetry, agent reports, the reaper."""
