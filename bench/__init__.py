"""Benchmarks: ``python -m promptweave.bench TASK [--quick] [--seed N] [--split test|compositional] --json PATH``.

Each task is a module in this package with a ``run(seed, split, quick) -> TaskResult`` function, registered
in :data:`promptweave.bench.harness.TASKS`. Speed and memory figures live here, never in timed tests.
"""
