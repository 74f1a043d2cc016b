"""Memory: estimated before anything is compiled, and what the machine has free.

An image too large for the machine is refused with a clear message (the estimate and the largest input
that fits) instead of the process being killed mid-run. The estimate is per scene and per stage, from
shapes alone (`estimate_memory`); the free memory is the device's, or on a CPU the host's (/proc and
cgroup limits), capped by the DFP_JAX_MEMORY_BUDGET environment variable (`available_memory`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import embedding
from dfp_jax import fusion
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError, MemoryBudgetError, format_bytes

# Bytes kept per (channel x pixel) of feature maps during one training step, relative to float32
# storage: the forward activations kept for the backward pass (conv, BN and LeakyReLU outputs, reflect
# padded copies) and the backward temporaries. Calibrated against XLA's compiled memory analysis
# (temp + arguments) of the main step on CPU at 64^2..128^2 inputs, x2 (tests/test_fusion.py and
# experiments/benchmarks/bench_step.py check the estimate against it).
ACTIVATION_COPIES = 7.5
FIXED_BYTES = 8 * 2 ** 20
# On a CPU the process holds more than the step's buffers: the other stage's state and executable,
# host copies of inputs and outputs, the compiler's workspace: calibrated on the growth of peak RSS
# over a 32x32 run (docs/history.md "Memory per scene, first release"; today's in docs/benchmarks.md
# "Memory").
# `check_memory` compares free host memory with estimate x HOST_FACTOR.
HOST_FACTOR = 1.45


@functools.lru_cache(maxsize=64)
def _param_count(net_cfg, cin: int, cout: int) -> int:
  """Parameter count of a prior (independent of the image size), from shapes only."""
  m = 2 ** net_cfg.depth
  params = jax.eval_shape(net_cfg.build(cout).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((m, m, cin), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _padded(n: int, depth: int) -> int:
  m = 2 ** depth
  return -(-n // m) * m


def estimate_memory(height: int, width: int, num_inputs: int, channels: int,
                    config: FusionConfig) -> dict:
  """Estimated peak device memory (bytes) of each stage for one scene of N inputs [H, W, C].

  Returns {'mask': bytes, 'main': bytes, 'peak': bytes (the larger stage), 'host_peak': bytes (what a
  CPU process adds to its resident set: HOST_FACTOR x peak), 'bytes_per_output_pixel': ...}.
  """
  s = config.scale
  act_bytes = 2 if config.compute_dtype == 'bfloat16' else 4
  out = {}

  def stage_bytes(net_cfg, h, w, cin, cout, lr_pixels, images_kept=3):
    px = _padded(h, net_cfg.depth) * _padded(w, net_cfg.depth)
    n_params = _param_count(net_cfg, cin, cout)
    per_px = ACTIVATION_COPIES * act_bytes * net_cfg.feature_channels_per_pixel()
    # Inputs and maps; z, the output and its EMA at the output size (and the base's logit).
    scene = 4 * (num_inputs * lr_pixels * (channels + 1) + images_kept * h * w * max(cin, cout))
    return int(FIXED_BYTES + 4 * 4 * n_params + per_px * px + scene), per_px

  cz = config.noise_channels if config.input_type == 'noise' else channels
  out['main'], per_px = stage_bytes(config.image_prior, s * height, s * width, cz, channels,
                                    height * width, 3 + (config.output_base != 'none'))
  out['mask'] = 0
  if config.mask_iters > 0:
    out['mask'], _ = stage_bytes(config.mask_net, height, width, cz,
                                 embedding.mask_channels(num_inputs), height * width)
  out['peak'] = max(out['main'], out['mask'])
  out['host_peak'] = int(HOST_FACTOR * out['peak'])  # What a CPU process adds to its resident set.
  out['bytes_per_output_pixel'] = per_px
  return out


MEMORY_BUDGET_ENV = 'DFP_JAX_MEMORY_BUDGET'  # Bytes: a cap on what the memory checks plan for.


_UNITS = {'': 1, 'b': 1, 'k': 1e3, 'kb': 1e3, 'm': 1e6, 'mb': 1e6, 'g': 1e9, 'gb': 1e9, 't': 1e12,
          'tb': 1e12, 'kib': 2 ** 10, 'mib': 2 ** 20, 'gib': 2 ** 30, 'tib': 2 ** 40}


def parse_bytes(raw: str, name: str) -> int:
  """'8e9', '8GB', '6GiB', '512 MiB' -> bytes (> 0); an InputError naming `name` otherwise."""
  text = raw.strip().lower()
  number = text.rstrip('abcdefghijklmnopqrstuvwxyz').strip()
  unit = text[len(number):].strip() if number else text
  try:
    value = int(float(number) * _UNITS[unit])
    if value <= 0:
      raise ValueError
  except (ValueError, OverflowError, KeyError):
    raise InputError(f'{name}={raw!r}: expected a positive number of bytes, e.g. 8e9 or 6GiB') from None
  return value


def available_memory(device=None) -> int | None:
  """Bytes the computation may still use on `device` (default: the first device), or None.

  The environment variable DFP_JAX_MEMORY_BUDGET (bytes, e.g. 8e9 or 6GiB) caps it: on a shared machine,
  leave room for other jobs.
  """
  avail = _device_available_memory(device)
  cap = os.environ.get(MEMORY_BUDGET_ENV)
  if cap:
    cap = parse_bytes(cap, MEMORY_BUDGET_ENV)
    avail = cap if avail is None else min(avail, cap)
  return avail


def _device_available_memory(device=None) -> int | None:
  device = device or jax.devices()[0]
  if device.platform != 'cpu':
    try:
      stats = device.memory_stats()
      return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
    except Exception:  # pylint: disable=broad-except
      return None
  avail = None
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          avail = int(line.split()[1]) * 1024
  except OSError:
    pass
  for limit_file, usage_file in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                                 ('/sys/fs/cgroup/memory/memory.limit_in_bytes',
                                  '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
    try:
      with open(limit_file) as f:
        raw = f.read().strip()
      if raw != 'max' and int(raw) < 2 ** 60:
        with open(usage_file) as f:
          used = int(f.read().strip())
        cg = int(raw) - used
        avail = cg if avail is None else min(avail, cg)
      break
    except (OSError, ValueError):
      continue
  return avail


def check_memory(height: int, width: int, num_inputs: int, channels: int, config: FusionConfig,
                 available: int | None = None, name: str = 'inputs', headroom: float = 0.9) -> dict:
  """Raises MemoryBudgetError if the estimate exceeds `headroom` x the available memory; the message
  gives the estimate and the largest input size of the same aspect ratio that fits."""
  est = estimate_memory(height, width, num_inputs, channels, config)
  if available is None:
    available = available_memory()
  est['available'] = available
  key = 'host_peak' if jax.default_backend() == 'cpu' else 'peak'
  if available is None or est[key] <= headroom * available:
    return est
  budget = headroom * available
  # The estimate grows with the pixel count: shrink both sides by the same factor until it fits.
  lo, hi = 0.0, 1.0
  for _ in range(30):
    mid = (lo + hi) / 2
    h2, w2 = max(int(height * mid), 1), max(int(width * mid), 1)
    if estimate_memory(h2, w2, num_inputs, channels, config)[key] <= budget:
      lo = mid
    else:
      hi = mid
  h2, w2 = int(height * lo), int(width * lo)
  if fusion.size_shortfall(config, h2, w2):  # Nothing usable fits: the budget is below the runtime's needs.
    capped = os.environ.get(MEMORY_BUDGET_ENV)
    try:
      binding = bool(capped) and int(float(capped)) == available  # The cap, not the machine, limits.
    except (ValueError, OverflowError):
      binding = False
    fits = (f'no input of this shape fits (each side must be at least {fusion.min_input_size(config)} pixels); '
            + (f'raise {MEMORY_BUDGET_ENV} (now {capped})' if binding else 'free some memory first'))
  else:
    fits = (f'the largest input of this shape that fits is about {h2}x{w2} (crop or downsample the '
            'inputs, lower --scale, or use --compute_dtype=bfloat16 on an accelerator)')
  raise MemoryBudgetError(f'{name}: {height}x{width} at x{config.scale} needs about '
                          f'{format_bytes(est[key])} but only {format_bytes(available)} is available; {fits}')
