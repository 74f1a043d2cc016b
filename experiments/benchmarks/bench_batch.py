"""Batch throughput: scene-iterations per second of each batch strategy against a loop of single scenes.

  python -m experiments.benchmarks.bench_batch --lr_sizes=64,128 --batches=1,2,4,8,16 --scale=2 \
      --host_devices=1,4 --json=docs/results/bench_batch_cpu.json

For every LR size, batch size B and device count, it times the main-stage training step (the stage that
costs most of a scene) of each strategy of `dfp_jax.batch` on B real-size scenes, and in the same process
the single-scene step run B times in a Python loop (`loop_scene_iters_per_s`). 'vmap' runs B scenes in
one program (split over the devices); 'vmap_per_device' runs one scene per device in a vmapped program,
B / devices groups in turn (its rate is the 'vmap' row at batch = devices); 'shard' runs one scene per
device at once with the single-scene step (groups in turn, so its rate does not depend on B); 'loop' is
one scene after another. `auto` is the strategy that
`fuse_batch(strategy='auto')` would pick from these rates. The device counts other than the current one
run in child processes (`--xla_force_host_platform_device_count` / `jax_num_cpu_devices` must be set
before JAX starts). Peak memory: XLA's memory analysis of the compiled step (arguments + temporaries +
outputs) and the process's peak RSS.

The configuration flags are dfp-jax's (docs/cli.md). Prints a markdown table and writes JSON rows with
lr_size, scale, batch, strategy, devices, scene_iters_per_s, loop_scene_iters_per_s, ratio, step_s,
compile_s, program_bytes, peak_rss_bytes. Results and their commands: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
import jax

from dfp_jax.app import flags as app_flags
from dfp_jax.app import runtime
from experiments import common

common.define_flags(seed=False, compilation_cache=False)
flags.DEFINE_list('lr_sizes', ['64', '128'], 'Low-resolution input sizes (square).')
flags.DEFINE_list('batches', ['1', '2', '4', '8', '16'], 'Batch sizes (scenes).')
flags.DEFINE_list('strategies', ['vmap', 'shard'], 'Strategies to time besides the loop.')
flags.DEFINE_list('host_devices', ['1', '4'], 'CPU device counts to measure (each in its own process).')
flags.DEFINE_integer('steps', 3, 'Timed steps per measurement (after one warm-up step).')
flags.DEFINE_string('json', None, 'Write the rows here (a JSON list).')
flags.DEFINE_bool('child', False, 'Internal: measure with the current device count only.')
FLAGS = flags.FLAGS


def _scenes(size: int, count: int):
  """Real-looking inputs: the bundled example pair cropped/tiled to size (content does not change the
  cost, but it keeps DoubleReblur's maps realistic)."""
  import cv2  # pylint: disable=g-import-not-at-top
  folder = os.path.join(common.ROOT, 'examples', 'lytro_golfer')
  ims = [cv2.imread(os.path.join(folder, f))[..., ::-1].astype(np.float32) / 255
         for f in sorted(os.listdir(folder)) if f.endswith('.png')][:2]
  ims = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in ims]
  x = np.stack(ims)[None].repeat(count, 0)
  return x


def measure(lr_sizes, batches, config, strategies, steps) -> list[dict]:
  from dfp_jax.batch import plan  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  scale = config.scale
  devs = jax.local_devices()
  rows = []
  for size in lr_sizes:
    x = jnp.asarray(_scenes(size, 1))
    keys = jnp.stack([jax.random.key(0)])
    loop = plan.measure_strategy(x, keys, config, 'loop', devs, 1, steps)
    shard = per_device = None
    if 'shard' in strategies and len(devs) > 1:
      shard = plan.measure_strategy(x, keys, config, 'shard', devs, len(devs), steps)
    for b in batches:
      per = {'loop': loop}
      if shard is not None:  # Effective rate for b scenes: ceil(b / devices) groups in turn.
        per['shard'] = dict(shard, scene_steps_per_s=b / (-(-b // shard['group']) * shard['step_s']))
      if 'vmap' in strategies and b > 1:
        per['vmap'] = plan.measure_strategy(x, keys, config, 'vmap', devs, b, steps)
        if b == len(devs):
          per_device = per['vmap']
      if 'vmap' in strategies and len(devs) > 1 and b > len(devs) and per_device is not None:
        # One scene per device per group, groups in turn: the rate measured at batch = devices.
        per['vmap_per_device'] = dict(per_device, scene_steps_per_s=b / (-(-b // len(devs)) *
                                                                        per_device['step_s']))
      best = max(per, key=lambda k: per[k]['scene_steps_per_s'])
      for name, m in list(per.items()) + [('auto', dict(per[best], chosen=best))]:
        rows.append({'lr_size': size, 'scale': scale, 'batch': b, 'strategy': name,
                     'chosen': m.get('chosen', name), 'devices': len(devs),
                     'scene_iters_per_s': m['scene_steps_per_s'],
                     'loop_scene_iters_per_s': loop['scene_steps_per_s'],
                     'ratio': m['scene_steps_per_s'] / loop['scene_steps_per_s'],
                     'step_s': m['step_s'], 'group': m['group'], 'compile_s': m['compile_s'],
                     'program_bytes': m['memory_bytes'],
                     'peak_rss_bytes': common.peak_rss_bytes()})
        print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv):
  del argv
  lr_sizes = [int(v) for v in FLAGS.lr_sizes]
  batches = [int(v) for v in FLAGS.batches]
  config = app_flags.fusion_config(FLAGS)
  if FLAGS.child:
    measure(lr_sizes, batches, config, FLAGS.strategies, FLAGS.steps)
    return 0
  rows = []
  for d in (int(v) for v in FLAGS.host_devices):
    # The same flags (flagfiles included; the working folder is this one's), measured in a child.
    cmd = [sys.executable, '-m', 'experiments.benchmarks.bench_batch'] + sys.argv[1:] + ['--child']
    env = dict(os.environ, DFP_JAX_HOST_DEVICES=str(d))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
      sys.stderr.write(out.stderr[-3000:])
      raise SystemExit(f'child with {d} host devices failed')
    rows += [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
  print('\n| LR size | x | devices | batch | strategy | scene-it/s | loop scene-it/s | ratio | group | '
        'program MiB | peak RSS MiB |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    name = r['strategy'] if r['strategy'] != 'auto' else f'auto ({r["chosen"]})'
    mem = f'{r["program_bytes"] / 2**20:.0f}' if r['program_bytes'] else '?'
    print(f'| {r["lr_size"]} | {r["scale"]} | {r["devices"]} | {r["batch"]} | {name} | '
          f'{r["scene_iters_per_s"]:.2f} | {r["loop_scene_iters_per_s"]:.2f} | {r["ratio"]:.2f} | '
          f'{r["group"]} | {mem} | {r["peak_rss_bytes"] / 2**20:.0f} |')
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, 'w') as f:
      json.dump([dict(r, backend=jax.default_backend(), jax=jax.__version__) for r in rows], f, indent=1)
  return 0


if __name__ == '__main__':
  if os.environ.get('DFP_JAX_HOST_DEVICES'):
    runtime.setup_host_devices(int(os.environ['DFP_JAX_HOST_DEVICES']))
  app.run(main)
