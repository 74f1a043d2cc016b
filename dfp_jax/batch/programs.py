"""The compiled programs of the batch engine: one optimisation stage, and the whole pipeline, for a group
of G same-shape scenes (every array with a leading scene axis).

`GroupStage` wraps a single-scene `optimize.Stage`: mode 'vmap' vmaps its step (per-scene weights make
every convolution a grouped one), mode 'unroll' writes one single-scene step per scene in straight-line
code; with a `Mesh` the group is split over its 'scenes' axis with `jax.shard_map`. `fuse_group` runs
`fusion.fuse`'s pipeline (DoubleReblur, both stages, read-outs) vmapped over the group. `ProgramCache`
keeps one `GroupStage` (and so one compilation) per (stage, mode, shape, group size, devices).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import optimize
from dfp_jax import resample
from dfp_jax.config import FusionConfig

AXIS = 'scenes'


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


@functools.partial(jax.jit, static_argnums=1)
def decision_maps(x, focus_config, valid=None):
  return jax.vmap(lambda xi, vi: focus.decision_maps(xi, focus_config, vi))(x, valid)


@functools.partial(jax.jit, static_argnames='config')
def init_mask(keys, x, raw, config):
  return jax.vmap(functools.partial(fusion.init_mask_state, config=config))(keys, x, raw)


@functools.partial(jax.jit, static_argnames='config')
def init_main(keys, x, maps, valid=None, *, config):
  return jax.vmap(functools.partial(fusion.init_main_state, config=config))(keys, x, maps, valid)


@functools.partial(jax.jit, static_argnames=('config', 'num_inputs'))
def _embedded(states, config, num_inputs):
  return jax.vmap(functools.partial(fusion.embedded_maps, config=config, num_inputs=num_inputs))(states)


@functools.partial(jax.jit, static_argnames=('config', 'channels'))
def _final(states, config, channels):
  fused = jax.vmap(functools.partial(fusion.final_output, config=config, channels=channels))(states)
  return fused, jax.vmap(lambda f: resample.downsample(f, config.scale, config.degradation))(fused)


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


def place(tree, mesh: Mesh | None):
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def fuse_group(x, keys, config: FusionConfig, mode: str, mesh: Mesh | None, cache: ProgramCache,
               progress, valid=None, maps=None) -> list[fusion.FusionResult]:
  """x [G, N, H, W, C], keys [G] -> G FusionResults (the pipeline of `fusion.fuse`, vmapped; `valid`
  [G, N, H, W] as `fuse`'s)."""
  g, n, h, w, c = x.shape
  shape_key = (g, n, h, w, c)
  t0 = time.perf_counter()
  split = jax.vmap(jax.random.split)(keys)
  k_mask, k_main = split[:, 0], split[:, 1]
  if valid is not None:
    valid = jnp.asarray(valid, bool)
  raw = decision_maps(x, config.focus, valid) if maps is None else jnp.asarray(maps, jnp.float32)
  maps = raw
  history, steps, timings = {}, {}, {}
  if config.mask_iters > 0:
    stage = cache.get(fusion.mask_stage(config, n), mode, mesh, shape_key)
    state, problem = optimize.call_one_off(init_mask, k_mask, x, raw, config=config)
    state, problem = place((state, dict(problem, active=jnp.ones(g, bool))), mesh)
    state, report = optimize.run_stage(stage, state, problem, config.mask_iters, config.chunk_size,
                                       progress, loop=config.loop, stop=config.stop_rule('mask'))
    maps = _embedded(state, config=config, num_inputs=n)
    if valid is not None:
      maps = jax.vmap(fusion.restrict_maps)(maps, jax.device_put(valid, maps.sharding))
    maps = np.asarray(jax.device_get(maps))  # Small.
    history['mask'] = report.history
    steps['mask'] = report.stopped_at
    timings.update(mask_s=report.seconds, mask_compile_s=report.compile_seconds,
                   mask_steps_per_s=report.steps_per_second, mask_steps=report.steps)
  stage = cache.get(fusion.main_stage(config, c), mode, mesh, shape_key)
  state, problem = optimize.call_one_off(init_main, k_main, x, maps, valid, config=config)
  state, problem = place((state, dict(problem, active=jnp.ones(g, bool))), mesh)
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


def devices_of(devices=None) -> list:
  return list(devices) if devices is not None else jax.local_devices()


def make_mesh(devices=None) -> Mesh | None:
  """A one-axis ('scenes') mesh over the local devices, or None for a single device."""
  devs = devices_of(devices)
  return Mesh(np.asarray(devs), (AXIS,)) if len(devs) > 1 else None
