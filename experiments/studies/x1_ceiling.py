"""How far above the fusion by its decision map a per-pixel selection or convex blend of the same inputs
can go at x1 (ground truth needed).

At x1 DFP's content loss is minimised by the fusion of the inputs by the decision maps
(docs/benchmarks.md section 2a'''), so whether DFP could *beat* that fusion depends on how much better
other decisions about the same inputs can be. This script measures it on a light field with an all-in-focus centre view (HCI
naming): for each region and N it builds the focal stack as `benchmark_gt` does (`common.focal_stack`: N
automatically chosen planes, x1, so no downsampling) and scores against the centre view (the rules are
in `experiments/common.py`, section "Oracles"):

  - `map`: the fusion by the DoubleReblur maps (the library's default rule; `benchmark_gt`'s
    `decision_map+bicubic` at x1);
  - `feather s`: the same maps smoothed by a Gaussian of sigma s and renormalised (a soft-edged blend;
    no ground truth used);
  - `laplacian s`: per pixel, the input with the largest |Laplacian| of luma smoothed by a Gaussian of
    sigma s (the focus cue of DFP's joint-gradient loss, which takes max |Lap| over the inputs, used as a
    selection rule; no ground truth used);
  - `oracle pixel`: per pixel, the input with the smallest RGB error against the truth (an upper bound
    for any per-pixel selection; it also picks noise);
  - `oracle window s`: per pixel, the input whose squared error, smoothed by a Gaussian of sigma s, is
    smallest (what a focus measure that decides per region could reach);
  - `oracle blend`: per pixel, the convex combination of the inputs closest to the truth (an upper bound
    for any per-pixel convex blending of the inputs, soft maps included).

Every `oracle` row uses the truth and is a bound, not a method. The bounds cover per-pixel selections
and convex blends only: an output that combines neighbouring pixels or leaves the inputs' convex hull
(sharpening, deconvolution) is not bounded by them.

  python -m experiments.studies.x1_ceiling --json=docs/results/x1_ceiling_hci.json

Prints a table per case and the mean over cases; writes JSON rows.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import focus
from dfp_jax import image_io
from dfp_jax import lightfield
from experiments import common

FLAGS = flags.FLAGS
common.define_region_flags()
flags.DEFINE_list('num_planes', ['2', '4'], 'Focal-stack sizes N (each at least 2).')
flags.DEFINE_list('feather_sigmas', ['1', '2'], 'Gaussian sigmas of the feathered maps.')
flags.DEFINE_list('window_sigmas', ['1', '2', '4'], 'Gaussian sigmas of the windowed oracle and of the '
                  'Laplacian-energy selection.')
flags.DEFINE_string('json', None, 'Write the rows as JSON here.')


def _floats(name: str, items) -> list[float]:
  try:
    out = [float(v) for v in items]
  except ValueError:
    raise app.UsageError(f'--{name} needs numbers, got {",".join(items)}') from None
  if any(not v > 0 for v in out):
    raise app.UsageError(f'--{name}: every sigma must be > 0')
  return out


def fusions(stack: np.ndarray, gt: np.ndarray, feather_sigmas, window_sigmas) -> dict[str, np.ndarray]:
  maps = np.asarray(focus.decision_maps(jnp.asarray(stack)))
  out = {'map': np.asarray(baselines.decision_map_fusion(jnp.asarray(stack), jnp.asarray(maps)))}
  out.update({f'feather {sg:g}': common.feathered(stack, maps, sg) for sg in feather_sigmas})
  out.update({f'laplacian {sg:g}': common.laplacian_selection(stack, sg) for sg in window_sigmas})
  out['oracle pixel'] = common.oracle_pixel(stack, gt)
  out.update({f'oracle window {sg:g}': common.oracle_window(stack, gt, sg) for sg in window_sigmas})
  out['oracle blend'] = common.oracle_blend(stack, gt)
  return out


def main(argv):
  del argv
  try:
    ns = [int(v) for v in FLAGS.num_planes]
  except ValueError:
    raise app.UsageError(f'--num_planes needs integers, got {",".join(FLAGS.num_planes)}') from None
  if not ns or any(n < 2 for n in ns):
    raise app.UsageError('--num_planes: every N must be at least 2')
  feather_sigmas = _floats('feather_sigmas', FLAGS.feather_sigmas)
  window_sigmas = _floats('window_sigmas', FLAGS.window_sigmas)
  corners = common.parse_corners(FLAGS.regions)
  size = FLAGS.region_size
  rows = []
  for y, x in corners:
    lf = lightfield.load_light_field(FLAGS.lightfield, crop=(y, x, size, size))
    for n in ns:
      stack, gt, planes = common.at_scale(common.focal_stack(lf, n), lf.center_view, 1)
      scores = {}
      for name, img in fusions(stack, gt, feather_sigmas, window_sigmas).items():
        m = common.gt_scores(img, gt)
        scores[name] = {'PSNR': m['PSNR'], 'SSIM': m['SSIM']}
      base = scores['map']['PSNR']
      print(f'region {y}:{x} N={n} planes {[round(float(d), 3) for d in planes]}: ' + ', '.join(
          f'{k} {v["PSNR"]:.2f} ({v["PSNR"] - base:+.2f})' for k, v in scores.items()), flush=True)
      rows.append({'region': [y, x, size, size], 'num_planes': n,
                   'planes': [float(d) for d in planes], 'scores': scores})
  names = list(rows[0]['scores'])
  print('\nPSNR (dB) / SSIM against the centre view at x1, and the gain over `map` (mean over regions):\n')
  print('| N | ' + ' | '.join(names) + ' |')
  print('|---' * (len(names) + 1) + '|')
  summary = {}
  for n in ns:
    sub = [r['scores'] for r in rows if r['num_planes'] == n]
    summary[n] = {k: {'PSNR': float(np.mean([s[k]['PSNR'] for s in sub])),
                      'SSIM': float(np.mean([s[k]['SSIM'] for s in sub])),
                      'gain_db': float(np.mean([s[k]['PSNR'] - s['map']['PSNR'] for s in sub])),
                      'min_gain_db': float(np.min([s[k]['PSNR'] - s['map']['PSNR'] for s in sub]))}
                  for k in names}
    print(f'| {n} ({len(sub)} regions) | ' + ' | '.join(
        f'{v["PSNR"]:.2f} / {v["SSIM"]:.4f} ({v["gain_db"]:+.2f})' for v in summary[n].values()) + ' |')
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'lightfield': os.path.abspath(FLAGS.lightfield),
                                     'doublereblur': focus.DoubleReblurParams().as_list(),
                                     'rows': rows, 'summary': {str(k): v for k, v in summary.items()}})


if __name__ == '__main__':
  app.run(main)
