"""Deep Fusion Prior from the command line (the documented entry point; the same as `dfp-jax` and
`python -m dfp_jax` after `pip install -e .`):

  python experiments/run.py --flagfile=mfi.flags
  python experiments/run.py --inputs=near.png,far.png --scale=2 --output_dir=out

The application lives in `dfp_jax.app`; docs/cli.md lists every flag.
"""

from dfp_jax.app.main import run

if __name__ == '__main__':
  run()
