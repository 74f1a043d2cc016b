"""Cost of one optimisation step of each DFP stage: prints a table and writes JSON rows.

  python -m experiments.benchmarks.bench_step --sizes=64,128 --scales=2 --stages=main,mask \
      --json=outputs/bench_step.json

The configuration is FusionConfig's defaults, varied along the grid flags below (--scales, --dtypes,
--cpu_convs, --strided_convs; the same settings as dfp-jax's --scale, --compute_dtype, --cpu_conv,
--strided_conv).

Per (input size, scale, stage, loop, dtype, kernel variant): seconds per step (the median over
--repeats chunks of --steps steps, each chunk's mean, after a warm-up chunk), FLOPs per step from XLA's
cost analysis of the compiled step (`gflops`: the direct convolution form's count, so that the
space-to-depth rows are not credited with its zero taps; `gflops_counted`: XLA's count for the row's
own program), achieved GFLOP/s, the float32 matmul rate (2048^3 jnp.dot) measured in the same run as
the ceiling, compile time cold (`compile_s`, an empty persistent compilation cache of this run's own)
and cached (`compile_cached_s`: in-memory caches cleared, the same program read back from that
cache), XLA's memory analysis of the step program (arguments + temporaries + outputs - aliased, the
program's peak) next to the library's up-front estimate, and the process's peak resident memory so far
(`process_peak_rss_bytes`, cumulative over the rows).

The JSON (`--json`) is a list of rows, one per line of the table, each with the backend, device and
library versions. Results and their commands: docs/benchmarks.md.

No figure here is compared with the authors' code: `bench_vs_authors` times their PyTorch step and ours
(this script's `step_runs` / `time_chunk`) side by side in one run.
"""

from __future__ import annotations

import dataclasses
import time

from absl import app
from absl import flags
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import memory
from dfp_jax import models
from dfp_jax import optimize
from dfp_jax.app import runtime
from dfp_jax.config import FusionConfig
from experiments import common

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (defined when it runs, so that other scripts import its timing functions
  without them)."""
  flags.DEFINE_list('sizes', ['64', '128'], 'Low-resolution input sizes (square).')
  flags.DEFINE_list('scales', ['2'], 'Scales.')
  flags.DEFINE_list('stages', ['main', 'mask'], 'Stages: main, mask.')
  flags.DEFINE_list('loops', ['auto'], 'Loops to time: auto, python, scan.')
  flags.DEFINE_list('dtypes', ['float32'], 'Compute dtypes: float32, bfloat16.')
  flags.DEFINE_list('cpu_convs', ['eigen', 'ynnpack'], 'XLA:CPU convolution kernels to compare (see '
                    'dfp-jax --cpu_conv), timed interleaved in the same process.')
  flags.DEFINE_list('strided_convs', ['space_to_depth', 'direct'], 'Stride-2 convolution forms to compare '
                    '(see dfp-jax --strided_conv); every (cpu_conv, strided_conv) pair is timed.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per row (after one warm-up chunk of the same length).')
  flags.DEFINE_integer('repeats', 3, 'Timed chunks per row; the median per-step time is reported.')
  flags.DEFINE_string('json', None, 'Write the rows as JSON here.')


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    ts.append(time.perf_counter() - t)
  return 2 * n ** 3 / np.median(ts) / 1e9


def step_runs(size, scale, stage_name, loop, dtype, variants, steps, cache,
              base: FusionConfig = FusionConfig(), warmup: int | None = None) -> list[dict]:
  """The compiled step of one stage, one run per (cpu_conv, strided_conv) variant of `base` (the other
  settings are `base`'s, e.g. its prior), warmed up with `warmup` steps (default `steps`) and ready for
  `time_chunk`. `cache`: (empty, hits) of the run's private compilation cache
  (`common.private_compilation_cache`). Inputs: two random images of size x size (LR), maps 1 / 0."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, size, size, 3)).astype(np.float32))
  m = jnp.stack([jnp.ones((size, size)), jnp.zeros((size, size))])
  loop = optimize.resolve_loop(loop)
  runs = []
  for conv, strided in variants:
    cfg = base.replace(scale=scale, compute_dtype=dtype, cpu_conv=conv,
                       image_net=dataclasses.replace(base.image_net, strided_conv=strided),
                       mask_net=dataclasses.replace(base.mask_net, strided_conv=strided))
    if stage_name == 'main':
      stage = fusion.main_stage(cfg, 3)
      state, problem = fusion.init_main_state(jax.random.key(0), x, m, config=cfg)
    else:
      stage = fusion.mask_stage(cfg, 2)
      state, problem = fusion.init_mask_state(jax.random.key(0), x, m, config=cfg)
    cache[0]()  # Cold: nothing cached, even if another row of this run compiled the same program.
    t0 = time.perf_counter()  # The step's compilation (compile_chunk below then reuses it).
    compiled_step = optimize.compile_with_options(stage.jit_step.lower(state, problem), stage)
    compile_s = time.perf_counter() - t0
    jax.clear_caches()  # The same program again: now read back from the persistent cache.
    hits = cache[1]()
    t0 = time.perf_counter()
    optimize.compile_with_options(stage.jit_step.lower(state, problem), stage)
    compile_cached_s = time.perf_counter() - t0
    cache_hit = cache[1]() > hits
    cost = compiled_step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
    ma = compiled_step.memory_analysis()
    xla_bytes = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                 - ma.alias_size_in_bytes) if ma is not None else None
    est = memory.estimate_memory(size, size, 2, 3, cfg)[stage_name]
    run, chunk_compile_s = optimize.compile_chunk(stage, state, problem, steps, loop)
    compile_s = compile_s if loop == 'python' else chunk_compile_s
    state, terms = run(state, problem, steps if warmup is None else warmup)  # Warm-up.
    jax.block_until_ready(terms)
    runs.append(dict(size=size, scale=scale, stage=stage_name, loop=loop, dtype=dtype, prior=cfg.prior,
                     conv=conv, strided=strided, run=run, state=state, problem=problem, flops=flops,
                     params=models.count_params(state.params), xla_bytes=xla_bytes, est=est,
                     compile_s=compile_s, compile_cached_s=compile_cached_s, cache_hit=cache_hit,
                     per_step=[]))
  return runs


def time_chunk(run: dict, steps: int) -> float:
  """Runs `steps` steps of a `step_runs` run and returns the seconds per step (also appended to
  run['per_step'])."""
  t = time.perf_counter()
  run['state'], terms = run['run'](run['state'], run['problem'], steps)
  jax.block_until_ready((run['state'], terms))
  run['per_step'].append((time.perf_counter() - t) / steps)
  return run['per_step'][-1]


def run_row(r: dict) -> dict:
  """The row of a timed `step_runs` run: step_s = the median of its chunks' seconds per step."""
  step_s = float(np.median(r['per_step']))
  return {'lr_size': r['size'], 'scale': r['scale'], 'stage': r['stage'], 'loop': r['loop'],
          'dtype': r['dtype'], 'prior': r['prior'], 'cpu_conv': r['conv'], 'strided_conv': r['strided'],
          'output_size': r['size'] * r['scale'] if r['stage'] == 'main' else r['size'],
          'params': r['params'], 'step_s': step_s, 'step_s_all': r['per_step'], 'gflops': r['flops'] / 1e9,
          'gflops_per_s': r['flops'] / 1e9 / step_s, 'compile_s': r['compile_s'],
          'compile_cached_s': r['compile_cached_s'], 'compile_cache_hit': r['cache_hit'],
          'xla_memory_bytes': r['xla_bytes'], 'estimated_memory_bytes': r['est'],
          'process_peak_rss_bytes': common.peak_rss_bytes()}


def bench_rows(size, scale, stage_name, loop, dtype, variants, steps, repeats, cache):
  """One row per (cpu_conv, strided_conv) variant of FusionConfig's defaults, timed interleaved
  (A, B, C, A, B, C, ...) so that a noisy, shared machine affects all of them alike."""
  runs = step_runs(size, scale, stage_name, loop, dtype, variants, steps, cache)
  for _ in range(repeats):
    for r in runs:
      time_chunk(r, steps)
  return [run_row(r) for r in runs]


def main(argv):
  del argv
  common.setup()
  # A persistent compilation cache of this run's own: compile_s is a cold compile whatever earlier
  # runs left in the user's cache, and compile_cached_s reads the program back from it.
  with common.private_compilation_cache('dfp_bench_step_cache_') as cache:
    rows = run_grid(cache)
  report(rows)


def run_grid(cache) -> list:
  ceiling = matmul_gflops()
  rows = []
  for size in map(int, FLAGS.sizes):
    for scale in map(int, FLAGS.scales):
      for stage in FLAGS.stages:
        for loop in FLAGS.loops:
          for dtype in FLAGS.dtypes:
            convs = FLAGS.cpu_convs if jax.default_backend() == 'cpu' else FLAGS.cpu_convs[:1]
            variants = [(c, s) for c in convs for s in FLAGS.strided_convs]
            for r in bench_rows(size, scale, stage, loop, dtype, variants, FLAGS.steps, FLAGS.repeats,
                                cache):
              r['matmul_gflops_per_s'] = ceiling
              rows.append(r)
              print(f"{size:>5} x{scale} {stage:<4} {r['loop']:<6} {dtype:<8} {r['cpu_conv']:<7} "
                    f"{r['strided_conv']:<14} step "
                    f"{r['step_s']*1e3:8.2f} ms  {r['gflops']:7.2f} GFLOP  {r['gflops_per_s']:8.1f} GFLOP/s  "
                    f"compile {r['compile_s']:5.1f} s (cached {r['compile_cached_s']:4.1f} s)", flush=True)
  # The space-to-depth form adds zero taps that XLA's cost analysis counts; GFLOP/s is reported on the
  # network's own FLOPs (the direct form's count for the same row) where that row was measured.
  for r in rows:
    direct = [q for q in rows if (q['lr_size'], q['scale'], q['stage'], q['dtype'], q['strided_conv']) ==
              (r['lr_size'], r['scale'], r['stage'], r['dtype'], 'direct')]
    if direct:
      r['gflops_counted'] = r['gflops']
      r['gflops'] = direct[0]['gflops']
      r['gflops_per_s'] = r['gflops'] / r['step_s']
  info = {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
          'versions': runtime.versions()}
  return [dict(r, **info) for r in rows]


def report(rows: list):
  print(f'\nbackend {jax.default_backend()} ({jax.devices()[0].device_kind}); float32 matmul '
        f'ceiling {rows[0]["matmul_gflops_per_s"] if rows else float("nan"):.0f} GFLOP/s\n')
  print('| input | scale | stage | loop | dtype | CPU conv | strided conv | step (ms) | GFLOP/step | GFLOP/s '
        '| compile cold / cached (s) | XLA mem (MiB) | estimate (MiB) |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    mem = f"{r['xla_memory_bytes'] / 2**20:.0f}" if r['xla_memory_bytes'] else '-'
    print(f"| {r['lr_size']} | x{r['scale']} | {r['stage']} | {r['loop']} | {r['dtype']} | {r['cpu_conv']} | {r['strided_conv']} | "
          f"{r['step_s']*1e3:.1f} | {r['gflops']:.2f} | {r['gflops_per_s']:.1f} | "
          f"{r['compile_s']:.1f} / {r['compile_cached_s']:.1f} | "
          f"{mem} | {r['estimated_memory_bytes'] / 2**20:.0f} |")
  if FLAGS.json:
    image_io.write_json(FLAGS.json, rows)  # A list of rows (issue 6's layout).


if __name__ == '__main__':
  define_flags()
  jax.config.parse_flags_with_absl()
  app.run(main)
