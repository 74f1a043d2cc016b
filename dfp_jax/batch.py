"""Batch fusion engine: many independent scenes at once (vmap, device-parallel, or a loop).

`fuse_batch(scenes, config, ...)` fuses every scene exactly as `fusion.fuse` would fuse it alone (same
per-scene PRNG key, same configuration), and returns one `FusionResult` per scene. Only how the scene
axis is executed differs, and it is a measured choice (`strategy`):

  * 'vmap': the single-scene functions of `fusion` (DoubleReblur, the inits, the train step, the
    decision-embedding read-out, the final output) are `jax.vmap`ped, so parameters, optimiser states,
    decision maps, network inputs and PRNG keys carry a leading scene axis; with several local devices
    the scene axis is split over a `Mesh(('scenes',))` with `jax.shard_map`, each device vmapping its
    block. With per-scene weights every convolution becomes a grouped one: the right choice on GPU/TPU,
    slow on XLA:CPU.
  * 'shard': device-parallel: `jax.shard_map` over the local devices, one scene per device per group,
    each device running the single-scene step (straight-line code; on CPU host devices this is how the
    second core gets used). Groups of `num_devices` scenes run one after the other.
  * 'loop': a Python loop of single-scene runs (`fusion.fuse`), the reference.
  * 'auto': a short measured probe of the main step per (backend, device count, shape) picks the
    fastest of the above in scene-steps per second; the choice is remembered in a small JSON file next
    to the compilation cache (`probe_cache`), so the probe runs once per shape and machine.

Scenes of different shapes are grouped into buckets of identical shape (N, H, W, C): padding images to
a common size would change every result (the network, DoubleReblur and the losses would all see the
padding), which breaks the rule that a scene's result does not depend on its batch-mates. Within a
bucket, groups have a fixed size; the last group is filled with dummy copies of a real scene (their
results are dropped) rather than compiled again, so there is one compilation per (stage, shape, group
size). The group size is the largest that fits the memory (the per-scene estimate of
`fusion.estimate_memory` against the free memory of each device), capped by `max_scenes_per_step`.

Nothing here writes files or prints; `on_result(index, result_or_error)` is called as soon as each
scene is finished (the CLI writes its outputs and its manifest entry there, so an interrupted batch
loses at most the groups in flight).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dfp_jax import errors
from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import optimize
from dfp_jax import resample
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError, MemoryBudgetError

STRATEGIES = ('auto', 'vmap', 'shard', 'loop')
AXIS = 'scenes'


# ---------------------------------------------------------------------------------------------------
# Group stages: one optimisation stage for G scenes at once.


@dataclasses.dataclass(frozen=True, eq=False)
class GroupStage(optimize.Stage):
  """A single-scene `Stage` applied to a group of scenes (every leaf with a leading scene axis).

  mode 'vmap' vmaps the single-scene step; mode 'unroll' writes one single-scene step per scene of
  the (per-device) block in straight-line code. With `mesh`, the group is split over the mesh's
  'scenes' axis with `jax.shard_map` and each device runs its block.
  """
  base: optimize.Stage | None = None
  mode: str = 'vmap'
  mesh: Mesh | None = None
  traces: collections.Counter | None = None  # Trace counts per program, for the engine's check.

  def step(self, state, problem):
    """One step of every scene; scenes whose problem['active'] is False (converged under the stop
    rule) keep their state, so each scene ends exactly where it would end alone."""
    if self.traces is not None:
      self.traces['step'] += 1  # Runs only while tracing.
    active = problem.get('active') if isinstance(problem, dict) else None
    inner = {k: v for k, v in problem.items() if k != 'active'} if active is not None else problem
    if self.mode == 'vmap':
      new, terms = jax.vmap(self.base.step)(state, inner)
    else:
      g = jax.tree.leaves(state)[0].shape[0]
      outs = [self.base.step(_index(state, i), _index(inner, i)) for i in range(g)]
      new, terms = jax.tree.map(lambda *v: jnp.stack(v), *outs)
    if active is not None:
      new = jax.tree.map(lambda a, b: jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                         new, state)
    return new, terms

  def set_active(self, problem, active):
    flags_ = jnp.asarray(np.asarray(active, bool))
    return dict(problem, active=jax.device_put(flags_, problem['active'].sharding))

  def output_change(self, state, previous):
    current = jax.vmap(functools.partial(optimize.ema_output, self.base))(state)
    diff = jnp.abs(current - previous).reshape(current.shape[0], -1)
    return current, jnp.mean(diff, axis=1)  # One change per scene.

  @functools.cached_property
  def jit_step(self):
    fn = self.step
    if self.mesh is not None:
      fn = _sharded(fn, self.mesh, terms_axis=0)
    return jax.jit(fn, donate_argnums=(0,))

  @functools.cached_property
  def jit_chunk(self):
    def chunk(state, problem, num_active, chunk_size):
      fn = lambda st, pb, na: optimize.run_chunk(self, st, pb, na, chunk_size)  # pylint: disable=unnecessary-lambda-assignment
      if self.mesh is not None:
        fn = _sharded(fn, self.mesh, terms_axis=1)
      return fn(state, problem, num_active)
    return jax.jit(chunk, static_argnames=('chunk_size',), donate_argnums=(0,))


def group_stage(base: optimize.Stage, mode: str, mesh: Mesh | None = None,
                traces: collections.Counter | None = None) -> GroupStage:
  return GroupStage(base.name, base.loss_fn, base.optimizer, base.ema_decay, base.net,
                    base.compiler_options, base=base,
                    mode=mode, mesh=mesh, traces=traces)


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _sharded(fn, mesh: Mesh, terms_axis: int):
  """shard_map of fn(state, problem, *scalars) -> (state, terms): state and problem split on their
  leading scene axis, scalars replicated, terms split on `terms_axis`."""

  def wrapped(state, problem, *rest):
    # PartitionSpecs act as prefixes: one spec covers a whole subtree (no extra trace to learn the
    # output structure).
    in_specs = (P(AXIS), P(AXIS)) + tuple(P() for _ in rest)
    out_specs = (P(AXIS), P(*([None] * terms_axis + [AXIS])))
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)(state, problem, *rest)

  return wrapped


# ---------------------------------------------------------------------------------------------------
# One group of scenes of one shape through the whole pipeline (mirrors `fusion.fuse`).


@functools.partial(jax.jit, static_argnums=1)
def _decision_maps(x, params):
  return jax.vmap(focus.decision_maps, in_axes=(0, None))(x, params)


@functools.partial(jax.jit, static_argnames='config')
def _init_mask(keys, x, raw, config):
  return jax.vmap(functools.partial(fusion.init_mask_state, config=config))(keys, x, raw)


@functools.partial(jax.jit, static_argnames='config')
def _init_main(keys, x, maps, config):
  return jax.vmap(functools.partial(fusion.init_main_state, config=config))(keys, x, maps)


@functools.partial(jax.jit, static_argnames=('config', 'num_inputs'))
def _embedded(states, config, num_inputs):
  return jax.vmap(functools.partial(fusion.embedded_maps, config=config, num_inputs=num_inputs))(states)


@functools.partial(jax.jit, static_argnames=('config', 'channels'))
def _final(states, config, channels):
  fused = jax.vmap(functools.partial(fusion.final_output, config=config, channels=channels))(states)
  return fused, jax.vmap(lambda f: resample.lanczos2_downsample(f, config.scale))(fused)


def _at(value, i):
  return value[i] if isinstance(value, (list, tuple, np.ndarray)) else value


class ProgramCache:
  """Group stages (and so their compiled programs), one per (stage, mode, shape, group size, devices).

  `fuse_batch` makes a fresh one per call; pass the same instance to several calls (a notebook, a
  benchmark) to reuse the compiled programs. `traces` counts how often each program was traced."""

  def __init__(self):
    self.stages: dict = {}
    self.traces: dict = {}

  def get(self, base: optimize.Stage, mode: str, mesh: Mesh | None, shape_key) -> GroupStage:
    key = (base.name, id(base), mode, None if mesh is None else mesh.devices.size, shape_key)
    if key not in self.stages:
      self.traces[key] = collections.Counter()
      self.stages[key] = group_stage(base, mode, mesh, self.traces[key])
    return self.stages[key]


def _place(tree, mesh: Mesh | None):
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def _fuse_group(x, keys, config: FusionConfig, mode: str, mesh: Mesh | None, programs: ProgramCache,
                progress) -> list[fusion.FusionResult]:
  """x [G, N, H, W, C], keys [G] -> G FusionResults (the pipeline of `fusion.fuse`, vmapped)."""
  g, n, h, w, c = x.shape
  shape_key = (g, n, h, w, c)
  t0 = time.perf_counter()
  split = jax.vmap(jax.random.split)(keys)
  k_mask, k_main = split[:, 0], split[:, 1]
  raw = _decision_maps(x, config.doublereblur)
  maps = raw
  history, steps, timings = {}, {}, {}
  if config.mask_iters > 0:
    stage = programs.get(fusion.mask_stage(config, n), mode, mesh, shape_key)
    state, problem = fusion.call_one_off(_init_mask, k_mask, x, raw, config=config)
    state, problem = _place((state, dict(problem, active=jnp.ones(g, bool))), mesh)
    state, report = optimize.run_stage(stage, state, problem, config.mask_iters, config.chunk_size,
                                       progress, loop=config.loop, stop=config.stop_rule('mask'))
    maps = np.asarray(jax.device_get(_embedded(state, config=config, num_inputs=n)))  # Small.
    history['mask'] = report.history
    steps['mask'] = report.stopped_at
    timings.update(mask_s=report.seconds, mask_compile_s=report.compile_seconds,
                   mask_steps_per_s=report.steps_per_second, mask_steps=report.steps)
  stage = programs.get(fusion.main_stage(config, c), mode, mesh, shape_key)
  state, problem = fusion.call_one_off(_init_main, k_main, x, maps, config=config)
  state, problem = _place((state, dict(problem, active=jnp.ones(g, bool))), mesh)
  state, report = optimize.run_stage(stage, state, problem, config.iters, config.chunk_size, progress,
                                     loop=config.loop, stop=config.stop_rule('main'))
  history['main'] = report.history
  steps['main'] = report.stopped_at
  timings.update(main_s=report.seconds, main_compile_s=report.compile_seconds,
                 main_steps_per_s=report.steps_per_second, main_steps=report.steps)
  fused, fused_lr = _final(state, config=config, channels=c)  # Follows the state's sharding.
  timings['total_s'] = time.perf_counter() - t0
  fused, fused_lr, raw, maps, z = jax.device_get((fused, fused_lr, raw, maps, problem['z']))
  results = []
  for i in range(g):
    # Each scene's own history: its steps until the stop rule froze it.
    hist = {st: {k: np.asarray(v)[:int(_at(steps[st], i)), i] for k, v in terms.items()}
            for st, terms in history.items()}
    own = {f'{st}_steps': int(_at(steps[st], i)) for st in steps}
    results.append(fusion.FusionResult(fused[i], fused_lr[i], raw[i], maps[i], z[i], hist,
                                       dict(timings, group_size=g, **own)))
  return results


# ---------------------------------------------------------------------------------------------------
# Planning: buckets, group sizes, strategy.


class BatchError(NamedTuple):
  """The result slot of a scene that could not be fused: the reason, for the manifest."""
  message: str


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def _vmap_group(num_scenes: int, cap: int, num_devices: int) -> int:
  """vmap group size: all the bucket's scenes if they fit (cap), rounded up to a multiple of the device
  count (dummies fill it) when the cap allows, so every device gets the same block."""
  g = max(1, min(num_scenes, cap))
  if num_devices > 1 and cap >= num_devices:
    g = min(-(-g // num_devices) * num_devices, (cap // num_devices) * num_devices)
  return g


def _devices(devices=None) -> list:
  return list(devices) if devices is not None else jax.local_devices()


def make_mesh(devices=None) -> Mesh | None:
  """A one-axis ('scenes') mesh over the local devices, or None for a single device."""
  devs = _devices(devices)
  return Mesh(np.asarray(devs), (AXIS,)) if len(devs) > 1 else None


def scenes_that_fit(h: int, w: int, n: int, c: int, config: FusionConfig, devices=None,
                    available: int | None = None, headroom: float = 0.9) -> int:
  """How many scenes of this shape fit in memory at once (over all `devices`; 0 if not even one).

  Host (CPU) devices share the host memory; accelerators each have their own.
  """
  devs = _devices(devices)
  est = fusion.estimate_memory(h, w, n, c, config)
  per_scene = est['host_peak'] if devs[0].platform == 'cpu' else est['peak']
  if devs[0].platform == 'cpu':
    avail = available if available is not None else fusion.available_memory(devs[0])
    return 10 ** 6 if avail is None else int(headroom * avail // per_scene)
  total = 0
  for d in devs:
    avail = available if available is not None else fusion.available_memory(d)
    total += 10 ** 6 if avail is None else int(headroom * avail // per_scene)
  return total


def _probe_cache_path() -> str:
  base = os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache'))
  return os.path.join(base, 'dfp_jax', 'batch_probe.json')


def probe_key(shape, config: FusionConfig, devices) -> str:
  """What the strategy probe's result depends on: the machine, the shapes and the settings that change
  the main step's cost (the whole image-net configuration, its input's width, the XLA:CPU kernels, the
  output form). Loss weights, step counts and the EMA change values, not the program's cost."""
  devs = _devices(devices)
  return json.dumps([jax.__version__, devs[0].platform, devs[0].device_kind, len(devs), list(shape),
                     config.scale, config.compute_dtype, config.loop, config.cpu_conv, config.output_base,
                     config.input_type, config.noise_channels, dataclasses.asdict(config.image_net)],
                    default=list)


def probe_strategy(x, keys, config: FusionConfig, devices=None, group: int = 1, steps: int = 3,
                   cache_path: str | None = '', allow_shard: bool = True) -> tuple[str, dict]:
  """Measures the main step of each strategy on these scenes; returns (fastest, {strategy: scene
  steps per second}). `group` scenes (at most) are used for vmap; 'vmap_per_device' is vmap with one
  scene per device per group (measured faster than both the loop and shard on 2 CPU devices at 64x64). With cache_path ('' = the default
  file, None = no cache) a previous measurement for the same key is reused."""
  devs = _devices(devices)
  g_all, n, h, w, c = x.shape
  key = probe_key((n, h, w, c, group, allow_shard), config, devs)
  if cache_path == '':
    cache_path = _probe_cache_path()
  cache = {}
  if cache_path and os.path.exists(cache_path):
    try:
      with open(cache_path) as f:
        cache = json.load(f)
    except (OSError, ValueError):
      cache = {}
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
  devs = _devices(devices)
  if strategy == 'loop':
    mode, mesh, g = 'unroll', None, 1
  elif strategy == 'shard':
    mode, mesh, g = 'unroll', make_mesh(devs), len(devs)
  else:
    mesh = make_mesh(devs) if len(devs) > 1 and group % len(devs) == 0 else None
    mode, g = 'vmap', group
  n, h, w, c = x.shape[1:]
  idx = np.arange(g) % x.shape[0]
  xs = x[idx]
  split = jax.vmap(jax.random.split)(keys[idx])
  maps = _decision_maps(xs, config.doublereblur)
  state, problem = _place(fusion.call_one_off(_init_main, split[:, 1], xs, maps, config=config), mesh)
  stage = group_stage(fusion.main_stage(config, c), mode, mesh)
  loop = optimize.resolve_loop(config.loop)
  run, compile_s = optimize.compile_chunk(stage, state, problem, steps, loop)
  memory = None
  try:
    ma = run.executable.memory_analysis()
    memory = int(ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes -
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
          'group': g, 'memory_bytes': memory}


# ---------------------------------------------------------------------------------------------------
# The entry point.


@dataclasses.dataclass
class BatchReport:
  """What fuse_batch decided and measured."""
  buckets: list = dataclasses.field(default_factory=list)  # One dict per bucket.
  seconds: float = 0.0
  scene_iterations: int = 0
  traces: dict = dataclasses.field(default_factory=dict)  # Program -> times traced (1 each).

  @property
  def scene_iters_per_s(self) -> float:
    return self.scene_iterations / self.seconds if self.seconds > 0 else float('nan')


def fuse_batch(scenes: Sequence, config: FusionConfig = FusionConfig(), keys=None,
               strategy: str = 'auto', max_scenes_per_step: int | None = None, devices=None,
               progress: optimize.ProgressFn | None = optimize.log_progress,
               on_result: Callable[[int, Any], None] | None = None,
               names: Sequence[str] | None = None, probe_cache: str | None = '',
               check_memory: bool = True,
               programs: ProgramCache | None = None) -> tuple[list, BatchReport]:
  """Fuses many independent scenes; each result equals `fusion.fuse` of that scene alone.

  Args:
    scenes: sequence of scenes, each a sequence of N >= 2 images [H, W, C] in [0, 1] (N, sizes and
      channels may differ between scenes).
    config: one FusionConfig for all scenes.
    keys: one PRNG key per scene (default: `jax.random.key(0)` for each, as `fuse` uses alone).
    strategy: 'auto', 'vmap', 'shard' or 'loop' (see the module docstring).
    max_scenes_per_step: cap on the scenes optimised at once (default: as many as fit in memory).
    devices: the devices to use (default: all local devices of this process).
    progress: per-chunk progress callback of the optimisation (None for silence).
    on_result: called with (scene index, FusionResult or BatchError) as each scene finishes.
    names: scene names for messages.
    probe_cache: file remembering the 'auto' probe ('' = default location, None = do not remember).
    check_memory: refuse (as a failed scene) shapes whose single-scene estimate does not fit.
    programs: a ProgramCache shared between calls (default: a fresh one).

  Returns:
    (results, report): results[i] is a FusionResult or a BatchError for scene i.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f'strategy must be one of {", ".join(STRATEGIES)}, got {strategy!r}')
  devs = _devices(devices)
  names = list(names) if names is not None else [f'scene {i}' for i in range(len(scenes))]
  if keys is None:
    keys = [jax.random.key(0)] * len(scenes)
  results: list = [None] * len(scenes)
  report = BatchReport()
  t_start = time.perf_counter()

  def finish(i, value, strategy=None):
    if strategy is not None and not isinstance(value, BatchError):
      value.timings['strategy'] = strategy  # Which program made it: strategies differ in rounding.
    results[i] = value
    if on_result is not None:
      on_result(i, value)

  # Validate and bucket by exact shape.
  buckets: dict = collections.OrderedDict()
  for i, images in enumerate(scenes):
    try:
      x = np.asarray(fusion.validate_images(list(images), config,
                                            [f'{names[i]}: input {j}' for j in range(len(images))]))
    except InputError as e:
      finish(i, BatchError(str(e)))
      continue
    buckets.setdefault(tuple(x.shape), []).append((i, x))

  programs = programs if programs is not None else ProgramCache()
  for shape, members in buckets.items():
    n, h, w, c = shape
    fit = scenes_that_fit(h, w, n, c, config, devs) if check_memory else 10 ** 6
    if fit < 1:
      est = fusion.estimate_memory(h, w, n, c, config)['peak']
      for i, _ in members:
        finish(i, BatchError(f'{names[i]}: {h}x{w} at x{config.scale} needs about {errors.format_bytes(est)}, '
                             'more than is free on one device'))
      continue
    x_all = np.stack([x for _, x in members])  # Host memory: groups go to the device one at a time.
    k_all = jnp.stack([keys[i] for i, _ in members])
    chosen = strategy
    rates = None
    cap = min(fit, max_scenes_per_step or 10 ** 6)
    if strategy == 'auto':
      if len(members) == 1:
        chosen = 'loop'
      else:
        chosen, rates = probe_strategy(x_all, k_all, config, devs,
                                       group=_vmap_group(len(members), cap, len(devs)),
                                       cache_path=probe_cache, allow_shard=cap >= len(devs))
    per_device = chosen == 'vmap_per_device'
    if per_device:
      chosen = 'vmap'
    if chosen == 'shard' and (len(devs) == 1 or cap < len(devs)):
      chosen = 'loop'  # One device (or memory for fewer scenes than devices): the loop.
    if chosen == 'loop':
      g, mode, mesh = 1, None, None
    elif chosen == 'shard':
      g, mode, mesh = len(devs), 'unroll', make_mesh(devs)
    else:
      g = len(devs) if per_device else _vmap_group(len(members), cap, len(devs))
      mode, mesh = 'vmap', make_mesh(devs) if (len(devs) > 1 and g % len(devs) == 0) else None
    bucket_info = {'shape': list(shape), 'scenes': len(members), 'strategy': chosen, 'group_size': g,
                   'devices': len(devs) if mesh is not None else 1, 'probe': rates}
    report.buckets.append(bucket_info)
    logging.info('bucket %s: %d scene(s), strategy %s, %d per group', 'x'.join(map(str, shape)),
                 len(members), chosen, g)
    for start in range(0, len(members), g):
      part = members[start:start + g]
      if chosen == 'loop':
        i, x = part[0]
        try:
          res = fusion.fuse(list(x), config=config, key=keys[i], progress=progress,
                            names=[f'{names[i]}: input {j}' for j in range(n)])
        except (InputError, MemoryBudgetError, optimize.NonFiniteLossError) as e:
          finish(i, BatchError(f'{names[i]}: {e}'))
          continue
        except Exception as e:  # pylint: disable=broad-except
          if not _is_oom(e):
            raise
          finish(i, BatchError(f'{names[i]}: out of memory for one scene of {h}x{w} '
                               f'({type(e).__name__}); crop or downsample it'))
          continue
        finish(i, res, 'loop')
        continue
      idx = [start + j for j in range(len(part))]
      idx += [idx[0]] * (g - len(part))  # Dummy copies fill the last group: no new compilation.
      try:
        group_results = _fuse_group(x_all[np.asarray(idx)], k_all[np.asarray(idx)], config, mode, mesh,
                                    programs, progress)
      except Exception as e:  # pylint: disable=broad-except
        if not isinstance(e, optimize.NonFiniteLossError):
          if not _is_oom(e):
            raise
          for i, _ in part:  # The estimate was too optimistic for this group: say what to do.
            finish(i, BatchError(f'{names[i]}: out of memory with {g} scenes of {h}x{w} per step '
                                 f'({type(e).__name__}); rerun with --max_scenes_per_step={max(1, g // 2)}'))
          continue
        if len(part) == 1:
          finish(part[0][0], BatchError(f'{names[part[0][0]]}: {e}'))
          continue
        # Find which scene diverged: redo them one by one (rare).
        for i, x in part:
          try:
            finish(i, fusion.fuse(list(x), config=config, key=keys[i], progress=progress), 'loop')
          except optimize.NonFiniteLossError as e1:
            finish(i, BatchError(f'{names[i]}: {e1}'))
        continue
      for (i, _), res in zip(part, group_results):
        finish(i, res, chosen)
  report.seconds = time.perf_counter() - t_start
  report.scene_iterations = sum(int(r.timings.get('mask_steps', 0)) + int(r.timings.get('main_steps', 0))
                                for r in results if isinstance(r, fusion.FusionResult))
  report.traces = {str(k): dict(v) for k, v in programs.traces.items()}
  for k, v in programs.traces.items():
    if v['step'] > 1:  # A performance bug, not a wrong result: say so, keep the results.
      logging.warning('batch program %s was traced %d times (expected once)', k, v['step'])
  return results, report
