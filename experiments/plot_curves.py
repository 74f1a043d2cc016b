"""Overlays the PSNR-per-step curves of several `bench_scene.py` JSON files, one panel per scene.

  python experiments/plot_curves.py --json=a.json,b.json --labels=none,map_fusion --out=curves.png

Each curve is the fixed run's PSNR of the result (EMA) against the ground truth every window; a
vertical line of the curve's colour shows where `--stop=auto` ends on that trajectory.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from dfp_jax import image_io
from dfp_jax import viz

flags.DEFINE_list('json', None, 'bench_scene.py JSON files.', required=True)
flags.DEFINE_list('labels', None, 'One label per file (default: the file names).')
flags.DEFINE_string('out', None, 'PNG to write.', required=True)
FLAGS = flags.FLAGS

def panel(scene: str, curves: list, labels: list) -> np.ndarray:
  """One scene's curves (`viz.line_plot`); the vertical line of each colour is where its stop ends."""
  series, marks = {}, {}
  for c, label in zip(curves, labels):
    rows = c['fixed_curve']
    name = f'{label} {rows[-1]["psnr"]:.2f}'  # The legend: label and final PSNR.
    series[name] = ([p['step'] for p in rows], [p['psnr'] for p in rows])
    marks[name] = c.get('stop_at')
  return viz.line_plot(series, f'{scene}: PSNR (dB) vs main step; lines: --stop=auto ends',
                       xlabel='main step', marks=marks, width=620, height=340)


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
  image_io.write_image(FLAGS.out, np.concatenate(panels, axis=1))  # uint8 RGB.
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
