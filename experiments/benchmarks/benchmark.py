"""Evaluation suite: DFP against the baselines (and published results) on a dataset, at x1 / x2 / x4.

  python -m experiments.benchmarks.benchmark --dataset=../shared/data/mfifb \
      --output_dir=outputs/bench_mfifb --scales=1,2,4 --methods=average,decision_map,laplacian_pyramid
  python -m experiments.benchmarks.benchmark --dataset=../shared/data/lightfield/hci_dino_33views \
      --output_dir=outputs/bench_hci --scales=1,2 --crop=128,128,256,256        # ground-truth protocol

Datasets:
  * a folder with one subfolder per scene holding the sources (`A.*`, `B.*`, more for stacks, in name
    order), optionally `GT.*` (an all-in-focus ground truth) and `fused/<METHOD>.<ext>` (other methods'
    published results, the MFIFB layout): those are scored with the same metrics at x1 and appear as rows;
  * a light-field folder (HCI or Lytro naming, or views.json): one scene, the protocol of
    `benchmark_gt`: `--lf_planes` refocused slices are the sources and the centre view is the ground
    truth.

Protocol (the papers'): at x1 the sources are fused as they are and scored with the no-reference
metrics (and PSNR/SSIM where a ground truth exists); at x2 and x4 the sources are area-downsampled by the
scale into the low-resolution inputs, every method reconstructs at the sources' size, and the papers'
relative metrics (RMG, REI, RIE, RMGA, RECO) compare the output with the high-resolution sources.

Methods (`--methods`): `dfp` (dfp-jax's configuration flags apply, docs/cli.md), `average`,
`decision_map` (DoubleReblur), `laplacian_pyramid`, each followed at x2/x4 by every `--upsamplers`
entry (`average+bicubic`, ...), and `dip`: the DoubleReblur map fusion super-resolved by a plain deep
image prior (same SKIPnet and Adam, no fusion losses; x2/x4 only). External `fused/` results are always
scored (x1).

Lossy results: 29 of MFIFB's 30 published outputs are JPEG (quality 75). The runner warns when it finds
lossy external results; `--jpeg_quality=Q` passes every method's output (DFP and baselines included)
through the same JPEG round trip before scoring, so like is compared with like. results.md says which.

Outputs in --output_dir: `<scene>/x<s>/<method>.png` (as scored), `<scene>/x<s>/sheet.png` (contact
sheet: inputs, every method, ground truth), `results.json` laid out as
{"scenes": {scene: {method: {"x1"|"x2"|"x4": {metric: value}}}}, "settings": {...}} and `results.md`.
Resumable: a (scene, scale) whose methods are all in results.json with their images is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import baselines
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import resample
from dfp_jax import viz
from dfp_jax.app import flags as app_flags
from dfp_jax.app import main as app_main
from dfp_jax.app import runtime
from experiments import common

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_string('output_dir', 'outputs/benchmark', 'Folder of the results (results.json, results.md, '
                    'images); a rerun with the same settings resumes in it.')
flags.DEFINE_string('dataset', None, 'Scene folders (A.*, B.*, GT.*, fused/<METHOD>.*) or a light field.')
flags.DEFINE_list('scales', ['1', '2', '4'], 'Scales to run (1, 2, 4).')
flags.DEFINE_list('methods', ['dfp', 'average', 'decision_map', 'laplacian_energy', 'laplacian_pyramid',
                              'dip'],
                  'Methods to run (external fused/ results are always scored).')
flags.DEFINE_list('upsamplers', ['bicubic'], 'Upsamplers after the fusion baselines at x2/x4: bicubic, '
                  'lanczos.')
flags.DEFINE_integer('jpeg_quality', 0, 'If > 0, every output goes through a JPEG round trip at this '
                     'quality before scoring (compare with lossy published results).')
flags.DEFINE_list('crop', [], 'y,x,h,w: score only this region of every scene (for quick CPU runs).')
flags.DEFINE_integer('lf_planes', 2, 'Light-field datasets: number of refocused slices (sources).')
flags.DEFINE_integer('dip_iters', 0, 'Steps of the DIP baseline (0 = --iters).')

BASELINES = ('average', 'decision_map', 'laplacian_energy', 'laplacian_pyramid')
KNOWN = BASELINES + ('dfp', 'dip')
LOSSY = ('.jpg', '.jpeg', '.webp')
TABLE1 = ('RMG', 'REI', 'RIE', 'RMGA', 'RECO')


class Scene:
  def __init__(self, name, sources, gt=None, external=None, lossy=()):
    self.name, self.sources, self.gt = name, sources, gt  # [N, H, W, C] float32, [H, W, C] or None.
    self.external = external or {}  # method -> image at the sources' size.
    self.lossy = list(lossy)


def _crop(x, crop):
  if not crop:
    return x
  y, xx, h, w = crop
  return x[..., y:y + h, xx:xx + w, :]


def load_scenes(dataset: str, crop) -> list[Scene]:
  if not os.path.isdir(dataset):
    raise errors.InputError(f'{dataset}: --dataset is not a folder')
  try:
    lf = lightfield.load_light_field(dataset, crop=tuple(crop) if crop else None)
  except lightfield.NoViewsError:  # Not a light field: scene folders.
    lf = None
  if lf is not None:
    case = common.at_scale(common.focal_stack(lf, FLAGS.lf_planes), lf.center_view, 1)
    name = os.path.basename(os.path.normpath(dataset))
    return [Scene(name, case.lr, case.gt)]
  scenes = []
  for name in sorted(os.listdir(dataset)):
    folder = os.path.join(dataset, name)
    if name.startswith('.') or not os.path.isdir(folder):
      continue
    files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in image_io.READ_EXTENSIONS)
    gt_files = [f for f in files if os.path.splitext(f)[0].lower() == 'gt']
    src = [os.path.join(folder, f) for f in files if f not in gt_files]
    if len(src) < 2:
      logging.warning('%s: fewer than 2 source images, skipped', folder)
      continue
    images, _ = image_io.load_inputs(src)
    sources = _crop(np.stack(images), crop)
    gt = None
    if gt_files:
      gt = _crop(_match_channels(image_io.read_image(os.path.join(folder, gt_files[0]))[0],
                                 sources.shape[-1]), crop)
      if gt.shape != sources.shape[1:]:
        logging.warning('%s: ground truth %s differs from the sources %s in size; ignored',
                        os.path.join(folder, gt_files[0]), gt.shape, sources.shape[1:])
        gt = None
    external, lossy = {}, []
    fdir = os.path.join(folder, 'fused')
    if os.path.isdir(fdir):
      for f in sorted(os.listdir(fdir)):
        stem, ext = os.path.splitext(f)
        if ext.lower() not in image_io.READ_EXTENSIONS:
          continue
        im = _crop(_match_channels(image_io.read_image(os.path.join(fdir, f))[0], sources.shape[-1]), crop)
        if im.shape != sources.shape[1:]:
          logging.warning('%s: size %s differs from the sources %s, skipped', f, im.shape, sources.shape[1:])
          continue
        external[stem] = im
        if ext.lower() in LOSSY:
          lossy.append(stem)
    scenes.append(Scene(name, sources, gt, external, lossy))
  if not scenes:
    raise errors.InputError(f'{dataset}: no scenes (expected <scene>/A.*, B.* or a light-field folder)')
  return scenes


def _match_channels(im: np.ndarray, c: int) -> np.ndarray:
  if im.shape[-1] == c:
    return im
  return np.repeat(im, 3, -1) if im.shape[-1] == 1 else im.mean(-1, keepdims=True)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
  u8 = image_io.to_integer_image(image, 8)
  ok, buf = cv2.imencode('.jpg', u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
  out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
  out = out[..., None] if out.ndim == 2 else out[..., ::-1]
  return out.astype(np.float32) / 255.0


def score(out: np.ndarray, hr_sources: np.ndarray, gt, scale: int) -> dict:
  o = jnp.asarray(out)
  src = jnp.asarray(hr_sources)
  m = {}
  if src.shape[0] == 2:
    m.update(metrics.paper_metrics(o, src[0], src[1]))
  m.update(metrics.reference_free_metrics(o, src))
  if gt is not None:
    g = gt[:out.shape[0], :out.shape[1]]
    m.update(metrics.gt_metrics(o, jnp.asarray(g)))
  return {k: float(v) for k, v in m.items()}


def run_methods(scene: Scene, s: int, config, methods, upsamplers) -> dict:
  """{method name: output image at the sources' size} for one scene and scale."""
  n, h, w, c = scene.sources.shape
  hr = scene.sources[:, :h // s * s, :w // s * s]
  lr = resample.area_downsample(hr, s)
  x = jnp.asarray(lr)
  outs = {}
  maps = None
  for name in methods:
    if name == 'dfp':
      result = fusion.fuse(list(lr), config=config.replace(scale=s), key=jax.random.key(FLAGS.seed))
      outs['dfp'] = result.fused
      maps = jnp.asarray(result.decision_maps_raw)
    elif name in BASELINES:
      if name == 'average':
        fused = baselines.average_fusion(x)
      elif name == 'decision_map':
        fused = baselines.decision_map_fusion(x, maps, config.focus)
      elif name == 'laplacian_energy':
        fused = jnp.asarray(common.laplacian_energy_fusion(lr))
      else:
        fused = baselines.laplacian_pyramid_fusion(x)
      if s == 1:
        outs[name] = np.asarray(fused)
      for up in (upsamplers if s > 1 else ()):
        outs[f'{name}+{up}'] = np.asarray(baselines.upsample(fused, s, up))
    elif name == 'dip' and s > 1:
      fused = np.asarray(baselines.decision_map_fusion(x, maps, config.focus))
      outs['dip'], _ = baselines.dip_superresolve(fused, config.replace(scale=s),
                                               key=jax.random.key(FLAGS.seed),
                                               iters=FLAGS.dip_iters or config.iters)
  return outs, hr, lr


def write_markdown(path: str, results: dict, scales, jpeg_quality: int, lossy: bool):
  scenes = results['scenes']
  methods = sorted({m for sc in scenes.values() for m in sc})

  def mean(method, scale, metric):
    vals = [sc[method][scale][metric] for sc in scenes.values()
            if method in sc and scale in sc[method] and metric in sc[method][scale]]
    vals = [v for v in vals if np.isfinite(v)]
    return (float(np.mean(vals)), len(vals)) if vals else (None, 0)

  def table(title, keys, scale_list, lower_better=()):
    rows = [m for m in methods if any(mean(m, s, keys[0])[0] is not None for s in scale_list)]
    if not rows:
      return []
    cols = [(s, k) for s in scale_list for k in keys]
    best = {}
    for col in cols:
      vals = [(mean(m, *col)[0], m) for m in rows if mean(m, *col)[0] is not None]
      if vals:
        best[col] = (min if col[1] in lower_better else max)(vals)[1]
    out = [f'### {title}', '', '| method | ' + ' | '.join(f'{k} {s}' for s, k in cols) + ' |',
           '|---' * (len(cols) + 1) + '|']
    for m in rows:
      cells = []
      for col in cols:
        v, _ = mean(m, *col)
        txt = '' if v is None else f'{v:.4f}' if abs(v) < 100 else f'{v:.1f}'
        cells.append(f'**{txt}**' if best.get(col) == m and txt else txt)
      out.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return out + ['']

  lines = ['# Benchmark results', '',
           f'Scenes: {len(scenes)} ({", ".join(scenes)}). Values are means over scenes; best per column '
           'in bold (lower is better for RMG, REI, RIE, RMGA, RECO; higher for the others).',
           f'JPEG round trip before scoring: {"quality " + str(jpeg_quality) if jpeg_quality else "none"}'
           + (' (some external results are lossy JPEG: compare with care or rerun with '
              '--jpeg_quality=75)' if lossy and not jpeg_quality else '') + '.', '']
  sr = [f'x{s}' for s in scales if s > 1]
  lines += table('Papers\' Table 1 (relative to the HR sources; lower is better)', list(TABLE1), sr,
                 lower_better=TABLE1)
  all_s = [f'x{s}' for s in scales]
  lines += table('Against the ground truth', ['PSNR', 'SSIM'], all_s)
  lines += table('No-reference fusion metrics', ['Qabf', 'NMI', 'Qy', 'SF', 'AG'], all_s)
  with open(path + '.tmp', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(path + '.tmp', path)


def main(argv):
  del argv
  if not FLAGS.dataset:
    app_main.fail('--dataset is required')
  try:
    common.setup()
    config = app_flags.fusion_config(FLAGS)
    scales = [int(v) for v in FLAGS.scales]
    if any(s not in (1, 2, 4) for s in scales):
      raise ValueError(f'--scales must be among 1, 2, 4, got {",".join(FLAGS.scales)}')
    unknown = [m for m in FLAGS.methods if m not in KNOWN]
    if unknown:
      raise ValueError(f'unknown --methods {unknown}; choose from {", ".join(KNOWN)}')
    methods = list(FLAGS.methods)
    if 'dip' in methods or 'decision_map' in methods:  # Both use the DoubleReblur maps of dfp if run.
      methods = sorted(methods, key=lambda m: 0 if m == 'dfp' else 1)
    crop = [int(v) for v in FLAGS.crop] if FLAGS.crop else None
    scenes = load_scenes(FLAGS.dataset, crop)
  except app_main.USER_ERRORS as e:
    app_main.fail(str(e))
  out_dir = os.path.abspath(FLAGS.output_dir)
  os.makedirs(out_dir, exist_ok=True)
  res_path = os.path.join(out_dir, 'results.json')
  settings = {'dataset': os.path.abspath(FLAGS.dataset), 'upsamplers': FLAGS.upsamplers,
              'jpeg_quality': FLAGS.jpeg_quality, 'crop': crop, 'seed': FLAGS.seed,
              'lf_planes': FLAGS.lf_planes, 'dip_iters': FLAGS.dip_iters, 'config': config.to_dict()}
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
  results = {'scenes': {}}
  if os.path.exists(res_path):
    try:
      with open(res_path) as f:
        previous = json.load(f)
      if previous.get('settings_sha256') == digest:
        results = previous
      else:
        os.replace(res_path, res_path + '.old')
        logging.warning('%s was made with other settings: moved to results.json.old, starting again',
                        res_path)
    except ValueError:
      logging.warning('%s unreadable: starting again', res_path)
  results['settings_sha256'] = digest
  lossy = sorted({m for sc in scenes for m in sc.lossy})
  if lossy and not FLAGS.jpeg_quality:
    logging.warning('external results %s are lossy (JPEG); scores are not comparable with lossless '
                    'outputs: rerun with --jpeg_quality=75 to pass every output through the same JPEG',
                    ', '.join(lossy))
  results['settings'] = {'dataset': os.path.abspath(FLAGS.dataset), 'scales': scales,
                         'methods': methods, 'upsamplers': FLAGS.upsamplers,
                         'jpeg_quality': FLAGS.jpeg_quality, 'crop': crop, 'config': config.to_dict(),
                         'versions': runtime.versions(), 'backend': jax.default_backend()}
  units = [(sc, s) for sc in scenes for s in scales]
  t0, done = time.perf_counter(), 0
  for k, (sc, s) in enumerate(units):
    key = f'x{s}'
    folder = os.path.join(out_dir, sc.name, key)
    entry = results['scenes'].setdefault(sc.name, {})
    expected = _expected_methods(methods, FLAGS.upsamplers, s) + (list(sc.external) if s == 1 else [])
    if all(key in entry.get(m, {}) and os.path.exists(os.path.join(folder, f'{_fname(m)}.png'))
           for m in expected):
      logging.info('[benchmark] %s %s: already scored, skipped', sc.name, key)
      continue
    try:
      outs, hr, lr = run_methods(sc, s, config, methods, FLAGS.upsamplers)
    except app_main.USER_ERRORS as e:  # E.g. a crop too small for the network at x4: record, go on.
      logging.error('[benchmark] %s %s failed: %s', sc.name, key, e)
      results.setdefault('errors', {})[f'{sc.name}/{key}'] = str(e)
      image_io.write_json(res_path, results)
      continue
    if s == 1:
      outs.update(sc.external)
    os.makedirs(folder, exist_ok=True)
    for m, im in outs.items():
      im = np.clip(np.asarray(im, np.float32), 0, 1)
      if FLAGS.jpeg_quality and m not in sc.lossy:  # Published JPEGs are not compressed twice.
        im = jpeg_round_trip(im, FLAGS.jpeg_quality)
      image_io.write_image(os.path.join(folder, f'{_fname(m)}.png'), im)
      entry.setdefault(m, {})[key] = score(im, hr, sc.gt, s)
    tiles = [viz.resize_to(x, hr.shape[1], hr.shape[2], nearest=True) for x in lr]
    caps = [f'input {i} ({lr.shape[1]}x{lr.shape[2]})' for i in range(len(lr))]
    tiles += [np.clip(np.asarray(outs[m]), 0, 1) for m in outs]
    caps += list(outs)
    if sc.gt is not None:
      tiles.append(sc.gt[:hr.shape[1], :hr.shape[2]])
      caps.append('ground truth')
    image_io.write_image(os.path.join(folder, 'sheet.png'), viz.side_by_side(tiles, caps))
    image_io.write_json(res_path, results)
    write_markdown(os.path.join(out_dir, 'results.md'), results, scales, FLAGS.jpeg_quality, bool(lossy))
    done += 1
    el = time.perf_counter() - t0
    eta = el / done * (len(units) - k - 1)
    logging.info('[benchmark] %s %s done (%d/%d), ETA %.0f s', sc.name, key, k + 1, len(units), eta)
  image_io.write_json(res_path, results)
  write_markdown(os.path.join(out_dir, 'results.md'), results, scales, FLAGS.jpeg_quality, bool(lossy))
  logging.info('[benchmark] results in %s', out_dir)
  return 0


def _fname(method: str) -> str:
  return method.replace('+', '_')


def _expected_methods(methods, upsamplers, s):
  out = []
  for m in methods:
    if m in BASELINES:
      out += [m] if s == 1 else [f'{m}+{u}' for u in upsamplers]
    elif m == 'dfp' or (m == 'dip' and s > 1):
      out.append(m)
  return out


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main)
