"""Process-wide settings that only the application sets: JAX's backend check, host devices, the
persistent compilation cache, library log levels; and the versions recorded with every result.
"""

from __future__ import annotations

import logging as std_logging
import os
import platform

from absl import logging
import cv2
import numpy as np
import jax

import dfp_jax
from dfp_jax import errors


def cache_dir(*parts: str) -> str:
  """A folder of dfp_jax's under $XDG_CACHE_HOME (default ~/.cache)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(base, 'dfp_jax', *parts)


def setup(compilation_cache: bool, compilation_cache_dir: str | None, check_now: bool = True) -> None:
  """Library log levels, the backend check (`check_now`; multi-process runs check after
  `jax.distributed.initialize`) and the persistent compilation cache (`compilation_cache_dir`, default
  `cache_dir('jax')`)."""
  compilation_cache_dir = compilation_cache_dir or cache_dir('jax')
  # OpenCV's own warnings (e.g. libpng on a truncated file) would add lines to our one-line errors.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
  # JAX's platform probing logs at INFO ("Unable to initialize backend 'tpu'") on every CPU run; its
  # warnings (e.g. a GPU present without a CUDA jaxlib) still show.
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  if check_now:
    check_backend()
  if compilation_cache:
    try:
      os.makedirs(compilation_cache_dir, exist_ok=True)
      jax.config.update('jax_compilation_cache_dir', compilation_cache_dir)
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
      jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    except OSError as e:
      logging.warning('compilation cache disabled: cannot create %s (%s)', compilation_cache_dir, e)


def check_backend() -> None:
  """A --jax_platforms (or JAX_PLATFORMS) this machine cannot give, as one line: it fails deep inside
  JAX otherwise (a bare AssertionError for 'cuda' with a CPU-only jaxlib). Initialises the backend."""
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:
    platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS') or 'default'
    raise errors.InputError(f'JAX backend {platforms!r} is not available here '
                            f'({str(e).strip() or type(e).__name__}); check --jax_platforms / '
                            'JAX_PLATFORMS and the installed jaxlib') from None


def setup_host_devices(count: int) -> None:
  """Before JAX starts (batch mode): one CPU device per core (XLA:CPU runs one scene's step on about
  one core), `count` of them (0: one per core, at most 8)."""
  n = count
  if n <= 0:
    try:
      n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
      n = os.cpu_count() or 1
    n = max(1, min(n, 8))
  if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', n)


def init_distributed(coordinator_address: str | None, num_processes: int, process_id: int) -> None:
  """`jax.distributed.initialize` for multi-host device setups (then the backend check)."""
  if num_processes > 1:
    if not coordinator_address:
      raise errors.InputError('--num_processes > 1 needs --coordinator_address=host:port')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  check_backend()


def versions() -> dict:
  """Library versions recorded in summary.json and the batch manifest."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {'dfp_jax': dfp_jax.__version__, 'jax': jax.__version__,
          'jaxlib': getattr(jax.lib, '__version__', None) or _pkg_version('jaxlib'),
          'flax': flax.__version__, 'optax': optax.__version__, 'numpy': np.__version__,
          'opencv': cv2.__version__, 'python': platform.python_version()}


def _pkg_version(name):
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(name)
  except Exception:  # pylint: disable=broad-except
    return None
