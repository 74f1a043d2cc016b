"""Overlays the PSNR-per-step curves of several `bench_scene.py` JSON files, one panel per scene.

  python experiments/plot_curves.py --json=a.json,b.json --labels=none,map_fusion --out=curves.png

Each curve is the fixed run's PSNR of the result (EMA) against the ground truth every window; a
marker shows where `--stop=auto` ends on that trajectory.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import cv2
import numpy as np

flags.DEFINE_list('json', None, 'bench_scene.py JSON files.', required=True)
flags.DEFINE_list('labels', None, 'One label per file (default: the file names).')
flags.DEFINE_string('out', None, 'PNG to write.', required=True)
FLAGS = flags.FLAGS

COLOURS = [(200, 80, 0), (0, 140, 0), (0, 0, 200), (140, 0, 140)]  # BGR.


def panel(scene: str, curves: list, labels: list) -> np.ndarray:
  w, h, m = 460, 320, 46
  img = np.full((h, w, 3), 255, np.uint8)
  allp = np.concatenate([[p['psnr'] for p in c['fixed_curve']] for c in curves])
  top = max(p for c in curves for p in [c['fixed_curve'][-1]['psnr']])
  lo, hi = max(np.floor(allp.min()), np.floor(top - 8)), np.ceil(allp.max() + 0.3)
  smax = max(c['fixed_curve'][-1]['step'] for c in curves)

  def xy(s, p):
    p = min(max(p, lo), hi)
    return int(m + (w - m - 10) * s / smax), int(h - m - (h - m - 30) * (p - lo) / (hi - lo))

  cv2.rectangle(img, (m, 30), (w - 10, h - m), (0, 0, 0), 1)
  for k, (c, label) in enumerate(zip(curves, labels)):
    col = COLOURS[k % len(COLOURS)]
    pts = np.array([xy(p['step'], p['psnr']) for p in c['fixed_curve']], np.int32)
    cv2.polylines(img, [pts], False, col, 2, cv2.LINE_AA)
    stop = c.get('stop_at')
    text = f'{label}: {c["fixed_curve"][-1]["psnr"]:.2f} dB'
    if stop:
      psnr = next(p['psnr'] for p in c['fixed_curve'] if p['step'] == stop)
      cv2.circle(img, xy(stop, psnr), 5, col, -1, cv2.LINE_AA)
      text += f', stop {stop}: {psnr:.2f}'
    cv2.putText(img, text, (m + 6, h - m - 12 - 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, col, 1, cv2.LINE_AA)
  cv2.putText(img, f'{scene}: PSNR (dB) vs main step', (m, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
              cv2.LINE_AA)
  for v in (lo, hi):
    cv2.putText(img, f'{v:.0f}', (4, xy(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
  for s in (0, smax // 2, smax):
    cv2.putText(img, str(int(s)), (min(xy(s, lo)[0] - 10, w - 40), h - m + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
  return img


def main(argv):
  del argv
  runs = [json.load(open(p)) for p in FLAGS.json]
  labels = FLAGS.labels or [os.path.basename(p) for p in FLAGS.json]
  if len(labels) != len(runs):
    raise app.UsageError('--labels needs one label per --json file')
  scenes = [r['scene'] for r in runs[0]['results']]
  panels = []
  for scene in scenes:
    curves = [next(r for r in run['results'] if r['scene'] == scene) for run in runs]
    panels.append(panel(scene, curves, labels))
  cv2.imwrite(FLAGS.out, np.concatenate(panels, axis=1))
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
