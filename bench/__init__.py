"""Benchmark and load test for the inference server: `python -m bench --help`."""
