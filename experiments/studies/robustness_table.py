"""Collects the robustness / ablation runs of `experiments/studies/robustness/robustness.md` into one
table.

  python -m experiments.studies.robustness_table outputs/robustness [--json=PATH]

Reads `<run>/results.json` of every run folder (`experiments.benchmarks.benchmark` output) and prints,
for each run, scene and scale of the `dfp` rows: PSNR, SSIM (where a ground truth exists) and the
papers' relative metrics.
"""

from __future__ import annotations

import json
import os
import sys

COLUMNS = ('PSNR', 'SSIM', 'RMG', 'REI', 'RIE', 'RMGA', 'RECO', 'Qabf')


def collect(root: str) -> list[dict]:
  rows = []
  for run in sorted(os.listdir(root)):
    path = os.path.join(root, run, 'results.json')
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      results = json.load(f)
    for scene, methods in results['scenes'].items():
      for scale, values in methods.get('dfp', {}).items():
        rows.append({'run': run, 'scene': scene, 'scale': scale,
                     **{c: values.get(c) for c in COLUMNS}})
  return rows


def main(argv):
  if len(argv) < 2:
    sys.exit(__doc__)
  rows = collect(argv[1])
  if not rows:
    sys.exit(f'no <run>/results.json with dfp rows under {argv[1]}')
  print('| run | scene | scale | ' + ' | '.join(COLUMNS) + ' |')
  print('|---|---|---|' + '---|' * len(COLUMNS))
  for r in rows:
    cells = ['' if r[c] is None else f'{r[c]:.4f}' if c not in ('PSNR',) else f'{r[c]:.2f}'
             for c in COLUMNS]
    print(f"| {r['run']} | {r['scene']} | {r['scale']} | " + ' | '.join(cells) + ' |')
  for a in argv[2:]:
    if a.startswith('--json='):
      with open(a.split('=', 1)[1], 'w') as f:
        json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main(sys.argv)
