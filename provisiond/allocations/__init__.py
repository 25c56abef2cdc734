"""Allocations for CI and people: the service, matching, the queue, waiting, leases."""
