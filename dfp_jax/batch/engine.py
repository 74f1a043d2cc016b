"""Running a batch: `fuse_batch` fuses every scene exactly as `fusion.fuse` would fuse it alone.

Same per-scene PRNG key, same configuration, one `FusionResult` per scene; only how the scene axis is
executed differs (the plan of `batch.plan`, the programs of `batch.programs`). Results are handed to
`on_result(index, result_or_error)` as soon as each scene is finished, so a caller that writes them
(the application's batch job) loses at most the groups in flight when interrupted. Nothing here writes
files or prints.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import memory
from dfp_jax import optimize
from dfp_jax.batch import plan
from dfp_jax.batch import programs as programs_lib
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError, MemoryBudgetError


class BatchError(NamedTuple):
  """The result slot of a scene that could not be fused: the reason, for the manifest."""
  message: str


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()



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
               programs: programs_lib.ProgramCache | None = None,
               valids: Sequence | None = None, maps: Sequence | None = None) -> tuple[list, BatchReport]:
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
    valids: optional per-scene [N, H, W] masks of where each input covers the scene (registration;
      None for a scene whose inputs cover it whole), as `fusion.fuse`'s `valid`.
    maps: optional per-scene [N, H, W] decision maps to use instead of computing them (`fuse`'s `maps`).

  Returns:
    (results, report): results[i] is a FusionResult or a BatchError for scene i.
  """
  if strategy not in plan.STRATEGIES:
    raise ValueError(f'strategy must be one of {", ".join(STRATEGIES)}, got {strategy!r}')
  devs = programs_lib.devices_of(devices)
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

  buckets, refused = plan.bucket_scenes(scenes, config, names, valids, maps)
  for i, message in refused.items():
    finish(i, BatchError(message))
  cache = programs if programs is not None else programs_lib.ProgramCache()
  for bucket in buckets:
    n, h, w, c = bucket.shape
    fit = plan.scenes_that_fit(h, w, n, c, config, devs) if check_memory else 10 ** 6
    if fit < 1:
      est = memory.estimate_memory(h, w, n, c, config)['peak']
      for i in bucket.indices:
        finish(i, BatchError(f'{names[i]}: {h}x{w} at x{config.scale} needs about {errors.format_bytes(est)}, '
                             'more than is free on one device'))
      continue
    members = list(zip(bucket.indices, bucket.x))
    x_all = bucket.x  # Host memory: groups go to the device one at a time.
    v_all, m_all = bucket.valid, bucket.maps  # [S, N, H, W] or None.
    mask_of = lambda k: None if v_all is None else v_all[k]  # pylint: disable=unnecessary-lambda-assignment
    maps_of = lambda k: None if m_all is None else m_all[k]  # pylint: disable=unnecessary-lambda-assignment
    k_all = jnp.stack([keys[i] for i in bucket.indices])
    bp = plan.plan_bucket(bucket, k_all, config, strategy, min(fit, max_scenes_per_step or 10 ** 6), devs,
                          probe_cache)
    chosen, g, mode, mesh = bp.strategy, bp.group_size, bp.mode, bp.mesh
    report.buckets.append(bp.info(bucket))
    logging.info('bucket %s: %d scene(s), strategy %s, %d per group', 'x'.join(map(str, bucket.shape)),
                 len(members), chosen, g)
    for start in range(0, len(members), g):
      part = members[start:start + g]
      if chosen == 'loop':
        i, x = part[0]
        try:
          res = fusion.fuse(list(x), config=config, key=keys[i], progress=progress,
                            names=[f'{names[i]}: input {j}' for j in range(n)], valid=mask_of(start),
                            maps=maps_of(start))
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
        group_results = programs_lib.fuse_group(
            x_all[np.asarray(idx)], k_all[np.asarray(idx)], config, mode, mesh, cache, progress,
            None if v_all is None else v_all[np.asarray(idx)], None if m_all is None else m_all[np.asarray(idx)])
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
        for k, (i, x) in enumerate(part):
          try:
            finish(i, fusion.fuse(list(x), config=config, key=keys[i], progress=progress,
                                  valid=mask_of(start + k), maps=maps_of(start + k)), 'loop')
          except optimize.NonFiniteLossError as e1:
            finish(i, BatchError(f'{names[i]}: {e1}'))
        continue
      for (i, _), res in zip(part, group_results):
        finish(i, res, chosen)
  report.seconds = time.perf_counter() - t_start
  report.scene_iterations = sum(int(r.timings.get('mask_steps', 0)) + int(r.timings.get('main_steps', 0))
                                for r in results if isinstance(r, fusion.FusionResult))
  report.traces = {str(k): dict(v) for k, v in cache.traces.items()}
  for k, v in cache.traces.items():
    if v['step'] > 1:  # A performance bug, not a wrong result: say so, keep the results.
      logging.warning('batch program %s was traced %d times (expected once)', k, v['step'])
  return results, report
