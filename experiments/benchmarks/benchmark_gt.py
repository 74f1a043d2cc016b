"""Scored DFP case with a true all-in-focus answer, built from a light field (HCI naming).

Protocol: shift-and-add the views of `--lightfield` at N focal planes (a near and a far one for N = 2;
chosen automatically to cover the scene's depth, or given with --disparities) to get N refocused images
with real synthetic-aperture defocus; downsample them by the scale (area averaging) to make the
low-resolution inputs; fuse them; compare with the centre view (a pinhole rendering, all in focus).
Methods, on the same inputs: DFP; the bicubic upsampling of the average of the inputs; the bicubic
upsampling of the Laplacian-pyramid fusion (Burt & Adelson, max-abs detail, `baselines`); the bicubic
upsampling of the fusion by the DoubleReblur maps alone (the maps DFP starts from, `--doublereblur_rule`);
the same with the papers' threshold rule when DFP uses another (`decision_map_threshold+bicubic`, for
reference) and, for N > 2, with the kd box window of the argmax rule (`decision_map_box+bicubic`, the
rule before `--doublereblur_argmax_sigma`); the best single slice (bicubic).

  python -m experiments.benchmarks.benchmark_gt --lightfield=../shared/data/lightfield/hci_dino_33views \
      --scales=1,2 --json=outputs/benchmark_gt.json

Prints a markdown table (PSNR in dB / SSIM, RGB) and writes JSON rows plus per-case images and a
contact sheet under --bench_dir. Any light-field folder in HCI naming (or with a views.json) works. The
configuration flags are dfp-jax's (docs/cli.md); --scale is set per case from --scales.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import baselines
from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import viz
from dfp_jax.app import flags as app_flags
from dfp_jax.app import runtime
from experiments import common

FLAGS = flags.FLAGS
common.define_lightfield_flag()
flags.DEFINE_list('scales', ['1', '2'], 'Scales to score.')
flags.DEFINE_list('num_planes', ['2'], 'Focal-stack sizes N to score.')
flags.DEFINE_list('disparities', [], 'Explicit focal planes (pixels per view step); default: automatic.')
flags.DEFINE_list('gt_crop', ['128', '128', '256', '256'], 'y,x,h,w region of the views to score '
                  '(keeps CPU runs short); empty for the whole view.')
flags.DEFINE_float('aperture', lightfield.LightFieldConfig.aperture, 'Synthetic aperture radius in view '
                   'steps (as dfp-jax --aperture).')
flags.DEFINE_string('json', None, 'Write the result rows as JSON here.')
flags.DEFINE_string('bench_dir', 'outputs/benchmark_gt', 'Folder for the per-case images.')
common.define_flags()


def print_table(rows) -> None:
  header = '| case | method | PSNR (dB) | SSIM | PSNR_Y | SSIM_Y |'
  lines = [header, '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['case']} | {r['method']} | {r['PSNR']:.2f} | {r['SSIM']:.4f} | "
                 f"{r['PSNR_Y']:.2f} | {r['SSIM_Y']:.4f} |")
  print('\n'.join(lines))
  for case in sorted({r['case'] for r in rows}):
    sub = {r['method']: r for r in rows if r['case'] == case}
    others = [m for m in sub if m != 'dfp']
    beats = all(sub['dfp']['PSNR'] > sub[m]['PSNR'] and sub['dfp']['SSIM'] > sub[m]['SSIM'] for m in others)
    print(f'{case}: DFP beats {", ".join(others)} on PSNR and SSIM: {"yes" if beats else "NO"}')


def write_json(config, crop, rows, complete: bool) -> None:
  """Writes the rows so far (atomically); `complete` is False while cases are still to come."""
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'lightfield': os.path.abspath(FLAGS.lightfield), 'crop': crop,
                                     'aperture': FLAGS.aperture, 'seed': FLAGS.seed, 'config': config.to_dict(),
                                     'versions': runtime.versions(), 'backend': jax.default_backend(),
                                     'complete': complete, 'rows': rows})


def main(argv):
  del argv
  common.setup()
  config = app_flags.fusion_config(FLAGS)
  crop = tuple(int(v) for v in FLAGS.gt_crop) if FLAGS.gt_crop else None
  lf = lightfield.load_light_field(FLAGS.lightfield, crop=crop)
  disparities = [float(v) for v in FLAGS.disparities] or None
  rows = []
  os.makedirs(FLAGS.bench_dir, exist_ok=True)
  for n in (int(v) for v in FLAGS.num_planes):
    stack = common.focal_stack(lf, n, disparities, FLAGS.aperture)
    planes = stack.planes
    logging.info('N=%d focal planes %s', n, planes.tolist())
    for s in (int(v) for v in FLAGS.scales):
      lr, gt_s, _ = common.at_scale(stack, lf.center_view, s)
      hh, ww = gt_s.shape[:2]
      cfg = config.replace(scale=s)
      t0 = time.perf_counter()
      result = fusion.fuse(list(lr), config=cfg, key=jax.random.key(FLAGS.seed))
      dfp_s = time.perf_counter() - t0
      raw = jnp.asarray(result.decision_maps_raw)
      outs = {
          'dfp': result.fused,
          'decision_map+bicubic': np.asarray(baselines.upsample(
              baselines.decision_map_fusion(jnp.asarray(lr), raw), s)),
          'average+bicubic': np.asarray(baselines.upsample(baselines.average_fusion(jnp.asarray(lr)), s)),
          'laplacian_pyramid+bicubic': np.asarray(baselines.upsample(
              baselines.laplacian_pyramid_fusion(jnp.asarray(lr)), s)),
      }
      def map_fusion_with(**changes):  # The bicubic of the fusion by maps of other DoubleReblur settings.
        params = dataclasses.replace(cfg.doublereblur, **changes)
        return np.asarray(baselines.upsample(baselines.decision_map_fusion(
            jnp.asarray(lr), focus.decision_maps(jnp.asarray(lr), params)), s))

      if n == 2 and cfg.doublereblur.rule != 'threshold':  # N > 2 always uses the argmax rule.
        outs['decision_map_threshold+bicubic'] = map_fusion_with(rule='threshold')
      if n > 2 and cfg.doublereblur.argmax_sigma > 0:  # The N > 2 rule's kd box window, for reference.
        outs['decision_map_box+bicubic'] = map_fusion_with(argmax_sigma=0.0)
      slices = {i: common.gt_scores(np.asarray(baselines.upsample(jnp.asarray(x), s)), gt_s)
                for i, x in enumerate(lr)}
      best = max(slices, key=lambda i: slices[i]['PSNR'])
      outs['best_slice+bicubic'] = np.asarray(baselines.upsample(jnp.asarray(lr[best]), s))
      case = f'N{n}_x{s}'
      for method, img in outs.items():
        sc = common.gt_scores(img, gt_s)
        rows.append({'case': case, 'num_planes': n, 'scale': s, 'method': method,
                     'planes': planes.tolist(), 'lr_size': list(lr.shape[1:3]), **sc,
                     **({'seconds': dfp_s, 'iters': cfg.iters, 'mask_iters': cfg.mask_iters,
                         'main_steps': result.timings['main_steps'],  # Run (--stop=auto may end early).
                         'mask_steps': result.timings.get('mask_steps', 0)}
                        if method == 'dfp' else {})})
        image_io.write_image(os.path.join(FLAGS.bench_dir, f'{case}_{method.replace("+", "_")}.png'), img)
      sheet = viz.side_by_side(
          [viz.resize_to(viz.to_uint8_rgb(x), hh, ww, nearest=True) for x in lr]
          + [viz.to_uint8_rgb(outs[k]) for k in outs] + [viz.to_uint8_rgb(gt_s)],
          [f'slice d={d:+.2f}' for d in planes] + list(outs) + ['ground truth'])
      image_io.write_image(os.path.join(FLAGS.bench_dir, f'{case}_sheet.png'), sheet)
      print_table([r for r in rows if r['case'] == case])  # Shown as each case ends.
      write_json(config, crop, rows, complete=False)  # An interrupted run keeps its finished cases.
  if len({r['case'] for r in rows}) > 1:
    print_table(rows)
  write_json(config, crop, rows, complete=True)


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main)
