"""One optimisation step of dfp_jax against the authors' own PyTorch step, side by side in one run.

  python -m experiments.benchmarks.bench_vs_authors --hr_sizes=256,512 --rounds=3 --reps=10 \
      --authors_python=$HOME/torch-venv/bin/python \
      --authors_repo=/work/.mirror/GuYuanjie+DeepFusionPrior/repo --json=outputs/bench_vs_authors.json

The authors' step is their own code (`net/`, Lanczos-2 downsampler and losses from a snapshot of their
repository kept outside the project), timed on this machine by `../shared/tools/ref_step_bench.py`
(--authors_bench) in the torch venv of --authors_python, with --threads torch threads. Without
--authors_python / --authors_repo their step is not measured: the script says so and reports ours only.

Sizes are output (HR) sizes (--hr_sizes): the main stage runs its network at HR on both sides; our
input is HR / --scale, and the mask stage runs at that LR size on both sides (their bench: HR / 2;
their bench is x2 only, so --scale must be 2 with the authors' flags). Our step is
`bench_step`'s (`step_runs` / `time_chunk`: `fusion.main_stage` / `mask_stage`, the configuration of
dfp-jax's flags, one compiled step dispatched from Python on CPU), with XLA's own thread pool.

The two alternate in --rounds rounds: the authors' bench for all sizes and stages (a child process:
--warmup steps, then --reps timed steps each), then ours for all of them (--reps timed steps each, our
programs compiled and warmed up with --warmup steps before the first round). Each side's figure per
round is its median over the reps; per (stage, HR size) the script reports the median over the rounds
of each side, their ratio authors / ours (how many times faster ours is), the spread across rounds,
the ratio per round, and the load average before and after each half-round. The main stage is the same
network on both sides (1,550,755 parameters; both counts are reported and compared); the mask stage is
not the same work: theirs trains two mask nets, ours one (said in the table). With --prior other than
skipnet (e.g. deep_decoder), our main step with that prior is timed too and reported as its own row,
never in the ratio (the ratio rows use the papers' SKIPnet).

JSON (--json): {'authors_measured', 'authors' (python, repo, bench, threads, header lines of their
bench; null when not measured), 'ours' (backend, device, versions, threads, config), 'hr_sizes',
'scale', 'rounds', 'reps', 'warmup', 'stages', 'round_log' (one entry per half-round: round, side,
loadavg_before, loadavg_after (1, 5, 15 min), seconds), 'rows' (one per (stage, HR size, prior):
stage, hr, lr, prior, in_ratio, note, ours {median, min, max, spread = (max - min) / median, rounds
(per-round medians, s/step)}, ours_params, ours_nets, ours_row (bench_step's row: GFLOP, compile
times, memory; step_s = ours' median), ours_skipnet_over_this (another prior's row only), and in the
ratio rows with the authors' step measured: authors {the same} or authors_error, authors_params,
authors_nets, same_network (main), ratio, ratio_rounds)}. Results and their commands:
docs/benchmarks.md.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
import numpy as np
import jax

from dfp_jax import image_io
from dfp_jax.app import flags as app_flags
from dfp_jax.app import runtime
from experiments import common
from experiments.benchmarks import bench_step

common.define_flags(seed=False, compilation_cache=False)  # A private cache of the run's own.
common.define_authors_flags()
flags.DEFINE_list('hr_sizes', ['256', '512'], 'Output (HR) sizes (square); our input is HR / --scale.')
flags.DEFINE_list('stages', ['main', 'mask'], 'Stages: main, mask.')
flags.DEFINE_integer('rounds', 3, 'Rounds, each the authors\' step for all sizes then ours.')
flags.DEFINE_integer('reps', 10, 'Timed steps per (stage, size) per round, on each side.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps before the timed ones (the authors\': every round; '
                     'ours: once, after compiling).')
flags.DEFINE_string('json', None, 'Write the results here.')
FLAGS = flags.FLAGS

PAPERS_MAIN_PARAMS = 1_550_755  # The papers' image SKIPnet (theirs and ours at the default flags).
MASK_NOTE = ('not the same work: theirs trains two mask nets (one Adam over both), ours one; the ratio '
             'is per step of each side\'s own mask stage')


def _ms(s: dict) -> str:
  return f"{s['median'] * 1e3:.1f} [{s['min'] * 1e3:.1f}-{s['max'] * 1e3:.1f}]"


def _ours_runs(base, hr_sizes, stages, cache) -> list[dict]:
  """Our compiled, warmed-up steps: (stage, hr, prior, bench_step run) for the ratio rows (the papers'
  SKIPnet) and, with another --prior, its main step as its own row."""
  scale = base.scale
  variants = [(base.cpu_conv, base.image_net.strided_conv)]
  out = []
  for hr in hr_sizes:
    for stage in stages:
      priors = ['skipnet'] + ([base.prior] if stage == 'main' and base.prior != 'skipnet' else [])
      for prior in priors:
        t0 = time.perf_counter()
        run, = bench_step.step_runs(hr // scale, scale, stage, base.loop, base.compute_dtype, variants, 1,
                                    cache, base=base.replace(prior=prior), warmup=FLAGS.warmup)
        print(f'# ours {stage} HR {hr} ({prior}): compiled and warmed up in {time.perf_counter() - t0:.1f} s',
              flush=True)
        out.append(dict(stage=stage, hr=hr, prior=prior, run=run, rounds=[]))
  return out


def make_rows(ours: list[dict], authors_runs: list | None) -> list[dict]:
  """The result rows from our per-round medians (ours[i]['rounds']) and the authors' runs (one
  `common.AuthorsRun` per round, or None when not measured)."""
  rows = []
  for o in ours:
    r = o['run']
    row = {'stage': o['stage'], 'hr': o['hr'], 'lr': r['size'], 'prior': o['prior'],
           'in_ratio': o['prior'] == 'skipnet', 'ours': common.spread(o['rounds']),
           'ours_params': r['params'], 'ours_nets': 1, 'ours_row': bench_step.run_row(r)}
    row['ours_row'].pop('step_s_all')  # bench_step's row (GFLOP, compile, memory) at the rounds' median:
    row['ours_row'].update(step_s=row['ours']['median'],
                           gflops_per_s=row['ours_row']['gflops'] / row['ours']['median'])
    if o['stage'] == 'main' and row['in_ratio']:
      row['note'] = ("the papers' network" if r['params'] == PAPERS_MAIN_PARAMS else
                     f"NOT the papers' network ({PAPERS_MAIN_PARAMS:,} parameters)")
    if not row['in_ratio']:
      skipnet = next(q for q in ours if (q['stage'], q['hr'], q['prior']) == (o['stage'], o['hr'], 'skipnet'))
      row['ours_skipnet_over_this'] = float(np.median(skipnet['rounds'])) / row['ours']['median']
      row['note'] = (f"our prior '{o['prior']}': not the papers' network, its own row, not a side-by-side "
                     f"ratio; our SKIPnet step / this = {row['ours_skipnet_over_this']:.2f}")
    elif o['stage'] == 'mask':
      row['note'] = MASK_NOTE
    if authors_runs is not None and row['in_ratio']:
      theirs = common.authors_stage(authors_runs, o['stage'], o['hr'])
      row['authors_params'] = theirs['params']
      row['authors_nets'] = 2 if o['stage'] == 'mask' else 1
      if 'error' in theirs:
        row['authors_error'] = theirs['error']
      else:
        a = theirs['runs']
        row['authors'] = common.spread(a)
        row['ratio'] = row['authors']['median'] / row['ours']['median']
        row['ratio_rounds'] = [x / y for x, y in zip(a, o['rounds'])]
      if o['stage'] == 'main':
        row['same_network'] = row['authors_params'] == row['ours_params']
        row['note'] = ('the same network on both sides' if row['same_network'] else
                       'parameter counts differ: NOT the same network, the ratio compares different work')
    rows.append(row)
  return rows


def table(rows: list[dict], measured: bool) -> str:
  lines = ['| stage | HR out | our input | authors ms/step | ours ms/step | authors / ours | '
           'ratio per round | params authors / ours | note |', '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    stage = r['stage'] if r['in_ratio'] else f"{r['stage']} ({r['prior']})"
    if not r['in_ratio']:
      authors, ratio, per_round, params = '-', 'not a ratio (own row)', '-', f"- / {r['ours_params']:,}"
    elif not measured:
      authors, ratio, per_round, params = 'not measured', '-', '-', f"- / {r['ours_params']:,}"
    else:
      params = f"{r['authors_params']:,} / {r['ours_params']:,}"
      if 'authors_error' in r:
        authors, ratio, per_round = f"fails: {r['authors_error']}", '-', '-'
      else:
        authors, ratio = _ms(r['authors']), f"**{r['ratio']:.2f}x**"
        per_round = ', '.join(f'{x:.2f}' for x in r['ratio_rounds'])
    lines.append(f"| {stage} | {r['hr']} | {r['lr']} | {authors} | {_ms(r['ours'])} | {ratio} | "
                 f"{per_round} | {params} | {r.get('note', '')} |")
  return '\n'.join(lines)


def alternate(authors, ours: list[dict], hr_sizes, stages) -> tuple[list | None, list]:
  """--rounds rounds: the authors' step for all sizes and stages (if measured), then ours (each run's
  median over --reps single steps appended to ours[i]['rounds']). Returns (the authors' runs or None,
  the round log)."""
  round_log, authors_runs = [], [] if authors else None
  for k in range(FLAGS.rounds):
    if authors:
      a = authors.step(hr_sizes, stages, FLAGS.reps, FLAGS.warmup)
      authors_runs.append(a)
      round_log.append({'round': k, 'side': 'authors', 'loadavg_before': list(a.loadavg_before),
                        'loadavg_after': list(a.loadavg_after), 'seconds': a.seconds})
      print(f'# round {k} authors: {a.seconds:.1f} s, load {a.loadavg_before[0]:.2f} -> '
            f'{a.loadavg_after[0]:.2f}; ' + ', '.join(
                f"{s} {h}: {row.get('median_s', 'fails')}" for (s, h), row in a.rows.items()), flush=True)
    before, t0 = os.getloadavg(), time.perf_counter()
    for o in ours:
      o['rounds'].append(float(np.median([bench_step.time_chunk(o['run'], 1) for _ in range(FLAGS.reps)])))
    seconds, after = time.perf_counter() - t0, os.getloadavg()
    round_log.append({'round': k, 'side': 'ours', 'loadavg_before': list(before),
                      'loadavg_after': list(after), 'seconds': seconds})
    print(f'# round {k} ours: {seconds:.1f} s, load {before[0]:.2f} -> {after[0]:.2f}; ' + ', '.join(
        f"{o['stage']} {o['hr']} ({o['prior']}): {o['rounds'][-1]:.4f}" for o in ours), flush=True)
  return authors_runs, round_log


def main(argv):
  del argv
  common.setup()
  base = app_flags.fusion_config(FLAGS)
  authors = common.authors_from_flags(base.scale)
  hr_sizes = [int(h) for h in FLAGS.hr_sizes]
  stages = list(FLAGS.stages)
  if set(stages) - {'main', 'mask'} or not stages:
    raise app.UsageError(f'--stages: main and/or mask, got {",".join(stages)}')
  if any(h % base.scale for h in hr_sizes):
    raise app.UsageError(f'--hr_sizes must be multiples of --scale={base.scale}')
  if min(FLAGS.rounds, FLAGS.reps, FLAGS.warmup) < 1:
    raise app.UsageError('--rounds, --reps and --warmup must be >= 1')
  threads = common.xla_threads()
  print(f"# ours: dfp_jax on {jax.default_backend()} ({jax.devices()[0].device_kind}), XLA's own thread "
        f"pool: {threads['cores_available']} of {threads['cores_machine']} cores available to this "
        f"process{', XLA_FLAGS=' + threads['xla_flags'] if threads['xla_flags'] else ''}", flush=True)
  print(f'# authors: {authors._asdict() if authors else "not measured"}', flush=True)
  with common.private_compilation_cache('dfp_bench_vs_authors_cache_') as cache:
    ours = _ours_runs(base, hr_sizes, stages, cache)
    authors_runs, round_log = alternate(authors, ours, hr_sizes, stages)
  rows = make_rows(ours, authors_runs)
  print()
  if authors is None:
    print(common.NOT_MEASURED + '\n')
  else:
    print(f"Side by side in one run, {FLAGS.rounds} rounds alternating (authors, then ours), {FLAGS.reps} "
          f"timed steps per side per round: medians over the rounds of each side's per-round median "
          f"[min-max over rounds]; authors' torch threads {authors.threads}, ours XLA's pool over "
          f"{threads['cores_available']} cores. Authors / ours = how many times faster ours is.\n")
  print(table(rows, authors is not None))
  loads = [f"{e['side']} {e['loadavg_before'][0]:.2f}->{e['loadavg_after'][0]:.2f}" for e in round_log]
  print('\nLoad average (1 min) before->after each half-round: ' + '; '.join(loads))
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {
        'authors_measured': authors is not None,
        'authors': dict(authors._asdict(), header=authors_runs[0].header) if authors else None,
        'ours': {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
                 'versions': runtime.versions(), 'threads': threads, 'config': base.to_dict()},
        'hr_sizes': hr_sizes, 'scale': base.scale, 'rounds': FLAGS.rounds, 'reps': FLAGS.reps,
        'warmup': FLAGS.warmup, 'stages': stages, 'round_log': round_log, 'rows': rows})
  return 0


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main)
