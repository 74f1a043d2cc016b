"""Overlays the PSNR-per-step curves of several `bench_scene` JSON files, one panel per scene, and
tabulates what other stop thresholds would have done on the same trajectories.

  python -m experiments.benchmarks.plot_curves --json=a.json,b.json --labels=none,map_fusion \
      --out=curves.png
  python -m experiments.benchmarks.plot_curves --json=a.json --tols=1e-4,2e-4,4e-4 --tols_json=tols.json

Each curve is the fixed run's PSNR of the result (EMA) against the ground truth every window; a
vertical line of the curve's colour shows where `--stop=auto` ends on that trajectory. `--tols` replays
the stop rule (`FusionConfig.stop_rule('main')`: the window, minimum steps and patience of the
run's own configuration) with each threshold on the recorded changes: where it would end the main stage, and
the PSNR there against the fixed run's last step. No optimisation is re-run.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import numpy as np

from dfp_jax import image_io
from dfp_jax import viz
from dfp_jax.config import FusionConfig

flags.DEFINE_list('json', None, 'bench_scene JSON files.', required=True)
flags.DEFINE_list('labels', None, 'One label per file (default: the file names).')
flags.DEFINE_string('out', None, 'PNG of the curves to write.')
flags.DEFINE_list('tols', [], 'Stop thresholds (--stop_tol values) to replay on the recorded '
                  'trajectories; prints a table.')
flags.DEFINE_string('tols_json', None, 'Write the --tols table here as JSON rows.')
FLAGS = flags.FLAGS
# The run's own stop settings (older files lack some: FusionConfig's defaults then).
STOP_FIELDS = ('stop_window', 'stop_min_iters', 'stop_patience')


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


def replay_tols(run: dict, label: str, tols: list) -> list:
  """One row per (scene, threshold): where the run's stop rule with that threshold ends the main
  stage on the recorded trajectory, and the PSNR there against the trajectory's last step."""
  cfg = run['config']
  rows = []
  for res in run['results']:
    curve = res['fixed_curve']
    changes = [(p['step'], p['change']) for p in curve if 'change' in p]
    for tol in tols:
      rule = FusionConfig(stop_tol=tol, **{k: cfg[k] for k in STOP_FIELDS if k in cfg}).stop_rule('main')
      step = rule.stop_step(changes)
      at = next((p for p in curve if p['step'] == step), curve[-1])
      rows.append({'run': label, 'scene': res['scene'], 'tol': tol, 'stop_step': step,
                   'last_step': curve[-1]['step'], 'psnr_at_stop': at['psnr'],
                   'psnr_last': curve[-1]['psnr'], 'psnr_change': at['psnr'] - curve[-1]['psnr']})
  return rows


def main(argv):
  del argv
  if not FLAGS.out and not FLAGS.tols:
    raise app.UsageError('nothing to do: give --out (the figure) and/or --tols (the table)')
  runs = [json.load(open(p)) for p in FLAGS.json]
  for path, run in zip(FLAGS.json, runs):
    if not (isinstance(run, dict) and 'results' in run and 'config' in run):
      raise app.UsageError(f'{path}: not a bench_scene JSON (it needs "config" and "results")')
  labels = FLAGS.labels or [os.path.basename(p) for p in FLAGS.json]
  if len(labels) != len(runs):
    raise app.UsageError('--labels needs one label per --json file')
  try:
    tols = [float(t) for t in FLAGS.tols]
  except ValueError:
    raise app.UsageError(f'--tols must be numbers, got {",".join(FLAGS.tols)}') from None
  if FLAGS.out:
    scenes = [r['scene'] for r in runs[0]['results']]
    panels = []
    for scene in scenes:
      curves = [next(r for r in run['results'] if r['scene'] == scene) for run in runs]
      panels.append(panel(scene, curves, labels))
    image_io.write_image(FLAGS.out, np.concatenate(panels, axis=1))  # uint8 RGB.
    print(f'wrote {FLAGS.out}')
  if tols:
    rows = [row for run, label in zip(runs, labels) for row in replay_tols(run, label, tols)]
    print('\n| run | scene | --stop_tol | ends at main step | PSNR there | change vs last step |')
    print('|---|---|---|---|---|---|')
    for r in rows:
      end = r['stop_step'] if r['stop_step'] is not None else f'no stop ({r["last_step"]})'
      print(f'| {r["run"]} | {r["scene"]} | {r["tol"]:g} | {end} | {r["psnr_at_stop"]:.2f} | '
            f'{r["psnr_change"]:+.3f} |')
    if FLAGS.tols_json:
      image_io.write_json(FLAGS.tols_json, rows)


if __name__ == '__main__':
  app.run(main)
