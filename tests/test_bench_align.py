"""`experiments.benchmarks.bench_align`: its accuracy measurement on one tiny synthetic case (a 96 x 96 crop
of the bundled golfer image under one known similarity), its summary, and its table."""

import math
import os

import numpy as np

from dfp_jax import align
from dfp_jax import image_io
from experiments.benchmarks import bench_align

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {'image', 'size', 'warp', 'shift', 'angle_deg', 'magnification', 'sigma', 'method', 'status',
            'error_px', 'max_error_px', 'seconds', 'failed'}
SUMMARY_KEYS = {'runs', 'failures', 'raised', 'median_px', 'p95_px', 'max_px', 'max_corner_px', 'median_s'}


def _crop():
  image, _ = image_io.read_image(os.path.join(ROOT, 'examples', 'lytro_golfer', 'A.png'))
  return image[16:112, 16:112]


def test_render_follows_align_convention():
  """The rendered moving frame satisfies moving(W x) = source(x): warping it back with W (align.warp)
  gives the source again, away from the borders."""
  src = _crop()
  w = align.centred_similarity(src.shape, (2.2, -1.4), 0.8, 0.02)
  moving = bench_align.render(src, w)
  back, mask = align.warp(moving, w, src.shape)
  ref = bench_align.render(src, np.eye(3))
  m = bench_align.crop_margin(w, src.shape)
  sl = np.s_[m:-m, m:-m]
  assert mask[sl].all()
  assert float(np.sqrt(np.mean((back[sl] - ref[sl]) ** 2))) < 0.02
  # Unregistered, the frames differ far more.
  assert float(np.sqrt(np.mean((moving[sl] - ref[sl]) ** 2))) > 0.05


def test_accuracy_row_of_one_known_warp():
  warp = bench_align.Warp('test: 2.8 px, +0.5 deg, +2 %', (2.2, 1.7), 0.5, 0.02)
  rows = bench_align.accuracy_rows('golfer96', _crop(), [warp], [0.0], ['ecc'])
  assert len(rows) == 1
  row = rows[0]
  assert set(row) == ROW_KEYS
  assert row['method'] == 'ecc' and row['status'] == 'ok' and not row['failed']
  assert row['error_px'] < 0.1
  assert row['error_px'] <= row['max_error_px'] < 0.3
  m = bench_align.crop_margin(warp.matrix((96, 96)), (96, 96))
  assert row['size'] == [96 - 2 * m, 96 - 2 * m]
  summary = bench_align.summarize(rows)
  assert set(summary) == SUMMARY_KEYS
  assert summary['runs'] == 1 and summary['failures'] == 0 and summary['median_px'] == row['error_px']


def test_summary_counts_raised_and_large_errors_as_failures():
  base = {'error_px': 0.05, 'max_error_px': 0.1, 'seconds': 0.01, 'failed': False}
  rows = [base, dict(base, error_px=2.0, max_error_px=3.0, failed=True),
          dict(base, error_px=math.nan, max_error_px=math.nan, failed=True)]
  s = bench_align.summarize(rows)
  assert (s['runs'], s['failures'], s['raised']) == (3, 2, 1)
  assert s['max_px'] == 2.0 and s['max_corner_px'] == 3.0
  text = bench_align.tables({'accuracy': {'sources': [{'name': 'x'}], 'warps': [{}], 'sigmas': [0.0],
                                          'fail_px': 1.0, 'summary': {'ecc': s}, 'by_sigma': {'ecc': {'0': s}}}})
  assert '| ecc (align.estimate_transform, default) | 3 | 2 (1 raised) |' in text
