"""Benchmarks: each prints a ratio against a baseline measured in the same run.

    .venv/bin/python -m bench.trainer_step [--quick]
    .venv/bin/python -m bench.prepare_cache [--quick]

See bench/README.md.
"""
