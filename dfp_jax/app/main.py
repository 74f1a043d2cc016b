"""The entry point: parse flags, build the job's arguments once, run the job, and turn every user error
into one line on stderr (exit 2), an interruption into one line (exit 130 / 143).

  dfp-jax --flagfile=mfi.flags
  dfp-jax --inputs=near.png,far.png --scale=2 --output_dir=out
  dfp-jax --lightfield=FOLDER --output_dir=out        # light field -> focal stack -> DFP
  dfp-jax --input_dir=DATASET --output_dir=OUT         # every scene folder, resumable

Paths in a flagfile are relative to the working directory, as absl reads them.
"""

from __future__ import annotations

import signal
import sys

from absl import app
from absl import flags
import jax

from dfp_jax import errors
from dfp_jax import optimize
from dfp_jax.app import batch_job
from dfp_jax.app import flags as app_flags
from dfp_jax.app import lightfield_job
from dfp_jax.app import runtime
from dfp_jax.app import scene

FLAGS = flags.FLAGS
USER_ERRORS = (errors.InputError, errors.MemoryBudgetError, ValueError, optimize.NonFiniteLossError)


def fail(message: str, code: int = 2):
  """One line on stderr, no traceback, non-zero exit."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing, with a malformed or unknown flag (or flagfile) reported like every other user
  error."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f'{e} (see --helpshort)')
  except (UnicodeDecodeError, OSError) as e:  # A --flagfile that is binary, a folder, unreadable.
    files = [a.split('=', 1)[1] for a in argv if a.startswith('--flagfile=')]
    what = 'not a text file of --flag=value lines' if isinstance(e, UnicodeDecodeError) else (
        e.strerror or str(e))
    fail(f'{", ".join(files) or "--flagfile"}: {what}')


class Terminated(BaseException):
  """SIGTERM, raised in the main thread so that staging folders are cleaned up as for Ctrl-C (a
  BaseException, as KeyboardInterrupt, so that no `except Exception` on the way swallows it)."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected positional arguments: {" ".join(argv[1:])} (use --inputs=a.png,b.png)')
  signal.signal(signal.SIGTERM, _raise_terminated)
  if FLAGS.input_dir and (FLAGS.inputs or FLAGS.lightfield):
    other = '--inputs' if FLAGS.inputs else '--lightfield'
    fail(f'give either --input_dir (a folder of scenes, batch mode) or {other}, not both')
  if FLAGS.lightfield and FLAGS.inputs:
    fail('give either --inputs (images) or --lightfield (a folder of views), not both')
  try:
    if FLAGS.input_dir:
      runtime.setup_host_devices(FLAGS.host_devices)
    runtime.setup(FLAGS.compilation_cache, FLAGS.compilation_cache_dir,
                  check_now=not (FLAGS.input_dir and FLAGS.num_processes > 1))
    if FLAGS.lightfield:
      return lightfield_job.run_lightfield(app_flags.lightfield_args())
    if FLAGS.input_dir:
      return batch_job.run_batch(app_flags.batch_args())
    return scene.run_scene(app_flags.scene_args())
  except USER_ERRORS as e:
    fail(str(e))
  except (KeyboardInterrupt, Terminated) as e:
    what, code = ('interrupted', 130) if isinstance(e, KeyboardInterrupt) else ('terminated (SIGTERM)', 143)
    if FLAGS.input_dir:
      fail(f'{what}: finished scenes are kept in {FLAGS.output_dir}; the same command resumes the rest',
           code)
    fail(f'{what}: nothing was written; {FLAGS.output_dir} is as it was before this run', code)


def run():
  """Console entry point (`dfp-jax`, `python -m dfp_jax`, `experiments/run.py`)."""
  before = set(FLAGS)
  app_flags.define_flags()
  for name in sorted(set(FLAGS) - before):  # --helpshort lists the application's flags.
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  jax.config.parse_flags_with_absl()
  app.run(main, flags_parser=parse_flags)
