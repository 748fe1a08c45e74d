"""Benchmarks of durably (run ``python -m bench.queue``; see bench/README.md)."""
