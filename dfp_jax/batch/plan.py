"""Planning a batch: which scenes run together, how many at once, and with which strategy.

Scenes are bucketed by exact shape (N, H, W, C) (`bucket_scenes`): padding images to a common size would
change every result. Per bucket (`plan_bucket`): the group size is the largest that fits the memory
(`scenes_that_fit`: the per-scene estimate of `memory.estimate_memory` against each device's free
memory), capped by `max_scenes_per_step`; the strategy is the caller's or, with 'auto', the fastest in a
short measured probe of the main step (`probe_strategy`), remembered per (machine, shape, settings) in
a small JSON file next to the compilation cache.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import NamedTuple

from absl import logging
import numpy as np
import jax
from jax.sharding import Mesh

from dfp_jax import fusion
from dfp_jax import memory
from dfp_jax import optimize
from dfp_jax.batch import programs
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError

STRATEGIES = ('auto', 'vmap', 'shard', 'loop')
_PROBED = ('loop', 'shard', 'vmap', 'vmap_per_device')  # What a probe can pick.


def vmap_group(num_scenes: int, cap: int, num_devices: int) -> int:
  """vmap group size: all the bucket's scenes if they fit (cap), rounded up to a multiple of the device
  count (dummies fill it) when the cap allows, so every device gets the same block."""
  g = max(1, min(num_scenes, cap))
  if num_devices > 1 and cap >= num_devices:
    g = min(-(-g // num_devices) * num_devices, (cap // num_devices) * num_devices)
  return g


def scenes_that_fit(h: int, w: int, n: int, c: int, config: FusionConfig, devices=None,
                    available: int | None = None, headroom: float = 0.9) -> int:
  """How many scenes of this shape fit in memory at once (over all `devices`; 0 if not even one).

  Host (CPU) devices share the host memory; accelerators each have their own.
  """
  devs = programs.devices_of(devices)
  est = memory.estimate_memory(h, w, n, c, config)
  per_scene = est['host_peak'] if devs[0].platform == 'cpu' else est['peak']
  if devs[0].platform == 'cpu':
    avail = available if available is not None else memory.available_memory(devs[0])
    return 10 ** 6 if avail is None else int(headroom * avail // per_scene)
  total = 0
  for d in devs:
    avail = available if available is not None else memory.available_memory(d)
    total += 10 ** 6 if avail is None else int(headroom * avail // per_scene)
  return total


def _probe_cache_path() -> str:
  base = os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache'))
  return os.path.join(base, 'dfp_jax', 'batch_probe.json')


def probe_key(shape, config: FusionConfig, devices) -> str:
  """What the strategy probe's result depends on: the machine, the shapes and the settings that change
  the main step's cost (the whole image-net configuration, its input's width, the XLA:CPU kernels, the
  output form). Loss weights, step counts and the EMA change values, not the program's cost."""
  devs = programs.devices_of(devices)
  return json.dumps([jax.__version__, devs[0].platform, devs[0].device_kind, len(devs), list(shape),
                     config.scale, config.compute_dtype, config.loop, config.cpu_conv, config.output_base,
                     config.input_type, config.noise_channels, config.prior, config.degradation,
                     dataclasses.asdict(config.image_prior)],
                    default=list)


def _read_probe_cache(path: str) -> dict:
  """The probe's remembered results {key: {'best': strategy, 'rates': {...}}}; a damaged file (not JSON,
  not such an object, or entries of another shape) is ignored with a warning and rewritten by the next
  probe, before any probing, not after it."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      cache = json.load(f)
    if not isinstance(cache, dict):
      raise ValueError(f'a {type(cache).__name__}, not an object')
  except (OSError, ValueError) as e:
    logging.warning('%s: damaged batch probe cache (%s); ignored, and rewritten after this probe', path, e)
    return {}
  good = {k: v for k, v in cache.items() if isinstance(v, dict) and v.get('best') in _PROBED
          and isinstance(v.get('rates'), dict)}
  if len(good) < len(cache):
    logging.warning('%s: damaged entries of the batch probe cache (%d) ignored', path, len(cache) - len(good))
  return good


def probe_strategy(x, keys, config: FusionConfig, devices=None, group: int = 1, steps: int = 3,
                   cache_path: str | None = '', allow_shard: bool = True) -> tuple[str, dict]:
  """Measures the main step of each strategy on these scenes; returns (fastest, {strategy: scene
  steps per second}). `group` scenes (at most) are used for vmap; 'vmap_per_device' is vmap with one
  scene per device per group (on 2 CPU devices often faster than both the loop and shard). With
  cache_path ('' = the default file, None = no cache) a previous measurement for the same key is
  reused."""
  devs = programs.devices_of(devices)
  g_all, n, h, w, c = x.shape
  key = probe_key((n, h, w, c, group, allow_shard), config, devs)
  if cache_path == '':
    cache_path = _probe_cache_path()
  cache = _read_probe_cache(cache_path) if cache_path else {}
  if key in cache:
    return cache[key]['best'], cache[key]['rates']
  nd = len(devs)
  candidates = (['loop'] + (['shard'] if nd > 1 and allow_shard else []) +
                (['vmap'] if group > 1 else []) +
                (['vmap_per_device'] if nd > 1 and group > nd and allow_shard else []))
  rates = {}
  for name in candidates:
    try:
      strat, g = ('vmap', nd) if name == 'vmap_per_device' else (name, group)
      rates[name] = measure_strategy(x, keys, config, strat, devs, g, steps,
                                     scenes=g_all)['scene_steps_per_s']
    except Exception as e:  # pylint: disable=broad-except
      if name == 'loop':
        raise
      logging.warning('batch probe: %s failed (%s: %s); not used', name, type(e).__name__,
                      str(e).splitlines()[0][:200])
      rates[name] = 0.0
      continue
    logging.info('batch probe %dx%d x%d: %s %.2f scene-steps/s', h, w, config.scale, name, rates[name])
  best = max(rates, key=rates.get)
  if cache_path:
    cache[key] = {'best': best, 'rates': rates}
    try:
      os.makedirs(os.path.dirname(cache_path), exist_ok=True)
      tmp = cache_path + f'.tmp{os.getpid()}'
      with open(tmp, 'w') as f:
        json.dump(cache, f, indent=1)
      os.replace(tmp, cache_path)
    except OSError as e:
      logging.warning('could not save the batch probe to %s (%s)', cache_path, e)
  return best, rates


def measure_strategy(x, keys, config: FusionConfig, strategy: str, devices=None, group: int = 1,
                     steps: int = 3, scenes: int | None = None) -> dict:
  """Times the main-stage step of one strategy on scenes x [G0, N, H, W, C] (cycled to the group size:
  1 for 'loop', the device count for 'shard', `group` for 'vmap'). Returns scene_steps_per_s,
  compile_s, group and memory (bytes of the compiled program: arguments + temporaries + outputs, when
  XLA reports them). With `scenes`, the rate is the effective one for that many scenes: groups run
  in turn and the last one is padded with dummies (shard with 3 scenes on 2 devices: 2 groups)."""
  devs = programs.devices_of(devices)
  if strategy == 'loop':
    mode, mesh, g = 'unroll', None, 1
  elif strategy == 'shard':
    mode, mesh, g = 'unroll', programs.make_mesh(devs), len(devs)
  else:
    mesh = programs.make_mesh(devs) if len(devs) > 1 and group % len(devs) == 0 else None
    mode, g = 'vmap', group
  n, h, w, c = x.shape[1:]
  idx = np.arange(g) % x.shape[0]
  xs = x[idx]
  split = jax.vmap(jax.random.split)(keys[idx])
  maps = programs.decision_maps(xs, config.focus)
  state, problem = programs.place(
      optimize.call_one_off(programs.init_main, split[:, 1], xs, maps, config=config), mesh)
  stage = programs.group_stage(fusion.main_stage(config, c), mode, mesh)
  loop = optimize.resolve_loop(config.loop)
  run, compile_s = optimize.compile_chunk(stage, state, problem, steps, loop)
  program_bytes = None
  try:
    ma = run.executable.memory_analysis()
    program_bytes = int(ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes -
                 ma.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  state, terms = run(state, problem, 1)  # Warm-up.
  jax.block_until_ready(terms)
  t0 = time.perf_counter()
  state, terms = run(state, problem, steps)
  jax.block_until_ready(terms)
  seconds = time.perf_counter() - t0
  step_s = seconds / steps
  scenes = scenes or g
  rate = scenes / (-(-scenes // g) * step_s)
  return {'scene_steps_per_s': rate, 'step_s': step_s, 'compile_s': compile_s,
          'group': g, 'memory_bytes': program_bytes}


class Bucket(NamedTuple):
  """Scenes of one exact shape: their indices and stacked inputs (host memory)."""
  shape: tuple  # (N, H, W, C)
  indices: list  # Scene indices, in input order.
  x: np.ndarray  # [S, N, H, W, C]
  valid: np.ndarray | None = None  # [S, N, H, W] where each input covers its scene (registration).
  maps: np.ndarray | None = None  # [S, N, H, W] decision maps given by the caller (tiles).


def bucket_scenes(scenes, config: FusionConfig, names, valids=None, maps=None) -> tuple[list[Bucket], dict]:
  """Validates every scene and groups the valid ones by exact shape; returns (buckets, {scene index:
  error message} for the invalid ones). `valids`, `maps`: optional per-scene [N, H, W] masks and
  decision maps (or None)."""
  members: dict = collections.OrderedDict()
  refused = {}
  valids = list(valids) if valids is not None else [None] * len(scenes)
  for i, images in enumerate(scenes):
    try:
      x = np.asarray(fusion.validate_images(list(images), config,
                                            [f'{names[i]}: input {j}' for j in range(len(images))]))
    except InputError as e:
      refused[i] = str(e)
      continue
    members.setdefault(tuple(x.shape), []).append((i, x))
  buckets = []
  for shape, m in members.items():
    masks = [valids[i] for i, _ in m]
    valid = None if all(v is None for v in masks) else np.stack(
        [np.ones(shape[:3], bool) if v is None else np.asarray(v, bool) for v in masks])
    given = None if maps is None else np.stack([np.asarray(maps[i], np.float32) for i, _ in m])
    buckets.append(Bucket(shape, [i for i, _ in m], np.stack([x for _, x in m]), valid, given))
  return buckets, refused


@dataclasses.dataclass
class BucketPlan:
  """How one bucket runs: strategy, group size, program mode and mesh."""
  strategy: str  # 'loop', 'shard' or 'vmap'.
  group_size: int
  mode: str | None  # GroupStage mode ('vmap' or 'unroll'); None for the loop.
  mesh: Mesh | None
  probe: dict | None  # The 'auto' probe's rates, if it ran.

  def info(self, bucket: Bucket) -> dict:
    return {'shape': list(bucket.shape), 'scenes': len(bucket.indices), 'strategy': self.strategy,
            'group_size': self.group_size, 'devices': self.mesh.devices.size if self.mesh is not None else 1,
            'probe': self.probe}


def plan_bucket(bucket: Bucket, keys, config: FusionConfig, strategy: str, cap: int, devices,
                probe_cache: str | None = '') -> BucketPlan:
  """The plan of one bucket whose groups may hold at most `cap` scenes (memory and the user's cap)."""
  devs = programs.devices_of(devices)
  nd = len(devs)
  chosen, rates = strategy, None
  if strategy == 'auto':
    if len(bucket.indices) == 1:
      chosen = 'loop'
    else:
      chosen, rates = probe_strategy(bucket.x, keys, config, devs,
                                     group=vmap_group(len(bucket.indices), cap, nd),
                                     cache_path=probe_cache, allow_shard=cap >= nd)
  per_device = chosen == 'vmap_per_device'
  if per_device:
    chosen = 'vmap'
  if chosen == 'shard' and (nd == 1 or cap < nd):
    chosen = 'loop'  # One device (or memory for fewer scenes than devices): the loop.
  if chosen == 'loop':
    return BucketPlan('loop', 1, None, None, rates)
  if chosen == 'shard':
    return BucketPlan('shard', nd, 'unroll', programs.make_mesh(devs), rates)
  g = nd if per_device else vmap_group(len(bucket.indices), cap, nd)
  return BucketPlan('vmap', g, 'vmap', programs.make_mesh(devs) if (nd > 1 and g % nd == 0) else None,
                    rates)
