"""Benchmarks (not tests): run with `python -m bench.<name>`; results are printed as JSON."""
