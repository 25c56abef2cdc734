"""Machines and their BMCs: the service, power, power sync, BMC access, credentials,
discovery."""
