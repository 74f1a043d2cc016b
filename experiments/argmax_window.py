"""How wide a window the N-input decision rule needs: the fusion by the argmax map against ground truth.

For N > 2 inputs the decision maps are an argmax over per-input DoubleReblur focus measures, each
averaged over a local window (`focus.focus_window`). This script scores that window's choice on a light
field with an all-in-focus centre view (HCI naming): for each region, N and scale it builds the focal
stack as `benchmark_gt.py` does (shift-and-add at N automatically chosen planes, area downsampling by the
scale), makes the argmax map with each window, fuses the stack by it (no network: the map's own
quality at the input size) and scores the fusion against the centre view downsampled the same way.
Next to the windows: a ground-truth oracle that picks, per 7 x 7 window, the slice closest to the truth
(an upper bound for any selection rule at that granularity).

  python experiments/argmax_window.py --json=docs/results/argmax_window_hci.json \
      --sheet=docs/results/argmax_window_hci.png

Prints a table per case and the mean / worst gain of each window over the kd = 3 box; writes JSON rows.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import focus
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import viz

FLAGS = flags.FLAGS
flags.DEFINE_string('lightfield', '../shared/data/lightfield/hci_dino_33views',
                    'Light-field folder with an all-in-focus centre view (HCI naming or views.json).')
flags.DEFINE_list('regions', ['128:128', '0:0', '256:256', '0:256', '256:0'],
                  'Top-left corners y:x of the square regions scored.')
flags.DEFINE_integer('region_size', 256, 'Side of each region (pixels of the views).')
flags.DEFINE_list('num_planes', ['3', '4', '5'], 'Focal-stack sizes N (N > 2: the argmax rule).')
flags.DEFINE_list('scales', ['1', '2', '4'], 'Area-downsampling factors (the input size of an x s case).')
flags.DEFINE_list('sigmas', ['0', '1.5', '3', '5'], 'Gaussian window sigmas; 0 is the kd x kd box.')
flags.DEFINE_list('boxes', ['3', '7', '15'], 'Box window sizes kd (with sigma 0).')
flags.DEFINE_integer('oracle_window', 7, 'Window of the ground-truth oracle selection.')
flags.DEFINE_string('json', None, 'Write the rows as JSON here.')
flags.DEFINE_string('sheet', None, 'Write a picture here: for the first region at x1, one row per N with '
                    'the index maps of the 3 x 3 box, of the default window and of the oracle, and the truth.')


def regions(items) -> list[tuple[int, int]]:
  try:
    return [tuple(int(v) for v in item.split(':', 1)) for item in items]
  except ValueError:
    raise app.UsageError(f'--regions needs y:x corners, got {",".join(items)}') from None


def area_downsample(image: np.ndarray, s: int) -> np.ndarray:
  if s == 1:
    return image
  h, w = image.shape[:2]
  return cv2.resize(image, (w // s, h // s), interpolation=cv2.INTER_AREA).reshape(h // s, w // s, -1)


def psnr(x, gt) -> float:
  return float(metrics.gt_metrics(jnp.asarray(x), jnp.asarray(gt))['PSNR'])


def windows() -> dict[str, focus.DoubleReblurParams]:
  out = {}
  for k in (int(v) for v in FLAGS.boxes):
    out[f'box {k}'] = focus.DoubleReblurParams(kd=k, argmax_sigma=0.0)
  for sg in (float(v) for v in FLAGS.sigmas if float(v) > 0):
    out[f'gauss {sg:g}'] = focus.DoubleReblurParams(argmax_sigma=sg)
  return out


def main(argv):
  del argv
  size = FLAGS.region_size
  cases = windows()
  maps_fn = jax.jit(focus.decision_maps, static_argnums=1)
  rows = []
  sheet_rows = []
  default = focus.DoubleReblurParams()
  for y, x in regions(FLAGS.regions):
    lf = lightfield.load_light_field(FLAGS.lightfield, crop=(y, x, size, size))
    gt_full = np.asarray(lf.center_view)
    for n in (int(v) for v in FLAGS.num_planes):
      planes = lightfield.choose_focal_planes(lf, n).disparities
      stack_full = np.clip(np.asarray(lightfield.focal_stack(lf, jnp.asarray(planes))), 0, 1)
      for s in (int(v) for v in FLAGS.scales):
        stack = np.stack([area_downsample(v, s) for v in stack_full])
        gt = area_downsample(gt_full, s)
        err = np.stack([cv2.blur(e, (FLAGS.oracle_window,) * 2) for e in ((stack - gt) ** 2).mean(-1)])
        oracle = jax.nn.one_hot(err.argmin(0), n, axis=0)
        row = {'region': [y, x, size, size], 'num_planes': n, 'scale': s,
               'planes': np.asarray(planes).tolist(), 'input_size': list(stack.shape[1:3]),
               'psnr': {f'oracle {FLAGS.oracle_window}': psnr(baselines.decision_map_fusion(
                   jnp.asarray(stack), oracle), gt)}}
        for name, params in cases.items():
          maps = maps_fn(jnp.asarray(stack), params)
          row['psnr'][name] = psnr(baselines.decision_map_fusion(jnp.asarray(stack), maps), gt)
        rows.append(row)
        if FLAGS.sheet and s == 1 and not any(r['region'] != row['region'] for r in rows):
          index = lambda maps: np.asarray(lightfield.index_map_image(lightfield.index_map(maps), n))
          box = maps_fn(jnp.asarray(stack), dataclasses.replace(default, argmax_sigma=0.0))
          tiles = [index(box), index(maps_fn(jnp.asarray(stack), default)), index(oracle), gt]
          sheet_rows.append(viz.side_by_side(tiles, [
              f'N={n}: box {default.kd}x{default.kd}', f'Gaussian sigma {default.argmax_sigma:g} (default)',
              f'oracle {FLAGS.oracle_window}x{FLAGS.oracle_window}', 'centre view (truth)']))
        print(f'region {y},{x} N={n} x{s}: ' + '  '.join(f'{k} {v:.2f}' for k, v in row['psnr'].items()),
              flush=True)
  ref = 'box 3'
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
