"""Benchmarks of csuite-async-obs: the worker's cost, side by side with its peers.

Run ``python -m benchmarks.run`` (``--quick`` for a short development run); see
``benchmarks/README.md``.
"""
