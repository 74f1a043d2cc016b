"""Stop-rule study (issue 22 section 3): what each convergence stop costs against the fixed run, per case.

For every light field of `--lightfield`, region of `--regions`, scale of `--scales` (N = 2 inputs at
the `--aperture` synthetic aperture; the cases and cached focal stacks of `benchmark_gt`), the fixed run
(--mask_iters steps of the decision embedding, then --iters main steps: the configuration flags are
dfp-jax's, docs/cli.md, with --stop=fixed) is driven window by window (--stop_window steps). After
every window it records the PSNR of the result (the EMA, as `fuse` returns it) against the ground truth
and the statistics a stop rule may look at (never the ground truth): the mean absolute change of the
result since the previous window, and each loss term's mean over the window. One JSON line per case is
appended to --json as it finishes; a rerun skips the cases already there (same configuration).

The candidate rules (`RULES`) are then replayed on the recorded trajectories: where each would have
ended the main stage, and the PSNR there minus the fixed run's last PSNR. The table gives per rule the
worst and mean cost over the cases, how many cases lose more than --budget_db, and the mean and largest
step count. Nothing is re-optimised; `fusion.fuse(stop='auto')` stops where its rule stops on the same
trajectory (the same programs, window by window).

  python -m experiments.studies.stop_rule --json=docs/results/stop_rule.jsonl \
      --table=docs/results/stop_rule.md
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from dfp_jax import optimize
from dfp_jax import resample
from dfp_jax.app import flags as app_flags
from dfp_jax.config import FusionConfig
from experiments import common

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (defined when it runs, so that tests and other scripts import its functions
  without them)."""
  common.define_flags()
  flags.DEFINE_list('lightfield', list(common.HCI_SCENES),
                    'Light-field folders with an all-in-focus centre view.')
  flags.DEFINE_list('regions', ['0:256', '256:0', '128:128'], 'Top-left corners y:x of the regions.')
  flags.DEFINE_integer('region_size', 256, 'Side of each region (view pixels; the output size).')
  flags.DEFINE_list('scales', ['2', '4'], 'Scales.')
  flags.DEFINE_float('aperture', float('inf'), 'Synthetic aperture radius (view steps; inf = all views).')
  flags.DEFINE_integer('num_planes', 2, 'Inputs per case.')
  flags.DEFINE_string('bench_dir', 'outputs/benchmark_gt', 'Folder of the focal-stack cache (stacks/), '
                      'shared with benchmark_gt.')
  flags.DEFINE_string('json', 'outputs/stop_rule.jsonl', 'JSON-lines file of the trajectories (appended).')
  flags.DEFINE_string('table', None, 'Also write the replay table (markdown) here.')
  flags.DEFINE_float('budget_db', 0.1, 'The cost a stop may have against the fixed run (dB).')
  flags.DEFINE_bool('run', True, 'Run the missing cases (else only replay what --json holds).')


# --------------------------------------------------------------------------------------------------
# Candidate rules: functions of one trajectory's rows (step, change, terms), returning the stop step or
# None (runs to the end). Never the ground truth.


def absolute(tol: float, patience: int = 2, min_steps: int = 200):
  """The library's rule (`optimize.StopRule`): change < tol, `patience` checks in a row."""
  rule = optimize.StopRule(tol, 0, min_steps, patience)
  return lambda rows: rule.stop_step([(r['step'], r['change']) for r in rows if 'change' in r])


def relative(fraction: float, patience: int = 2, min_steps: int = 200, reference_step: int = 100):
  """change < fraction x the change at `reference_step` (the scene's own early rate of change)."""
  def rule(rows):
    ref = next((r['change'] for r in rows if 'change' in r and r['step'] >= reference_step), None)
    if ref is None:
      return None
    return optimize.StopRule(fraction * ref, 0, min_steps, patience).stop_step(
        [(r['step'], r['change']) for r in rows if 'change' in r])
  return rule


def library(config: FusionConfig = FusionConfig()):
  """The library's rule for the main stage at the case's scale (`FusionConfig.stop_rule('main')`)."""
  def rule(rows, scale):
    return config.replace(scale=scale).stop_rule('main').stop_step(
        [(x['step'], x['change']) for x in rows if 'change' in x])
  return rule


def any_scale(rule):
  return lambda rows, scale: rule(rows)


RULES = {'library default': library()}
RULES.update({f'abs {t:g} p{p}': any_scale(absolute(t, p)) for t in (5e-5, 1e-4, 1.5e-4, 2e-4)
              for p in (2, 3)})
RULES.update({f'abs {t:g} p2 min{m}': any_scale(absolute(t, 2, m)) for t in (1e-4, 1.5e-4)
              for m in (300, 400)})
RULES.update({f'rel {f:g} p2': any_scale(relative(f)) for f in (0.02, 0.05, 0.1)})


# --------------------------------------------------------------------------------------------------


STOP_FIELDS = ('stop', 'stop_tol', 'stop_window', 'stop_min_iters', 'stop_patience')


def trajectory_digest(config: dict, seed: int, aperture: float, num_planes: int, region_size: int) -> str:
  """What a recorded trajectory depends on: the configuration without its stop fields (every case is
  the fixed run, whatever rule is replayed on it), the seed and the case protocol."""
  config = {k: v for k, v in config.items() if k not in STOP_FIELDS}
  return common.digest(config, seed, aperture, num_planes, region_size)


def read(path: str, digest: str) -> dict:
  """The recorded trajectories of `digest`, by (scene, region, scale)."""
  return {tuple(json.dumps(r[k]) for k in ('scene', 'region', 'scale')): r
          for r in common.read_jsonl(path, digest)}


def replay(cases: list[dict], budget: float) -> list[dict]:
  """Every rule on every trajectory: [{rule, worst, mean, over, mean_steps, max_steps, per_case}]."""
  out = []
  for name, rule in RULES.items():
    costs, steps = [], []
    for case in cases:
      rows = case['trajectory']
      stop = rule(rows, case['scale']) or rows[-1]['step']
      at = next(r for r in rows if r['step'] == stop)
      costs.append(at['psnr'] - rows[-1]['psnr'])
      steps.append(stop)
    costs = np.array(costs)
    out.append({'rule': name, 'worst': float(costs.min()), 'mean': float(costs.mean()),
                'over': int(np.sum(costs < -budget)), 'mean_steps': float(np.mean(steps)),
                'max_steps': int(np.max(steps)), 'per_case': costs.round(4).tolist()})
  return out


def table(cases, replayed, budget) -> str:
  lines = [f'{len(cases)} cases; cost = PSNR where the rule stops - PSNR of the fixed run '
           f'({cases[0]["trajectory"][-1]["step"]} main steps); over = cases losing more than {budget} dB.', '',
           '| rule | worst dB | mean dB | over | mean steps | max steps |', '|---|---|---|---|---|---|']
  for r in replayed:
    lines.append(f'| {r["rule"]} | {r["worst"]:+.3f} | {r["mean"]:+.3f} | {r["over"]} | '
                 f'{r["mean_steps"]:.0f} | {r["max_steps"]} |')
  lines += ['', '| case | fixed PSNR | best PSNR on the way (step) |', '|---|---|---|']
  for c in cases:
    t = c['trajectory']
    best = max(t, key=lambda r: r['psnr'])
    lines.append(f'| {c["scene"]} {c["region"][0]}:{c["region"][1]} x{c["scale"]} | {t[-1]["psnr"]:.2f} | '
                 f'{best["psnr"]:.2f} ({best["step"]}) |')
  return '\n'.join(lines)


def main(argv):
  del argv
  common.setup()
  base = app_flags.fusion_config(FLAGS).replace(stop='fixed')
  digest_config = base.replace(scale=1).to_dict()
  digest = trajectory_digest(digest_config, FLAGS.seed, FLAGS.aperture, FLAGS.num_planes, FLAGS.region_size)
  done = read(FLAGS.json, digest)
  stacks = common.Stacks(os.path.join(FLAGS.bench_dir, 'stacks'), FLAGS.region_size)
  key = jax.random.key(FLAGS.seed)
  ap_label = common.aperture_label(FLAGS.aperture)
  corners = common.parse_corners(FLAGS.regions)
  todo = [(src, r, int(s)) for src in FLAGS.lightfield for r in corners for s in FLAGS.scales]
  todo = [(src, r, s) for src, r, s in todo if FLAGS.run and (
      json.dumps(common.scene_name(src)), json.dumps(list(r)), json.dumps(s)) not in done]
  t_start = time.perf_counter()
  for i, (src, region, s) in enumerate(todo):
    scene = common.scene_name(src)
    slices, gt, planes = stacks.get(scene, src, region, ap_label, FLAGS.aperture, FLAGS.num_planes)
    lr = resample.area_downsample(slices, s)
    rows, _ = common.fixed_trajectory(list(lr), gt, base.replace(scale=s), key)
    rec = {'digest': digest, 'scene': scene, 'region': list(region), 'scale': s, 'aperture': ap_label,
           'planes': np.asarray(planes).tolist(), 'config': digest_config, 'trajectory': rows}
    common.append_jsonl(FLAGS.json, rec)
    done[tuple(json.dumps(x) for x in (scene, list(region), s))] = rec
    elapsed = time.perf_counter() - t_start
    left = len(todo) - i - 1
    logging.info('%s %d:%d x%d: fixed %.2f dB (%d/%d; %s elapsed, about %s left)', scene, *region, s,
                 rows[-1]['psnr'], i + 1, len(todo), optimize.format_seconds(elapsed),
                 optimize.format_seconds(elapsed / (i + 1) * left))
  cases = list(done.values())
  if not cases:
    raise app.UsageError(f'no trajectories in {FLAGS.json} for this configuration')
  text = table(cases, replay(cases, FLAGS.budget_db), FLAGS.budget_db)
  common.write_table(text, FLAGS.table)
  return 0


if __name__ == '__main__':
  define_flags()
  jax.config.parse_flags_with_absl()
  app.run(main)
