"""Convergence study: PSNR against the ground truth per iteration, DFP against plain deep-image-prior SR.

The papers report about 400 iterations for DFP against about 2500 for a plain deep image prior (long
paper, section 5). This script measures both on a light-field case with an all-in-focus reference (the
protocol of `benchmark_gt`, `common.gt_case`: two refocused slices of a region, area-downsampled by
--scale); the configuration flags are dfp-jax's (docs/cli.md), with --stop=fixed:

* DFP: the decision embedding (--mask_iters), then the main stage, scored every --every steps;
* DIP: the "fusion, then DIP" baseline of `benchmark`: the DoubleReblur-map fusion of the same
  low-resolution slices, super-resolved by the same SKIPnet and optimiser with the DIP loss only,
  scored every --every steps up to --dip_iters.

Both results are the EMA of the iterates (as the library returns them); the ground truth is used only to
score. Prints a table (PSNR at chosen steps, and the first step within --within dB of each curve's best)
and writes --json and --plot.

  python -m experiments.studies.convergence --json=docs/results/convergence_dfp_dip_cpu.json \
      --plot=docs/results/convergence_dfp_dip.png
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax import viz
from dfp_jax.app import flags as app_flags
from dfp_jax.config import FusionConfig
from experiments import common

common.define_flags()
flags.DEFINE_string('scene', common.DEFAULT_SCENES[0], 'The light-field case: '
                    'name=lightfield_folder@y:x:h:w (a crop of the views).')
flags.DEFINE_string('json', None, 'Write the curves and the summary here.')
flags.DEFINE_string('plot', None, 'Write the PSNR-per-iteration figure here (PNG).')
flags.DEFINE_integer('dip_iters', 3000, 'DIP steps.')
flags.DEFINE_integer('every', 50, 'Steps between scores.')
flags.DEFINE_float('within', 0.5, 'Report the first step within this many dB of the curve\'s best.')
FLAGS = flags.FLAGS


def _curve(stage, state, problem, total, every, result_fn, gt):
  rows, t0 = [], time.perf_counter()
  for done in range(every, total + 1, every):
    state, _ = optimize.run_stage(stage, state, problem, every, every, None)
    rows.append({'step': done, 'psnr': common.psnr(np.asarray(result_fn(state)), gt),
                 'seconds': time.perf_counter() - t0})
    logging.info('%s step %d PSNR %.2f', stage.name, done, rows[-1]['psnr'])
  return rows


def dfp_curve(lr, gt, config: FusionConfig, every: int, key):
  stage, state, problem, raw, c = common.main_stage_start(lr, config, key)
  return _curve(stage, state, problem, config.iters, every,
                lambda s: fusion.final_output(s, config=config, channels=c), gt), raw


def dip_curve(lr, raw, gt, config: FusionConfig, iters: int, every: int, key):
  fused = baselines.decision_map_fusion(jnp.asarray(lr), raw)
  c = fused.shape[-1]
  stage = baselines.dip_stage(config, c)
  state, problem = optimize.call_one_off(baselines.init_dip_state, key, fused, config=config)
  return _curve(stage, state, problem, iters, every,
                lambda s: jnp.clip(optimize.ema_output(stage, s), 0.0, 1.0), gt)


def first_within(rows, within):
  best = max(r['psnr'] for r in rows)
  return next(r['step'] for r in rows if r['psnr'] >= best - within), best


def main(argv):
  del argv
  common.setup()
  config = app_flags.fusion_config(FLAGS).replace(stop='fixed')
  name, (lr, gt, planes) = common.scene_case(FLAGS.scene, config.scale)
  key = jax.random.key(FLAGS.seed)
  dfp, raw = dfp_curve(lr, gt, config, FLAGS.every, key)
  dip = dip_curve(lr, raw, gt, config, FLAGS.dip_iters, FLAGS.every, key)
  summary = {}
  for method, rows in (('dfp', dfp), ('dip', dip)):
    step, best = first_within(rows, FLAGS.within)
    summary[method] = {'best_psnr': best, 'best_step': max(rows, key=lambda r: r['psnr'])['step'],
                       'final_psnr': rows[-1]['psnr'], f'first_step_within_{FLAGS.within}dB': step}
  lookup = {m: {r['step']: r['psnr'] for r in rows} for m, rows in (('dfp', dfp), ('dip', dip))}
  scored = set(lookup['dfp']) | set(lookup['dip'])
  marks = [m for m in (100, 200, 400, 600, 1000, 1500, 2000, 2500, 3000) if m in scored]
  marks = marks or sorted(scored)[-3:]
  print(f'{name}, x{FLAGS.scale}, PSNR (dB) of the EMA result against the ground truth')
  print('| method | ' + ' | '.join(str(m) for m in marks) + f' | first step within {FLAGS.within} dB of best | best |')
  print('|---|' + '---|' * (len(marks) + 2))
  for m in ('dfp', 'dip'):
    cells = [f'{lookup[m][s]:.2f}' if s in lookup[m] else '' for s in marks]
    sm = summary[m]
    print(f'| {m} | ' + ' | '.join(cells) +
          f" | {sm[f'first_step_within_{FLAGS.within}dB']} | {sm['best_psnr']:.2f} (step {sm['best_step']}) |")
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'scene': FLAGS.scene, 'scale': FLAGS.scale, 'planes': planes.tolist(),
                                     'config': config.to_dict(), 'dfp': dfp, 'dip': dip,
                                     'summary': summary, 'jax': jax.__version__,
                                     'backend': jax.default_backend()})
  if FLAGS.plot:
    series = {'DFP (main stage)': ([r['step'] for r in dfp], [r['psnr'] for r in dfp]),
              'DIP SR of map fusion': ([r['step'] for r in dip], [r['psnr'] for r in dip])}
    marks_at = {'DFP (main stage)': summary['dfp'][f'first_step_within_{FLAGS.within}dB'],
                'DIP SR of map fusion': summary['dip'][f'first_step_within_{FLAGS.within}dB']}
    img = viz.line_plot(series, f'{name} x{FLAGS.scale}: PSNR vs iteration (lines: within '
                        f'{FLAGS.within} dB of best)', ylabel='PSNR (dB)', marks=marks_at)
    image_io.write_image(FLAGS.plot, img)


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main)
