"""Whole-scene wall time and quality with and without the convergence stop (--stop=auto vs fixed).

  python -m experiments.benchmarks.bench_scene --json=docs/results/bench_scene_cpu.json \
      --plot=docs/results/stop_curves.png

Scenes (--scenes): light-field ground-truth cases (`common.gt_case`: two refocused slices at
automatically chosen planes, area-downsampled by --scale, fused, scored against the centre view): by
default two regions of the HCI "dino" scene and the bundled Lytro Illum light field (a real capture:
its centre view is an approximate reference). The configuration flags are dfp-jax's (docs/cli.md);
--stop is set by the script. For each scene:

  * `auto_cold`: fuse with --stop=auto in a fresh process state with an empty persistent compilation
    cache (compiles everything);
  * `auto_warm`: the same again after clearing every in-memory cache, with the persistent cache now
    filled (what a second run of the same shape costs);
  * `fixed`: the full fixed run (--mask_iters + --iters steps), driven window by window so the PSNR of
    the result (EMA) against the ground truth is recorded every window, together with the stop rule's
    statistic; the point where the rule stops on this trajectory is marked on the curve;
  * with --authors_python / --authors_repo (x2 only): the authors' own PyTorch step
    (`../shared/tools/ref_step_bench.py`, as `bench_vs_authors`) at the scene's HR size (main stage)
    and HR / 2 (their two mask nets), timed just before auto_cold and just after auto_warm; their full
    run is priced at the median of the two: 500 x t_mask + 2000 x t_main (the step counts of their
    DFP_onestage.py; their per-step bookkeeping, a few per cent, is left out, which favours them), and
    reported against auto_warm and auto_cold as a ratio (how many times faster ours is). Without those
    flags the authors' run is not measured and the output says so; no figure from another run is
    compared with.

Results and their commands: docs/benchmarks.md.
"""

from __future__ import annotations

import math
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import jax

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax import viz
from dfp_jax.app import flags as app_flags
from dfp_jax.config import FusionConfig
from experiments import common

common.define_flags(compilation_cache=False)  # A private cache of the run's own (cold / warm).
common.define_scenes_flag()
common.define_authors_flags()
flags.DEFINE_integer('authors_reps', 10, "Timed steps of each of the authors' stages, each time their step "
                     'is measured (before and after each scene\'s timings).')
flags.DEFINE_bool('timing', True, 'Run the auto_cold / auto_warm timings (else only the fixed curves).')
flags.DEFINE_string('json', None, 'Write the results here.')
flags.DEFINE_string('plot', None, 'Write the PSNR-per-iteration figure here (PNG).')
FLAGS = flags.FLAGS

# The authors' full x2 run (DFP_onestage.py): 500 steps of their mask stage (two mask nets at HR / 2),
# then 2000 steps of their main stage at HR.
AUTHORS_MASK_ITERS, AUTHORS_MAIN_ITERS = 500, 2000


def authors_hr(height: int, width: int) -> tuple[int, bool]:
  """The square HR size their bench is timed at for an HR scene of height x width: its side, or the
  even side of a square of about the same area (their bench is square), and whether it is the latter."""
  if height == width:
    return height, False
  return 2 * round(math.sqrt(height * width) / 2), True


def authors_full_run(runs, hr: int) -> dict:
  """Their full run priced at their steps measured in this run (`common.AuthorsRun`s at HR `hr`):
  t_* = the median over the runs of each run's median s/step."""
  out = {'hr': hr, 'mask_iters': AUTHORS_MASK_ITERS, 'main_iters': AUTHORS_MAIN_ITERS,
         'loadavg': [[list(a.loadavg_before), list(a.loadavg_after)] for a in runs]}
  for stage in ('main', 'mask'):
    theirs = common.authors_stage(runs, stage, hr)
    out[f'{stage}_params'] = theirs['params']
    if 'error' in theirs:
      out['error'] = f'{stage}: {theirs["error"]}'
      return out
    out[f't_{stage}_runs'] = theirs['runs']
    out[f't_{stage}_s'] = float(np.median(out[f't_{stage}_runs']))
  out['full_run_s'] = AUTHORS_MASK_ITERS * out['t_mask_s'] + AUTHORS_MAIN_ITERS * out['t_main_s']
  return out


def fixed_curve(lr, gt, config: FusionConfig, key):
  """The fixed run window by window (`common.fixed_trajectory`), and the step where the library's own
  stop (`config.stop_rule('main')`, as `fuse(stop='auto')` uses it) would have ended it."""
  rows, out = common.fixed_trajectory(lr, gt, config, key)
  rule = config.replace(stop='auto').stop_rule('main')
  return rows, rule.stop_step([(r['step'], r['change']) for r in rows if 'change' in r]), out


def clear_caches():
  jax.clear_caches()
  fusion.mask_stage.cache_clear()
  fusion.main_stage.cache_clear()
  optimize.clear_one_off_cache()


def curves_figure(results) -> np.ndarray:
  """One panel per scene (`viz.line_plot`): PSNR against main-stage iteration, the stop marked."""
  panels = []
  for r in results:
    curve = r['fixed_curve']
    name = f'fixed run {curve[-1]["psnr"]:.2f}'
    panels.append(viz.line_plot({name: ([p['step'] for p in curve], [p['psnr'] for p in curve])},
                                f'{r["scene"]}: PSNR (dB) vs main step; line: --stop=auto ends',
                                xlabel='main step', marks={name: r.get('stop_at')}, width=620, height=340))
  return np.concatenate(panels, axis=1)  # uint8 RGB.


def timed_runs(name, lr, gt, base: FusionConfig, key, authors) -> dict:
  """auto_cold then auto_warm (the persistent cache already emptied), and with `authors` their step timed
  just before and just after them, their full run priced at it and the ratios to ours."""
  res = {}
  hr, square = authors_hr(lr.shape[1] * base.scale, lr.shape[2] * base.scale)
  theirs = [authors.step([hr], ('main', 'mask'), FLAGS.authors_reps)] if authors else []
  for label in ('auto_cold', 'auto_warm'):
    clear_caches()
    t0 = time.perf_counter()
    r = fusion.fuse(lr, config=base.replace(stop='auto'), key=key, progress=None)
    res[label] = {'seconds': time.perf_counter() - t0, 'psnr': common.psnr(r.fused, gt),
                  'mask_steps': r.timings.get('mask_steps'), 'main_steps': r.timings['main_steps'],
                  'compile_s': r.timings.get('mask_compile_s', 0) + r.timings['main_compile_s']}
    logging.info('%s %s: %s', name, label, res[label])
  if authors:
    theirs.append(authors.step([hr], ('main', 'mask'), FLAGS.authors_reps))
    a = res['authors'] = dict(authors_full_run(theirs, hr), square_of_equal_area=square)
    if 'full_run_s' in a:
      res['ratio_warm'] = a['full_run_s'] / res['auto_warm']['seconds']
      res['ratio_cold'] = a['full_run_s'] / res['auto_cold']['seconds']
    logging.info('%s authors: %s', name, a)
  return res


def table(results, base: FusionConfig, authors) -> str:
  """The markdown table of the results, with the authors' full run as measured in this run, or a line
  that says it was not measured."""
  lines = []
  if FLAGS.timing and authors is None:
    lines += [common.NOT_MEASURED, '']
  elif authors is not None:
    lines += [f"The authors' full run = {AUTHORS_MASK_ITERS} x t_mask (their two mask nets at HR / 2) + "
              f'{AUTHORS_MAIN_ITERS} x t_main (HR), their steps timed in this run just before and after '
              f"each scene's auto_cold / auto_warm (the median; {authors.threads} torch threads). "
              'x = their full run / ours (how many times faster ours is).', '']
  theirs = " authors' full run s (t_mask / t_main ms) | x vs warm | x vs cold |" if authors else ''
  lines += [f'| scene | fixed {base.mask_iters}+{base.iters}: PSNR / s | auto (warm): PSNR / s / steps '
            f'mask+main | auto cold s | PSNR change |{theirs}',
            '|---|---|---|---|---|' + ('---|---|---|' if authors else '')]
  for r in results:
    f = r['fixed']
    if 'auto_warm' not in r:
      lines.append(f'| {r["scene"]} | {f["psnr"]:.2f} / {f["seconds"]:.0f} | stop at {r["stop_at"]}: '
                   f'{r["psnr_at_stop_on_fixed_trajectory"]} | | |')
      continue
    a, c = r['auto_warm'], r['auto_cold']
    line = (f'| {r["scene"]} | {f["psnr"]:.2f} / {f["seconds"]:.0f} | {a["psnr"]:.2f} / {a["seconds"]:.0f} / '
            f'{a["mask_steps"]}+{a["main_steps"]} | {c["seconds"]:.0f} | {a["psnr"] - f["psnr"]:+.2f} |')
    if authors:
      t = r['authors']
      if 'full_run_s' in t:
        area = f', HR {t["hr"]} square of equal area' if t['square_of_equal_area'] else ''
        line += (f' {t["full_run_s"]:.0f} ({t["t_mask_s"] * 1e3:.1f} / {t["t_main_s"] * 1e3:.1f}{area})'
                 f' | **{r["ratio_warm"]:.1f}x** | {r["ratio_cold"]:.1f}x |')
      else:
        line += f' fails: {t["error"]} | - | - |'
    lines.append(line)
  return '\n'.join(lines)


def main(argv):
  del argv
  common.setup()
  base = app_flags.fusion_config(FLAGS)
  key = jax.random.key(FLAGS.seed)
  authors = common.authors_from_flags(base.scale)
  if authors is not None and not FLAGS.timing:
    raise app.UsageError("--authors_* price the authors' full run against ours: they need --timing")
  results = []
  with common.private_compilation_cache('dfp_bench_scene_cache_') as (empty_cache, _):
    for spec in FLAGS.scenes:
      name, (lr, gt, planes) = common.scene_case(spec, base.scale)
      res = {'scene': name, 'spec': spec, 'planes': planes.tolist(), 'lr_shape': list(lr[0].shape)}
      if FLAGS.timing:
        # Empty the persistent cache so that this scene's cold run compiles everything even when an
        # earlier scene had the same shapes.
        empty_cache()
        res.update(timed_runs(name, lr, gt, base, key, authors))
      clear_caches()
      t0 = time.perf_counter()
      curve, stop_at, _ = fixed_curve(lr, gt, base.replace(stop='fixed'), key)
      res['fixed'] = {'seconds': time.perf_counter() - t0, 'psnr': curve[-1]['psnr'],
                      'mask_steps': base.mask_iters, 'main_steps': base.iters}
      res['fixed_curve'] = curve
      res['stop_at'] = stop_at
      res['psnr_at_stop_on_fixed_trajectory'] = (
          next(p['psnr'] for p in curve if p['step'] == stop_at) if stop_at else None)
      results.append(res)

  print('\n' + table(results, base, authors))
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'config': base.to_dict(), 'backend': jax.default_backend(),
                                     'jax': jax.__version__, 'threads': common.xla_threads(),
                                     'authors_measured': authors is not None,
                                     'authors': authors._asdict() if authors else None,
                                     'results': results})
  if FLAGS.plot:
    image_io.write_image(FLAGS.plot, curves_figure(results))
  return 0


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main)
