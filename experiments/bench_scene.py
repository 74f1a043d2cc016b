"""Whole-scene wall time and quality with and without the convergence stop (--stop=auto vs fixed).

  python experiments/bench_scene.py --json=docs/results/bench_scene_cpu.json --plot=docs/results/stop_curves.png

Scenes: light-field ground-truth cases (the protocol of benchmark_gt.py: two refocused slices at
automatically chosen planes, area-downsampled by the scale, fused, scored against the centre view):
by default two regions of the HCI "dino" scene and the bundled Lytro Illum light field (a real
capture: its centre view is an approximate reference). For each scene:

  * `auto_cold`: fuse with --stop=auto in a fresh process state with an empty persistent compilation
    cache (compiles everything);
  * `auto_warm`: the same again after clearing every in-memory cache, with the persistent cache now
    filled (what a second run of the same shape costs);
  * `fixed`: the full fixed run (500 + 1000 steps), driven window by window so the PSNR of the result
    (EMA) against the ground truth is recorded every window, together with the stop rule's statistic;
    the point where the rule stops on this trajectory is marked on the curve.

Also reported: the reference's full run (500 mask + 2000 main steps at its measured per-step cost,
issue 6's table: 0.135 s and 0.26 s at 128x128 input x2, the middles of its ranges) and the speed-up against it.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import cv2
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import optimize
from dfp_jax import viz
from dfp_jax.config import FusionConfig
from experiments import cli

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCENES = [
    'dino_a=../shared/data/lightfield/hci_dino_33views@128:128:256:256',
    'dino_b=../shared/data/lightfield/hci_dino_33views@256:0:256:256',
    'lytro_2067=../shared/data/lightfield/lytro_illum_2067_center5x5@60:150:256:256',
]
flags.DEFINE_list('scenes', DEFAULT_SCENES, 'name=lightfield_folder@y:x:h:w (crop of the views), comma-separated.')
flags.DEFINE_integer('scale', 2, 'Super-resolution factor.')
flags.DEFINE_integer('iters', 1000, 'Main steps of the fixed run (the maximum for auto).')
flags.DEFINE_integer('mask_iters', 500, 'Mask steps of the fixed run (the maximum for auto).')
flags.DEFINE_float('stop_tol', FusionConfig.stop_tol, 'Stop rule threshold (see --stop_tol of run.py).')
flags.DEFINE_integer('stop_min_iters', FusionConfig.stop_min_iters, 'Stop rule: minimum main steps.')
flags.DEFINE_float('lr', FusionConfig.lr, 'Adam learning rate of the main stage.')
flags.DEFINE_float('mask_lr', FusionConfig.mask_lr, 'Adam learning rate of the decision embedding.')
flags.DEFINE_enum('output_bias', FusionConfig.output_bias, ['mean', 'zero'],
                  'Initial head bias of the image net (see --output_bias of run.py).')
flags.DEFINE_enum('output_base', FusionConfig.output_base, ['map_fusion', 'none'],
                  'Image net output relative to the map fusion or not (see --output_base of run.py).')
flags.DEFINE_bool('timing', True, 'Run the auto_cold / auto_warm timings (else only the fixed curves).')
flags.DEFINE_string('json', None, 'Write the results here.')
flags.DEFINE_string('plot', None, 'Write the PSNR-per-iteration figure here (PNG).')
FLAGS = flags.FLAGS

REFERENCE_STEP_S = {'mask': 0.135, 'main': 0.26}  # Authors' PyTorch, 128x128 input x2, issue 6.


def build_case(spec: str, scale: int):
  name, rest = spec.split('=', 1)
  folder, crop = rest.split('@')
  crop = tuple(int(v) for v in crop.split(':'))
  lf = lightfield.load_light_field(folder, crop=crop)
  gt = np.asarray(lf.center_view)
  planes = np.asarray(lightfield.choose_focal_planes(lf, 2).disparities)
  stack = np.clip(np.asarray(lightfield.focal_stack(lf, jnp.asarray(planes))), 0, 1)
  lr = [cv2.resize(x, (x.shape[1] // scale, x.shape[0] // scale), interpolation=cv2.INTER_AREA)
        for x in stack]
  return name, lr, gt, planes


def psnr(x, gt) -> float:
  return float(metrics.psnr(jnp.asarray(x), jnp.asarray(gt[:x.shape[0], :x.shape[1]])))


def fixed_curve(lr, gt, config: FusionConfig):
  """The fixed run, window by window (the same program and trajectory as fuse(stop='fixed')):
  PSNR of the EMA result and the stop statistic after every window of the main stage."""
  rule = optimize.StopRule(config.stop_tol, config.stop_window, config.stop_min_iters,
                           config.stop_patience)
  x = fusion.validate_images(lr, config)
  c = x.shape[-1]
  k_mask, k_main = jax.random.split(jax.random.key(0))
  raw = fusion.decision_maps_jit(x, config.doublereblur)
  maps, _ = fusion.decision_embedding(k_mask, x, raw, config)
  stage = fusion.main_stage(config, c)
  state, problem = fusion.call_one_off(fusion.init_main_state, k_main, x, maps, config=config)
  rows, previous = [], None
  t0 = time.perf_counter()
  for done in range(rule.window, config.iters + 1, rule.window):
    state, _ = optimize.run_stage(stage, state, problem, rule.window, rule.window, None,
                                  loop=config.loop)
    current, change = stage.jit_output_change(state, previous if previous is not None else
                                              jnp.float32(0))
    out = np.asarray(fusion.final_output(state, config=config, channels=c))
    row = {'step': done, 'psnr': psnr(out, gt), 'seconds': time.perf_counter() - t0}
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
  fusion._one_off_cache.clear()  # pylint: disable=protected-access


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


def flags_config() -> FusionConfig:
  """The FusionConfig of this script's flags (also used by mask_length.py, which shares them)."""
  return FusionConfig(scale=FLAGS.scale, iters=FLAGS.iters, mask_iters=FLAGS.mask_iters,
                      stop_tol=FLAGS.stop_tol, stop_min_iters=FLAGS.stop_min_iters, lr=FLAGS.lr,
                      mask_lr=FLAGS.mask_lr, output_bias=FLAGS.output_bias,
                      output_base=FLAGS.output_base)


def main(argv):
  del argv
  base = flags_config()
  results = []
  with cli.private_compilation_cache('dfp_bench_scene_cache_') as (empty_cache, _):
    for spec in FLAGS.scenes:
      name, lr, gt, planes = build_case(spec, FLAGS.scale)
      res = {'scene': name, 'spec': spec, 'planes': planes.tolist(), 'lr_shape': list(lr[0].shape)}
      if FLAGS.timing:
        # Empty the persistent cache so that this scene's cold run compiles everything even when an
        # earlier scene had the same shapes.
        empty_cache()
        for label in ('auto_cold', 'auto_warm'):
          clear_caches()
          t0 = time.perf_counter()
          r = fusion.fuse(lr, config=base.replace(stop='auto'), progress=None)
          res[label] = {'seconds': time.perf_counter() - t0, 'psnr': psnr(r.fused, gt),
                        'mask_steps': r.timings.get('mask_steps'), 'main_steps': r.timings['main_steps'],
                        'compile_s': r.timings.get('mask_compile_s', 0) + r.timings['main_compile_s']}
          logging.info('%s %s: %s', name, label, res[label])
      clear_caches()
      t0 = time.perf_counter()
      curve, stop_at, out = fixed_curve(lr, gt, base.replace(stop='fixed'))
      res['fixed'] = {'seconds': time.perf_counter() - t0, 'psnr': curve[-1]['psnr'],
                      'mask_steps': base.mask_iters, 'main_steps': base.iters}
      res['fixed_curve'] = curve
      res['stop_at'] = stop_at
      res['psnr_at_stop_on_fixed_trajectory'] = (
          next(p['psnr'] for p in curve if p['step'] == stop_at) if stop_at else None)
      res['reference_full_run_s'] = 500 * REFERENCE_STEP_S['mask'] + 2000 * REFERENCE_STEP_S['main']
      results.append(res)

  print(f'\n| scene | fixed {base.mask_iters}+{base.iters}: PSNR / s | auto (warm): PSNR / s / steps '
        'mask+main | auto cold s | PSNR change | speed-up vs reference full run |')
  print('|---|---|---|---|---|---|')
  for r in results:
    f = r['fixed']
    if 'auto_warm' in r:
      a, c = r['auto_warm'], r['auto_cold']
      print(f'| {r["scene"]} | {f["psnr"]:.2f} / {f["seconds"]:.0f} | {a["psnr"]:.2f} / {a["seconds"]:.0f} / '
            f'{a["mask_steps"]}+{a["main_steps"]} | {c["seconds"]:.0f} | {a["psnr"] - f["psnr"]:+.2f} | '
            f'{r["reference_full_run_s"] / a["seconds"]:.1f}x |')
    else:
      print(f'| {r["scene"]} | {f["psnr"]:.2f} / {f["seconds"]:.0f} | stop at {r["stop_at"]}: '
            f'{r["psnr_at_stop_on_fixed_trajectory"]} | | | |')
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'config': base.to_dict(), 'backend': jax.default_backend(),
                                     'jax': jax.__version__, 'results': results})
  if FLAGS.plot:
    image_io.write_image(FLAGS.plot, curves_figure(results))
  return 0


if __name__ == '__main__':
  app.run(main)
