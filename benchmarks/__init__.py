"""Benchmarks for ddoq-ray (speed, memory, scale). Not tests: each script prints a table and writes JSON.

Regenerate everything with ``.venv/bin/python -m benchmarks`` (see docs/benchmarks.md).
"""
