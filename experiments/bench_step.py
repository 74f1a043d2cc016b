"""Cost of one optimisation step of each DFP stage: prints a table and writes JSON rows.

  python experiments/bench_step.py --sizes=64,128 --scales=2 --stages=main,mask --json=outputs/bench_step.json

Per (input size, scale, stage, loop, dtype): median seconds per step over --steps steps (after a warm-up
chunk), FLOPs per step from XLA's cost analysis of the compiled step, achieved GFLOP/s, the float32 matmul
rate (2048^3 jnp.dot) measured in the same run as the ceiling, compile time, and XLA's memory analysis
(temp + arguments) next to the library's up-front estimate.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax.config import FusionConfig
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['64', '128'], 'Low-resolution input sizes (square).')
flags.DEFINE_list('scales', ['2'], 'Scales.')
flags.DEFINE_list('stages', ['main', 'mask'], 'Stages: main, mask.')
flags.DEFINE_list('loops', ['auto'], 'Loops to time: auto, python, scan.')
flags.DEFINE_list('dtypes', ['float32'], 'Compute dtypes: float32, bfloat16.')
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


def bench_row(size, scale, stage_name, loop, dtype, steps, repeats):
  cfg = FusionConfig(scale=scale, compute_dtype=dtype)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, size, size, 3)).astype(np.float32))
  m = jnp.stack([jnp.ones((size, size)), jnp.zeros((size, size))])
  if stage_name == 'main':
    stage = fusion.main_stage(cfg, 3)
    state, problem = fusion.init_main_state(jax.random.key(0), x, m, config=cfg)
  else:
    stage = fusion.mask_stage(cfg, 2)
    state, problem = fusion.init_mask_state(jax.random.key(0), x, m, config=cfg)
  loop = optimize.resolve_loop(loop)
  compiled_step = stage.jit_step.lower(state, problem).compile()
  cost = compiled_step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  ma = compiled_step.memory_analysis()
  xla_bytes = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
               - ma.alias_size_in_bytes) if ma is not None else None
  est = fusion.estimate_memory(size, size, 2, 3, cfg)[stage_name]
  run, compile_s = optimize.compile_chunk(stage, state, problem, steps, loop)
  state, terms = run(state, problem, steps)  # Warm-up.
  jax.block_until_ready(terms)
  per_step = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, terms = run(state, problem, steps)
    jax.block_until_ready((state, terms))
    per_step.append((time.perf_counter() - t) / steps)
  step_s = float(np.median(per_step))
  return {'lr_size': size, 'scale': scale, 'stage': stage_name, 'loop': loop, 'dtype': dtype,
          'output_size': size * scale if stage_name == 'main' else size, 'step_s': step_s,
          'step_s_all': per_step, 'gflops': flops / 1e9, 'gflops_per_s': flops / 1e9 / step_s,
          'compile_s': compile_s, 'xla_memory_bytes': xla_bytes, 'estimated_memory_bytes': est}


def main(argv):
  del argv
  cli.setup_runtime(FLAGS)
  ceiling = matmul_gflops()
  rows = []
  for size in map(int, FLAGS.sizes):
    for scale in map(int, FLAGS.scales):
      for stage in FLAGS.stages:
        for loop in FLAGS.loops:
          for dtype in FLAGS.dtypes:
            r = bench_row(size, scale, stage, loop, dtype, FLAGS.steps, FLAGS.repeats)
            r['matmul_gflops_per_s'] = ceiling
            rows.append(r)
            print(f"{size:>5} x{scale} {stage:<4} {r['loop']:<6} {dtype:<8} step {r['step_s']*1e3:8.2f} ms  "
                  f"{r['gflops']:7.2f} GFLOP  {r['gflops_per_s']:8.1f} GFLOP/s  compile {r['compile_s']:5.1f} s",
                  flush=True)
  print(f'\nbackend {jax.default_backend()} ({jax.devices()[0].device_kind}); float32 matmul '
        f'ceiling {ceiling:.0f} GFLOP/s\n')
  print('| input | scale | stage | loop | dtype | step (ms) | GFLOP/step | GFLOP/s | compile (s) | XLA mem (MiB) | estimate (MiB) |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    mem = f"{r['xla_memory_bytes'] / 2**20:.0f}" if r['xla_memory_bytes'] else '-'
    print(f"| {r['lr_size']} | x{r['scale']} | {r['stage']} | {r['loop']} | {r['dtype']} | "
          f"{r['step_s']*1e3:.1f} | {r['gflops']:.2f} | {r['gflops_per_s']:.1f} | {r['compile_s']:.1f} | "
          f"{mem} | {r['estimated_memory_bytes'] / 2**20:.0f} |")
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'backend': jax.default_backend(),
                                     'device': jax.devices()[0].device_kind,
                                     'versions': cli.versions(), 'rows': rows})


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  cli.define_flags()
  app.run(main)
