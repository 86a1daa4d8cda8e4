"""Benchmarks of flux_async against baselines measured in the same run.

Run ``python -m benchmarks overhead|polling|scale|all [--quick]`` from the repository root; see
``benchmarks/README.md`` for what each scenario measures and the latest figures. The emulator
runs in its own process, every measured client run in a fresh process of its own, and every
figure is reported beside a baseline (a ratio) because absolute times on a shared machine mean
little. Nothing here is imported by the library or by the test suite.
"""
