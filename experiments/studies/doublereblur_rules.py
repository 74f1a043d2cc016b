"""DoubleReblur's two-input decision: the papers' threshold rule against the 'compare' rule (no DFP).

For a light field with an all-in-focus centre view (the protocol of `benchmark_gt`, `common.gt_case`:
two slices refocused at automatically chosen planes, scale 1) the script scores each rule's map against the
per-region oracle (the slice with the smaller error against the centre view, error smoothed with a
Gaussian of sigma 4 px) and the fusion by each map against the centre view; for every multi-focus pair
folder of --pairs (two images each, e.g. ../shared/data/mfifb) it reports how much of the image each rule
gives the first input and how far the two maps agree. Writes a contact sheet: inputs, the paper's map,
the compare map (white: the first input is in focus). Both rules use the DoubleReblur parameters of
dfp-jax's --doublereblur flag (docs/cli.md).

  python -m experiments.studies.doublereblur_rules --json=docs/results/doublereblur_rules.json \
      --sheet=docs/results/doublereblur_rules.png
"""

from __future__ import annotations

import dataclasses
import glob
import os

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np
import jax.numpy as jnp

from dfp_jax import baselines
from dfp_jax import focus
from dfp_jax import image_io
from dfp_jax import viz
from dfp_jax.app import flags as app_flags
from experiments import common

FLAGS = flags.FLAGS
common.define_flags(seed=False, compilation_cache=False)  # --doublereblur (the rule is this script's).
common.define_lightfield_flag(' (empty: skip)')
flags.DEFINE_list('gt_crop', ['128', '128', '256', '256'], 'y,x,h,w region of the views.')
flags.DEFINE_string('pairs', '../shared/data/mfifb', 'Folder of two-image pair folders (empty: skip).')
flags.DEFINE_string('json', None, 'Write the rows here.')
flags.DEFINE_string('sheet', None, 'Write the contact sheet here (PNG).')
flags.DEFINE_integer('row_height', 160, 'Height of one row of the sheet.')


def _maps(images: np.ndarray, params: focus.DoubleReblurParams) -> dict:
  return {rule: np.asarray(focus.decision_maps(jnp.asarray(images), dataclasses.replace(params, rule=rule)))
          for rule in ('threshold', 'compare')}


def _row(images, maps, height, extra=()):
  h, w = images.shape[1:3]
  width = max(1, round(w * height / h))
  tiles = [viz.resize_to(viz.to_uint8_rgb(x), height, width) for x in images]
  tiles += [viz.resize_to(viz.to_uint8_rgb(maps[r][0]), height, width, nearest=True)
            for r in ('threshold', 'compare')]
  tiles += [viz.resize_to(viz.to_uint8_rgb(x), height, width, nearest=True) for x in extra]
  return tiles


def main(argv):
  del argv
  params = app_flags.fusion_config(FLAGS).doublereblur
  rows, sheet_rows = [], []
  if FLAGS.lightfield:
    crop = tuple(int(v) for v in FLAGS.gt_crop) if FLAGS.gt_crop else None
    stack, gt, planes = common.gt_case(FLAGS.lightfield, crop)
    err = np.stack([cv2.GaussianBlur(np.mean((x - gt) ** 2, -1).astype(np.float32), (0, 0), 4)
                    for x in stack])
    oracle = (np.argmin(err, axis=0) == 0).astype(np.float32)
    maps = _maps(stack, params)
    name = os.path.basename(os.path.normpath(FLAGS.lightfield))
    for rule, m in maps.items():
      fused = baselines.decision_map_fusion(jnp.asarray(stack), jnp.asarray(m))
      score = common.gt_scores(fused, gt)
      rows.append({'scene': name, 'rule': rule, 'planes': np.asarray(planes).tolist(),
                   'first_input_share': float(m[0].mean()), 'oracle_share': float(oracle.mean()),
                   'agreement_with_oracle': float(np.mean(m[0] == oracle)),
                   'fusion_psnr': float(score['PSNR']), 'fusion_ssim': float(score['SSIM'])})
    oracle_img = np.repeat(oracle[..., None], 3, axis=-1)
    sheet_rows.append((f'{name} (last: per-region oracle)', _row(stack, maps, FLAGS.row_height, [oracle_img])))
  if FLAGS.pairs:
    for folder in sorted(glob.glob(os.path.join(FLAGS.pairs, '*'))):
      files = sorted(glob.glob(os.path.join(folder, '*.*')))
      if len(files) != 2:
        logging.warning('%s: skipped (%d image files; this script takes pairs)', folder, len(files))
        continue
      images, _ = image_io.load_inputs(files)
      images = np.stack(images)
      maps = _maps(images, params)
      for rule, m in maps.items():
        rows.append({'scene': os.path.basename(folder), 'rule': rule, 'first_input_share': float(m[0].mean()),
                     'agreement_between_rules': float(np.mean(maps['threshold'][0] == maps['compare'][0]))})
      sheet_rows.append((os.path.basename(folder), _row(images, maps, FLAGS.row_height)))

  print('| scene | rule | first input\'s share | agreement | map fusion PSNR / SSIM |')
  print('|---|---|---|---|---|')
  for r in rows:
    agree = r.get('agreement_with_oracle', r.get('agreement_between_rules'))
    fusion = f"{r['fusion_psnr']:.2f} / {r['fusion_ssim']:.4f}" if 'fusion_psnr' in r else ''
    print(f"| {r['scene']} | {r['rule']} | {r['first_input_share']:.3f} | {agree:.3f} | {fusion} |")
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'doublereblur': params.as_list(), 'rows': rows})
  if FLAGS.sheet and sheet_rows:
    blocks = []
    for title, tiles in sheet_rows:
      captions = ['first input', 'second input', "papers' threshold rule", 'compare rule', 'oracle'][:len(tiles)]
      blocks.append(viz.label(viz.side_by_side(tiles, captions), title))
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, 6), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    image_io.write_image(FLAGS.sheet, np.concatenate(blocks, axis=0))
  return 0


if __name__ == '__main__':
  app.run(main)
