"""Val pilots: one-off research runs that chose a benchmark's settings on the val split (BENCHMARKS.md cites them).

Run as ``python -m promptweave.bench.pilots.NAME ...``; each module's docstring gives its arguments.
"""
