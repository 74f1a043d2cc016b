"""Experiments on top of the installed `dfp_jax` package: `run.py` (the documented entry point, a few
lines calling `dfp_jax.app`), `benchmarks/` (the scripts the docs' tables come from), `studies/` (one-off
questions about the method) and `common` (what they share). Run scripts as modules from the repository
root, e.g. `python -m experiments.benchmarks.benchmark_gt`.
"""
