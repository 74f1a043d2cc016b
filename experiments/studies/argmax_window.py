"""How wide a window the N-input decision rule needs: the fusion by the argmax map against ground truth.

For N > 2 inputs the decision maps are an argmax over per-input DoubleReblur focus measures, each
averaged over a local window (`focus.focus_window`). This script scores that window's choice on a light
field with an all-in-focus centre view (HCI naming): for each region, N and scale it builds the focal
stack as `benchmark_gt` does (`common.focal_stack`: N automatically chosen planes, area downsampling by
the scale), makes the argmax map with each window, fuses the stack by it (no network: the map's own
quality at the input size) and scores the fusion against the centre view downsampled the same way.
Next to the windows, for reference: a ground-truth oracle that picks, per 7 x 7 window, the slice with
the smallest squared error to the truth (not a strict upper bound: a rule can beat it where the best
slice changes within a window).

  python -m experiments.studies.argmax_window --json=docs/results/argmax_window_hci.json \
      --sheet=docs/results/argmax_window_hci.png

Prints a line per case and the mean / worst gain of each window over the first box of --boxes (3 x 3,
the rule before --doublereblur_argmax_sigma); writes JSON rows.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import focus
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import resample
from dfp_jax import viz
from experiments import common

FLAGS = flags.FLAGS
common.define_region_flags()
flags.DEFINE_list('num_planes', ['3', '4', '5'], 'Focal-stack sizes N, each at least 3 (pairs do not use '
                  'the argmax rule).')
flags.DEFINE_list('scales', ['1', '2', '4'], 'Area-downsampling factors (the input size of an x s case).')
flags.DEFINE_list('sigmas', ['1.5', '3', '5'], 'Gaussian window sigmas (pixels at the input size, > 0).')
flags.DEFINE_list('boxes', ['3', '7', '15'], 'Box window sizes kd (argmax_sigma 0); the first is the '
                  'reference the gains are measured from.')
flags.DEFINE_integer('oracle_window', 7, 'Window of the ground-truth oracle selection.')
flags.DEFINE_string('json', None, 'Write the rows as JSON here.')
flags.DEFINE_string('sheet', None, 'Write a picture here: for the first region at the smallest scale, one '
                    'row per N with the index maps of the reference box, of the default window and of the '
                    'oracle, and the truth.')


def windows() -> dict[str, focus.DoubleReblurParams]:
  """name -> parameters of each window to score, the reference box first."""
  try:
    boxes, sigmas = [int(v) for v in FLAGS.boxes], [float(v) for v in FLAGS.sigmas]
  except ValueError:
    raise app.UsageError('--boxes needs integers and --sigmas numbers') from None
  if not boxes or min(boxes) < 1 or any(not sg > 0 for sg in sigmas):
    raise app.UsageError('--boxes needs at least one size >= 1, and every --sigmas value must be > 0')
  out = {f'box {k}': focus.DoubleReblurParams(kd=k, argmax_sigma=0.0) for k in boxes}
  out.update({f'gauss {sg:g}': focus.DoubleReblurParams(argmax_sigma=sg) for sg in sigmas})
  return out


def main(argv):
  del argv
  size = FLAGS.region_size
  cases = windows()
  ref = next(iter(cases))
  if any(int(n) < 3 for n in FLAGS.num_planes):
    raise app.UsageError('--num_planes: every N must be at least 3 (pairs use DoubleReblur\'s own steps)')
  sheet_scale = min(int(v) for v in FLAGS.scales)
  maps_fn = jax.jit(focus.decision_maps, static_argnums=1)
  rows = []
  sheet_rows = []
  default = focus.DoubleReblurParams()
  for y, x in common.parse_corners(FLAGS.regions):
    lf = lightfield.load_light_field(FLAGS.lightfield, crop=(y, x, size, size))
    for n in (int(v) for v in FLAGS.num_planes):
      focal = common.focal_stack(lf, n)
      planes = focal.planes
      for s in (int(v) for v in FLAGS.scales):
        stack, gt_hr, _ = common.at_scale(focal, lf.center_view, s)
        gt = resample.area_downsample(gt_hr, s)  # Scored at the input size: the map's own quality.
        stack_dev = jnp.asarray(stack)  # One host-to-device copy for every map of this case.
        err = np.stack([cv2.blur(e, (FLAGS.oracle_window,) * 2) for e in ((stack - gt) ** 2).mean(-1)])
        oracle = jax.nn.one_hot(err.argmin(0), n, axis=0)
        row = {'region': [y, x, size, size], 'num_planes': n, 'scale': s,
               'planes': np.asarray(planes).tolist(), 'input_size': list(stack.shape[1:3]),
               'psnr': {f'oracle {FLAGS.oracle_window}': common.psnr(baselines.decision_map_fusion(
                   stack_dev, oracle), gt)}}
        maps = {name: maps_fn(stack_dev, params) for name, params in cases.items()}
        for name, m in maps.items():
          row['psnr'][name] = common.psnr(baselines.decision_map_fusion(stack_dev, m), gt)
        rows.append(row)
        if FLAGS.sheet and s == sheet_scale and not any(r['region'] != row['region'] for r in rows):
          index = lambda m: viz.index_map_image(viz.index_map(m), n)
          default_maps = maps.get(f'gauss {default.argmax_sigma:g}')
          if default_maps is None:  # The default window is not among --sigmas.
            default_maps = maps_fn(stack_dev, default)
          tiles = [index(maps[ref]), index(default_maps), index(oracle), gt]
          sheet_rows.append(viz.side_by_side(tiles, [
              f'N={n} x{s}: {ref}', f'Gaussian sigma {default.argmax_sigma:g} (default)',
              f'oracle {FLAGS.oracle_window}x{FLAGS.oracle_window}', 'centre view (truth)']))
        print(f'region {y},{x} N={n} x{s}: ' + '  '.join(f'{k} {v:.2f}' for k, v in row['psnr'].items()),
              flush=True)
  names = list(rows[0]['psnr'])
  lines = ['| scale | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  summary = {}
  for s in sorted({r['scale'] for r in rows}):
    sub = [r for r in rows if r['scale'] == s]
    gains = {k: [r['psnr'][k] - r['psnr'][ref] for r in sub] for k in names}
    summary[s] = {k: {'mean_gain_db': float(np.mean(g)), 'min_gain_db': float(np.min(g))} for k, g in gains.items()}
    lines.append(f'| x{s} ({len(sub)} cases) | ' + ' | '.join(
        f'{np.mean(g):+.2f} (min {np.min(g):+.2f})' for g in gains.values()) + ' |')
  print(f'\nGain over the {ref} window (dB, mean over cases and worst case):')
  print('\n'.join(lines))
  if sheet_rows:
    image_io.write_image(FLAGS.sheet, np.concatenate(sheet_rows, axis=0))
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'lightfield': os.path.abspath(FLAGS.lightfield), 'reference': ref,
                                     'default_argmax_sigma': focus.DoubleReblurParams().argmax_sigma,
                                     'oracle_window': FLAGS.oracle_window, 'rows': rows,
                                     'summary': {str(k): v for k, v in summary.items()}})


if __name__ == '__main__':
  app.run(main)
