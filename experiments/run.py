"""Deep Fusion Prior from the command line: fuse (and super-resolve) one scene.

  python experiments/run.py --flagfile=mfi.flags
  python experiments/run.py --inputs=near.png,far.png --scale=2 --output_dir=out
  python experiments/run.py --flagfile=plenoptic.flags          # light field -> focal stack -> DFP
  python experiments/run.py --input_dir=DATASET --output_dir=OUT  # every scene folder, resumable

Kept short on purpose: it parses flags, converts them once into a `dfp_jax.FusionConfig`, calls the
library, and writes the outputs (see README.md for the list). Every user error is one line on stderr
naming the file or flag and the problem, with exit status 2; nothing is written to --output_dir until
the run has succeeded (outputs are staged in a temporary sibling folder, then moved into place), an
existing --output_dir is replaced only if it is empty or a previous result of this tool, and Ctrl-C or
SIGTERM ends the run with one line, leaving --output_dir as it was.
Paths in a flagfile are relative to the working directory, as absl reads them.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax

from experiments import batch_job
from experiments import cli
from experiments import plenoptic

FLAGS = flags.FLAGS
cli.define_flags()
plenoptic.define_lightfield_flags()
batch_job.define_batch_flags()


def parse_flags(argv):
  """absl's flag parsing, with a malformed or unknown flag reported like every other user error."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    cli.fail(f'{e} (see --helpshort)')


class Terminated(BaseException):
  """SIGTERM, raised in the main thread so that staging folders are cleaned up as for Ctrl-C (a
  BaseException, as KeyboardInterrupt, so that no `except Exception` on the way swallows it)."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected positional arguments: {" ".join(argv[1:])} (use --inputs=a.png,b.png)')
  signal.signal(signal.SIGTERM, _raise_terminated)
  if FLAGS.input_dir and (FLAGS.inputs or FLAGS.lightfield):
    other = '--inputs' if FLAGS.inputs else '--lightfield'
    cli.fail(f'give either --input_dir (a folder of scenes, batch mode) or {other}, not both')
  try:
    if FLAGS.input_dir:
      batch_job.setup_devices(FLAGS)
    cli.setup_runtime(FLAGS)
    if FLAGS.lightfield:
      return plenoptic.run_lightfield(FLAGS)
    if FLAGS.input_dir:
      return batch_job.run_batch(FLAGS)
    return cli.run_single(FLAGS)
  except cli.USER_ERRORS as e:
    cli.fail(str(e))
  except (KeyboardInterrupt, Terminated) as e:
    what, code = ('interrupted', 130) if isinstance(e, KeyboardInterrupt) else ('terminated (SIGTERM)', 143)
    if FLAGS.input_dir:
      cli.fail(f'{what}: finished scenes are kept in {FLAGS.output_dir}; the same command resumes the rest',
               code)
    cli.fail(f'{what}: nothing was written; {FLAGS.output_dir} is as it was before this run', code)


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main, flags_parser=parse_flags)
