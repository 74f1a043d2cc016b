"""`python -m dfp_jax`: the command-line application (docs/cli.md)."""

from dfp_jax.app.main import run

run()
