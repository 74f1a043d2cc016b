"""Whole-scene wall time and quality with and without the convergence stop (--stop=auto vs fixed).

  python -m experiments.benchmarks.bench_scene --json=docs/results/bench_scene_cpu.json \
      --plot=docs/results/stop_curves.png

Scenes (--scenes): light-field ground-truth cases (`common.gt_case`: two refocused slices at
automatically chosen planes, area-downsampled by --scale, fused, scored against the centre view): by
default two regions of the HCI "dino" scene and the bundled Lytro Illum light field (a real capture:
its centre view is an approximate reference). The configuration flags are dfp-jax's (docs/cli.md);
--stop is set by the script. For each scene:

  * `auto_cold`: fuse with --stop=auto in a fresh process state with an empty persistent compilation
    cache (compiles everything);
  * `auto_warm`: the same again after clearing every in-memory cache, with the persistent cache now
    filled (what a second run of the same shape costs);
  * `fixed`: the full fixed run (--mask_iters + --iters steps), driven window by window so the PSNR of
    the result (EMA) against the ground truth is recorded every window, together with the stop rule's
    statistic; the point where the rule stops on this trajectory is marked on the curve.

Results and their commands: docs/benchmarks.md.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax import viz
from dfp_jax.app import flags as app_flags
from dfp_jax.config import FusionConfig
from experiments import common

common.define_flags(compilation_cache=False)  # A private cache of the run's own (cold / warm).
common.define_scenes_flag()
flags.DEFINE_bool('timing', True, 'Run the auto_cold / auto_warm timings (else only the fixed curves).')
flags.DEFINE_string('json', None, 'Write the results here.')
flags.DEFINE_string('plot', None, 'Write the PSNR-per-iteration figure here (PNG).')
FLAGS = flags.FLAGS


def fixed_curve(lr, gt, config: FusionConfig, key):
  """The fixed run, window by window (the same program and trajectory as fuse(stop='fixed')):
  PSNR of the EMA result and the stop statistic after every window of the main stage."""
  rule = optimize.StopRule(config.stop_tol, config.stop_window, config.stop_min_iters,
                           config.stop_patience)
  stage, state, problem, _, c = common.main_stage_start(lr, config, key)
  rows, previous = [], None
  t0 = time.perf_counter()
  for done in range(rule.window, config.iters + 1, rule.window):
    state, _ = optimize.run_stage(stage, state, problem, rule.window, rule.window, None,
                                  loop=config.loop)
    current, change = stage.jit_output_change(state, previous if previous is not None else
                                              jnp.float32(0))
    out = np.asarray(fusion.final_output(state, config=config, channels=c))
    row = {'step': done, 'psnr': common.psnr(out, gt), 'seconds': time.perf_counter() - t0}
    if previous is not None:
      row['change'] = float(change)
    previous = current
    rows.append(row)
    logging.info('fixed curve: step %d PSNR %.2f change %s', done, row['psnr'], row.get('change'))
  return rows, rule.stop_step([(r['step'], r['change']) for r in rows if 'change' in r]), out


def clear_caches():
  jax.clear_caches()
  fusion.mask_stage.cache_clear()
  fusion.main_stage.cache_clear()
  optimize.clear_one_off_cache()


def curves_figure(results) -> np.ndarray:
  """One panel per scene (`viz.line_plot`): PSNR against main-stage iteration, the stop marked."""
  panels = []
  for r in results:
    curve = r['fixed_curve']
    name = f'fixed run {curve[-1]["psnr"]:.2f}'
    panels.append(viz.line_plot({name: ([p['step'] for p in curve], [p['psnr'] for p in curve])},
                                f'{r["scene"]}: PSNR (dB) vs main step; line: --stop=auto ends',
                                xlabel='main step', marks={name: r.get('stop_at')}, width=620, height=340))
  return np.concatenate(panels, axis=1)  # uint8 RGB.


def main(argv):
  del argv
  common.setup()
  base = app_flags.fusion_config(FLAGS)
  key = jax.random.key(FLAGS.seed)
  results = []
  with common.private_compilation_cache('dfp_bench_scene_cache_') as (empty_cache, _):
    for spec in FLAGS.scenes:
      name, (lr, gt, planes) = common.scene_case(spec, base.scale)
      res = {'scene': name, 'spec': spec, 'planes': planes.tolist(), 'lr_shape': list(lr[0].shape)}
      if FLAGS.timing:
        # Empty the persistent cache so that this scene's cold run compiles everything even when an
        # earlier scene had the same shapes.
        empty_cache()
        for label in ('auto_cold', 'auto_warm'):
          clear_caches()
          t0 = time.perf_counter()
          r = fusion.fuse(lr, config=base.replace(stop='auto'), key=key, progress=None)
          res[label] = {'seconds': time.perf_counter() - t0, 'psnr': common.psnr(r.fused, gt),
                        'mask_steps': r.timings.get('mask_steps'), 'main_steps': r.timings['main_steps'],
                        'compile_s': r.timings.get('mask_compile_s', 0) + r.timings['main_compile_s']}
          logging.info('%s %s: %s', name, label, res[label])
      clear_caches()
      t0 = time.perf_counter()
      curve, stop_at, _ = fixed_curve(lr, gt, base.replace(stop='fixed'), key)
      res['fixed'] = {'seconds': time.perf_counter() - t0, 'psnr': curve[-1]['psnr'],
                      'mask_steps': base.mask_iters, 'main_steps': base.iters}
      res['fixed_curve'] = curve
      res['stop_at'] = stop_at
      res['psnr_at_stop_on_fixed_trajectory'] = (
          next(p['psnr'] for p in curve if p['step'] == stop_at) if stop_at else None)
      results.append(res)

  print(f'\n| scene | fixed {base.mask_iters}+{base.iters}: PSNR / s | auto (warm): PSNR / s / steps '
        'mask+main | auto cold s | PSNR change |')
  print('|---|---|---|---|---|')
  for r in results:
    f = r['fixed']
    if 'auto_warm' in r:
      a, c = r['auto_warm'], r['auto_cold']
      print(f'| {r["scene"]} | {f["psnr"]:.2f} / {f["seconds"]:.0f} | {a["psnr"]:.2f} / {a["seconds"]:.0f} / '
            f'{a["mask_steps"]}+{a["main_steps"]} | {c["seconds"]:.0f} | {a["psnr"] - f["psnr"]:+.2f} |')
    else:
      print(f'| {r["scene"]} | {f["psnr"]:.2f} / {f["seconds"]:.0f} | stop at {r["stop_at"]}: '
            f'{r["psnr_at_stop_on_fixed_trajectory"]} | | |')
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'config': base.to_dict(), 'backend': jax.default_backend(),
                                     'jax': jax.__version__, 'results': results})
  if FLAGS.plot:
    image_io.write_image(FLAGS.plot, curves_figure(results))
  return 0


if __name__ == '__main__':
  app.run(main)
