"""Test and demo harness: tiny random-weight models and the demo's default models.

Not part of the product: left out of the wheel, used by ``tests/``, ``make demo`` and the benchmarks.
"""
