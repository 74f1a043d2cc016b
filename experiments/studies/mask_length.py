"""What ending the decision embedding early would cost: the embedded maps after K_m steps, and the x2
result of the main stage (--stop=auto, as by default) fused with them, scored against the ground truth.

  python -m experiments.studies.mask_length --scenes=NAME=FOLDER@Y:X:H:W,... \
      --json=docs/results/mask_length_cpu.json

Scenes (--scenes) as `bench_scene`'s: light-field ground-truth cases (`common.gt_case`: two refocused
slices at automatically chosen planes, area-downsampled by --scale, fused, scored against the centre
view; the Lytro default's centre view is only an approximate reference). The configuration flags are
dfp-jax's (docs/cli.md). For each scene the
decision embedding runs --mask_iters steps once, window by window; after every window it records the
mean absolute change of the EMA of the soft maps (the statistic `--stop=auto` tests on this stage,
`mask_change`), the share of pixels whose binary map flipped since the last window (`flips`) and the
share that differs from the DoubleReblur map (`vs_raw`). At each of --checkpoints the binary maps
are kept; the main stage then runs from each kept map (same key as `fuse`), and the table gives the
PSNR of its result and how many pixels of the kept map differ from the last one.
No file other than the JSON is written.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import jax

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax.app import flags as app_flags
from dfp_jax.config import FusionConfig
from experiments import common

common.define_flags()
common.define_scenes_flag()
flags.DEFINE_list('checkpoints', ['150', '250', '350', '500'], 'Embedding lengths to fuse from (each a '
                  'multiple of the stop window, at most --mask_iters).')
flags.DEFINE_string('json', None, 'Write the results here.')
FLAGS = flags.FLAGS


def scene_rows(spec: str, config: FusionConfig, checkpoints: list[int]):
  name, (lr, gt, _) = common.scene_case(spec, config.scale)
  x = fusion.validate_images(lr, config)
  n, c = x.shape[0], x.shape[-1]
  k_mask, k_main = jax.random.split(jax.random.key(FLAGS.seed))  # As fusion.fuse splits its key.
  raw = fusion.decision_maps_jit(x, config.focus)
  raw0 = np.asarray(raw[0])
  stage = fusion.mask_stage(config, n)
  state, problem = optimize.call_one_off(fusion.init_mask_state, k_mask, x, raw, config=config)
  window = config.stop_window
  trajectory, kept, previous_soft, previous_hard = [], {}, None, None
  for done in range(window, config.mask_iters + 1, window):
    state, _ = optimize.run_stage(stage, state, problem, window, window, None, loop=config.loop)
    soft = np.asarray(optimize.ema_output(stage, state))
    hard = np.asarray(fusion.embedded_maps(state, config=config, num_inputs=n))
    row = {'step': done, 'vs_raw': float(np.mean(hard[0] != raw0))}
    if previous_soft is not None:
      row['mask_change'] = float(np.mean(np.abs(soft - previous_soft)))
      row['flips'] = float(np.mean(np.any(hard != previous_hard, axis=0)))
    previous_soft, previous_hard = soft, hard
    trajectory.append(row)
    if done in checkpoints:
      kept[done] = hard
  last = previous_hard
  main = fusion.main_stage(config, c)
  fused = {}
  for k, maps in sorted(kept.items()):
    t0 = time.perf_counter()
    st, pb = optimize.call_one_off(fusion.init_main_state, k_main, x, jax.numpy.asarray(maps),
                                   config=config)
    st, report = optimize.run_stage(main, st, pb, config.iters, config.chunk_size, None,
                                    loop=config.loop, stop=config.stop_rule('main'))
    out = np.asarray(fusion.final_output(st, config=config, channels=c))
    fused[k] = {'mask_steps': k, 'psnr': common.psnr(out, gt), 'main_steps': report.steps,
                'vs_last_map': float(np.mean(np.any(maps != last, axis=0))),
                'main_seconds': time.perf_counter() - t0}
    logging.info('%s: embedding %d steps -> %s', name, k, fused[k])
  return {'scene': name, 'spec': spec, 'trajectory': trajectory, 'fused': [fused[k] for k in sorted(fused)]}


def main(argv):
  del argv
  common.setup()
  config = app_flags.fusion_config(FLAGS)
  checkpoints = sorted({int(v) for v in FLAGS.checkpoints} | {FLAGS.mask_iters})
  bad = [k for k in checkpoints if k % config.stop_window or not 0 < k <= config.mask_iters]
  if bad:
    raise app.UsageError(f'--checkpoints: {bad} are not multiples of the stop window '
                         f'({config.stop_window}) between 1 and --mask_iters ({config.mask_iters})')
  results = [scene_rows(spec, config, checkpoints) for spec in FLAGS.scenes]
  print('\n| scene | embedding steps | maps differing from the last | main steps | PSNR (dB) | vs the last |')
  print('|---|---|---|---|---|---|')
  for r in results:
    ref = r['fused'][-1]['psnr']
    for f in r['fused']:
      print(f'| {r["scene"]} | {f["mask_steps"]} | {100 * f["vs_last_map"]:.2f}% | {f["main_steps"]} | '
            f'{f["psnr"]:.3f} | {f["psnr"] - ref:+.3f} |')
  print('\n| scene | step | mask_change (stop statistic) | flipped pixels | differs from raw map |')
  print('|---|---|---|---|---|')
  for r in results:
    for t in r['trajectory']:
      change = f'{t["mask_change"]:.2e}' if 'mask_change' in t else ''
      flips = f'{100 * t["flips"]:.2f}%' if 'flips' in t else ''
      print(f'| {r["scene"]} | {t["step"]} | {change} | {flips} | {100 * t["vs_raw"]:.2f}% |')
  if FLAGS.json:
    image_io.write_json(FLAGS.json, {'config': config.to_dict(), 'backend': jax.default_backend(),
                                     'jax': jax.__version__, 'results': results})
  return 0


if __name__ == '__main__':
  app.run(main)
