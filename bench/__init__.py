"""Benchmarks of the taskfleet control plane (see bench/README.md)."""
