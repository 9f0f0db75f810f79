"""Benchmarks (not tests): `python -m bench all` runs every figure of issue 11 (see __main__)."""
