"""Benchmarks of the workflow engine; run one with ``python -m bench.<name>``."""
