"""Large images (issue 23 section 3): the tiled path against the whole-image path, in one run.

Cases (`--cases`, each a JSON record appended to --json as it finishes; a rerun skips the cases the
file already holds for the same configuration):

  * `hci_x1`, `hci_x2`: per HCI light field (`--lightfield`), the whole 512 x 512 views refocused into
    N = 2 slices (aperture `--aperture`, `common.Stacks`), area-downsampled by the scale; fused whole
    (`fusion.fuse`, today's path) and by the large-image path: at x2 `tiles.fuse_tiles` with tiles of
    `--tile` input pixels, at x1 the x1 fast path (`TilePlan('map_fusion')`) and the tiles. Scores: PSNR
    of each against the centre view, and the seam ratio: the RMS error within 8 output pixels of an
    inner tile border over the RMS error elsewhere (issue goal: at most 1.05).
  * `lytro_x2`: the whole 520 x 520 MFIFB pair (`--pair`) at x2 (1040 x 1040 out), whole and tiled:
    wall time, and Qabf and SF of each output area-downsampled back to the sources' size (the sources
    are the inputs; issue goal: tiled within 1% of whole, under 5 minutes).
  * `lf_x2`: the light-field job on the whole bundled Lytro light field (383 x 552 views) at x2, run as
    the user runs it (`python -m dfp_jax --lightfield=... --scale=2`, a child process): wall time,
    peak memory and its plan.
  * `big_x1`: a 4000 x 6000 pair made by upsampling `--pair` (bicubic; its detail is the pair's, only
    its size is a camera's), fused at x1 by the CLI in a child process under
    `DFP_JAX_MEMORY_BUDGET=--big_cap`: wall time, peak resident memory of the child, its plan.

The configuration flags are dfp-jax's (docs/cli.md); `--stop` applies to both paths alike.

  python -m experiments.benchmarks.bench_large --cases=hci_x2,hci_x1 --json=docs/results/large.jsonl
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import metrics
from dfp_jax import resample
from dfp_jax import tiles
from dfp_jax.app import flags as app_flags
from experiments import common

CASES = ('hci_x2', 'hci_x1', 'lytro_x2', 'lf_x2', 'big_x1')

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (defined when it runs, so that tests and other scripts import its functions
  without them)."""
  common.define_flags()
  flags.DEFINE_list('cases', list(CASES), f'Cases to run: {", ".join(CASES)}.')
  flags.DEFINE_list('lightfield', list(common.HCI_SCENES), 'HCI light fields (hci_x1, hci_x2).')
  flags.DEFINE_float('aperture', float('inf'), 'Synthetic aperture of the HCI focal stacks.')
  flags.DEFINE_integer('tile', 160, 'Tile side (input pixels) of the tiled runs (a multiple of 32).')
  flags.DEFINE_integer('overlap', 0, 'Tile overlap (input pixels); 0 = the default of --tile_overlap.')
  flags.DEFINE_string('pair', '../shared/data/mfifb/lytro_01', 'MFIFB pair folder (A.*, B.*).')
  flags.DEFINE_string('lytro_lf', '../shared/data/lightfield/lytro_illum_2067_center5x5', 'lf_x2 light field.')
  flags.DEFINE_string('big_cap', '6GiB', 'DFP_JAX_MEMORY_BUDGET of big_x1.')
  flags.DEFINE_string('bench_dir', 'outputs/benchmark_gt', 'Focal-stack cache (shared with benchmark_gt).')
  flags.DEFINE_string('work_dir', 'outputs/bench_large', 'Inputs and outputs of the CLI cases.')
  flags.DEFINE_string('json', 'outputs/bench_large.jsonl', 'JSON-lines file of the results (appended).')


def tile_plan(h: int, w: int, scale: int) -> tiles.TilePlan:
  cfg = app_flags.fusion_config(FLAGS).replace(scale=scale)
  return tiles.plan_tiles(h, w, 2, 3, cfg, None, FLAGS.tile, FLAGS.overlap, x1_fast=False)


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def hci_case(scale: int, key) -> list[dict]:
  base = app_flags.fusion_config(FLAGS).replace(scale=scale)
  stacks = common.Stacks(os.path.join(FLAGS.bench_dir, 'stacks'), 512)
  ap = common.aperture_label(FLAGS.aperture)
  out = []
  for src in FLAGS.lightfield:
    scene = common.scene_name(src)
    slices, gt, _ = stacks.get(scene, src, (0, 0), ap, FLAGS.aperture, 2)
    lr = np.asarray(resample.area_downsample(slices, scale))
    plan = tile_plan(lr.shape[1], lr.shape[2], scale)
    whole, t_whole = timed(lambda: fusion.fuse(list(lr), config=base, key=key, progress=None))
    tiled, t_tiles = timed(lambda: tiles.fuse_tiles(lr, plan, base, key, progress=None))
    rec = {'case': f'hci_x{scale}', 'scene': scene, 'lr': list(lr.shape[1:3]), 'plan': plan._asdict(),
           'whole': {'psnr': common.psnr(whole.fused, gt), 'seconds': t_whole,
                     'main_steps': whole.timings.get('main_steps')},
           'tiles': {'psnr': common.psnr(tiled.fused, gt), 'seconds': t_tiles,
                     'seam_ratio': common.seam_ratio((tiled.fused - gt) ** 2, plan, scale),
                     'seam_ratio_whole': common.seam_ratio((whole.fused - gt) ** 2, plan, scale)}}
    if scale == 1:
      fast_plan = tiles.TilePlan('map_fusion', max(lr.shape[1:3]), 0, (0,), (0,))
      fast, t_fast = timed(lambda: tiles.fuse_tiles(lr, fast_plan, base, key, progress=None))
      rec['x1_fast_path'] = {'psnr': common.psnr(fast.fused, gt), 'seconds': t_fast}
    logging.info('%s', rec)
    out.append(rec)
  return out


def qabf_sf(image: np.ndarray, a: np.ndarray, b: np.ndarray, scale: int) -> dict:
  x = np.asarray(resample.area_downsample(image[None], scale))[0] if scale > 1 else image
  return {'Qabf': float(metrics.qabf(jnp.asarray(x), jnp.asarray(a), jnp.asarray(b))),
          'SF': float(metrics.spatial_frequency(jnp.asarray(x)))}


def read_pair():
  names = sorted(f for f in os.listdir(FLAGS.pair) if f[0] in 'AB')
  return [image_io.read_image(os.path.join(FLAGS.pair, f))[0] for f in names]


def lytro_case(key) -> list[dict]:
  base = app_flags.fusion_config(FLAGS).replace(scale=2)
  a, b = read_pair()
  x = np.stack([a, b])
  plan = tile_plan(*x.shape[1:3], 2)
  tiled, t_tiles = timed(lambda: tiles.fuse_tiles(x, plan, base, key))
  whole, t_whole = timed(lambda: fusion.fuse([a, b], config=base, key=key))
  rec = {'case': 'lytro_x2', 'pair': FLAGS.pair, 'plan': plan._asdict(),
         'whole': dict(qabf_sf(whole.fused, a, b, 2), seconds=t_whole),
         'tiles': dict(qabf_sf(tiled.fused, a, b, 2), seconds=t_tiles)}
  for k in ('Qabf', 'SF'):
    rec['tiles'][f'{k}_vs_whole'] = rec['tiles'][k] / rec['whole'][k] - 1
  return [rec]


def child(args: list[str], env: dict) -> dict:
  """Runs the CLI in a child process: wall time, peak RSS of the child, exit status, its summary.json."""
  t0 = time.perf_counter()
  with tempfile.TemporaryFile('w+') as err:
    proc = subprocess.Popen([sys.executable, '-m', 'dfp_jax'] + args, env=env, stdout=subprocess.DEVNULL,
                            stderr=err, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # This child's own peak resident memory (KiB on Linux).
    seconds = time.perf_counter() - t0
    err.seek(0)
    stderr = err.read()
  returncode = os.waitstatus_to_exitcode(status)
  out_dir = next(a.split('=', 1)[1] for a in args if a.startswith('--output_dir='))
  summary = None
  if returncode == 0:
    with open(os.path.join(out_dir, 'summary.json')) as f:
      summary = json.load(f)
  return {'seconds': seconds, 'returncode': returncode, 'peak_rss_bytes': usage.ru_maxrss * 1024,
          'stderr_tail': stderr[-1500:], 'plan': summary and summary.get('plan'),
          'timings': summary and summary.get('timings')}


def lf_case() -> list[dict]:
  out = os.path.join(FLAGS.work_dir, 'lf_x2')
  res = child([f'--lightfield={FLAGS.lytro_lf}', '--scale=2', f'--output_dir={out}'], dict(os.environ))
  return [dict(res, case='lf_x2', lightfield=FLAGS.lytro_lf)]


def big_case() -> list[dict]:
  folder = os.path.join(FLAGS.work_dir, 'big_inputs')
  os.makedirs(folder, exist_ok=True)
  paths = [os.path.join(folder, f'{n}.png') for n in 'AB']
  if not all(os.path.exists(p) for p in paths):
    for p, im in zip(paths, read_pair()):
      big = cv2.resize((im * 255).round().astype(np.uint8), (6000, 4000), interpolation=cv2.INTER_CUBIC)
      cv2.imwrite(p, big[..., ::-1] if big.ndim == 3 else big)
  out = os.path.join(FLAGS.work_dir, 'big_x1')
  env = dict(os.environ, DFP_JAX_MEMORY_BUDGET=FLAGS.big_cap)
  res = child([f'--inputs={paths[0]},{paths[1]}', '--scale=1', f'--output_dir={out}'], env)
  return [dict(res, case='big_x1', cap=FLAGS.big_cap, size=[4000, 6000],
               made_from=FLAGS.pair + ' (bicubic upsampling)')]


def main(argv):
  del argv
  common.setup()
  bad = set(FLAGS.cases) - set(CASES)
  if bad:
    raise app.UsageError(f'--cases: unknown {sorted(bad)}; choose from {CASES}')
  config = app_flags.fusion_config(FLAGS)
  digest = common.digest(config.replace(scale=1).to_dict(), FLAGS.seed, FLAGS.tile, FLAGS.overlap,
                         FLAGS.aperture)
  done = {r['case'] for r in common.read_jsonl(FLAGS.json, digest)}
  key = jax.random.key(FLAGS.seed)
  runners = {'hci_x2': lambda: hci_case(2, key), 'hci_x1': lambda: hci_case(1, key),
             'lytro_x2': lambda: lytro_case(key), 'lf_x2': lf_case, 'big_x1': big_case}
  for case in FLAGS.cases:
    if case in done:
      logging.info('%s: in %s already', case, FLAGS.json)
      continue
    for r in runners[case]():
      common.append_jsonl(FLAGS.json, dict(r, digest=digest))
  print(report(FLAGS.json, digest))
  return 0


def report(path: str, digest: str) -> str:
  rows = common.read_jsonl(path, digest)
  lines = ['| case | scene | whole | large-image path | difference | seam ratio (tiles / whole) |',
           '|---|---|---|---|---|---|']
  for r in rows:
    if r['case'].startswith('hci'):
      w, t = r['whole'], r['tiles']
      lines.append(f'| {r["case"]} tiles {r["plan"]["tile"]} | {r["scene"]} | {w["psnr"]:.2f} dB, '
                   f'{w["seconds"]:.0f} s | {t["psnr"]:.2f} dB, {t["seconds"]:.0f} s | '
                   f'{t["psnr"] - w["psnr"]:+.2f} dB | {t["seam_ratio"]:.3f} / {t["seam_ratio_whole"]:.3f} |')
      if 'x1_fast_path' in r:
        f = r['x1_fast_path']
        lines.append(f'| {r["case"]} fast path | {r["scene"]} | | {f["psnr"]:.2f} dB, {f["seconds"]:.1f} s | '
                     f'{f["psnr"] - w["psnr"]:+.2f} dB | |')
    elif r['case'] == 'lytro_x2':
      w, t = r['whole'], r['tiles']
      lines.append(f'| lytro_x2 tiles {r["plan"]["tile"]} | {os.path.basename(r["pair"])} | Qabf {w["Qabf"]:.4f} '
                   f'SF {w["SF"]:.2f}, {w["seconds"]:.0f} s | Qabf {t["Qabf"]:.4f} SF {t["SF"]:.2f}, '
                   f'{t["seconds"]:.0f} s | {100 * t["Qabf_vs_whole"]:+.2f}% / {100 * t["SF_vs_whole"]:+.2f}% | |')
    else:
      lines.append(f'| {r["case"]} | | | {r["seconds"]:.0f} s, exit {r["returncode"]}, peak '
                   f'{r["peak_rss_bytes"] / 2 ** 30:.2f} GiB, plan {(r.get("plan") or {}).get("kind")} | | |')
  return '\n'.join(lines)


if __name__ == '__main__':
  define_flags()
  jax.config.parse_flags_with_absl()
  app.run(main)
