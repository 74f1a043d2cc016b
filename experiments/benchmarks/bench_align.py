"""Registration benchmark (issue 23 section 1): how accurately the inputs are registered under defocus
differences, against other estimators, and what registration buys the fusion.

Protocol.
  1. Accuracy on synthetic warps with exact ground truth (--accuracy). Sources: the centre views of the
     light fields of --lightfield (`lightfield.load_light_field(folder).center_view`, all in focus) and
     the A image of every pair folder under --mfifb (`image_io.read_image`). For every source, every warp
     W of WARPS (shifts up to 6.1 px, rotations up to 1.5 deg, magnifications up to 4 %, two
     combinations; `align.centred_similarity`) plus --random_warps random ones (seed --seed) and every
     blur sigma of --sigmas:
       * the moving frame is the source blurred by a Gaussian of sigma (a defocus of the moving frame
         only; 0 = none) and rendered under W: upsampled x2 (cubic), warped (cubic), area-downsampled
         back (a sensor integrates over its pixels); the reference is the sharp source through the same
         resampling with the identity; both are cropped by W's largest displacement + 3 px, so no border
         is brought in. The truth: moving(W x) = the blurred source at reference pixel x;
       * each method of --methods estimates the reference -> moving transform (`align`'s convention):
           - `ecc`: `align.estimate_transform` as the jobs run it (pyramid ECC, similarity model);
           - `sift`: `align.features_transform` alone (SIFT + RANSAC, similarity; ECC's fallback start);
           - `ecc_ms`: `cv2.findTransformECCMultiScale` (affine from the identity, as many levels as
             ecc's pyramid, projected on the nearest similarity), where this OpenCV has it;
       * error = `align.rms_difference` between the estimate and W over the cropped frame (px); also the
         largest distance over the frame (at a corner: the maps are affine). A failure = the method
         raised, or its error is above --fail_px.
     Per method: runs, failures, median / p95 / max error (over the runs that returned a transform),
     median seconds (estimation only, --opencv_threads OpenCV threads); and per blur sigma.
  2. DFP end to end (--dfp): the light field --dfp_lightfield (HCI dino), region --dfp_region of
     --dfp_region_size pixels, two refocused slices (`common.Stacks`, the cache benchmark_gt and
     bench_large share under --bench_dir, all views) area-downsampled by --dfp_scale (the inputs, 128 x
     128 by default); the second input is moved by --dfp_shift, --dfp_rotation and --dfp_magnification
     (`align.centred_similarity`, cv2.warpAffine, cubic, at the input size), then the two are registered
     by the single-scene job's step (`dfp_jax.app.scene.register`: `align.align_inputs`, its validity
     masks go to the fusion) and fused (`fusion.fuse`, key --seed) at --dfp_scale. Rows: the unwarped
     inputs (--align=off), the warped inputs with --align=off, and with --align (default auto). Scores:
     PSNR against the centre view (`common.psnr`), and on the interior (the output border that the
     motion can leave uncovered cropped: scale x (ceil(largest displacement) + 1) pixels); the error of
     the estimated transform against the applied one (`align.rms_difference`, input px).
     The configuration flags are dfp-jax's (docs/cli.md; --scale is set from --dfp_scale), the
     registration flags too (--align_model, --align_reference, --align_chain; --align picks the
     registered row's mode).
  3. Everything goes to --json (one JSON object: the protocol, versions, configuration, every
     accuracy run, the summaries and the DFP rows); the markdown tables are printed and, with --table,
     written.

  python -m experiments.benchmarks.bench_align --json=outputs/bench_align.json --table=outputs/bench_align.md
  python -m experiments.benchmarks.bench_align --nodfp --random_warps=20 --sigmas=0,1,2,3,4   # larger grid
  python -m experiments.benchmarks.bench_align --noaccuracy --iters=200 --mask_iters=100       # DFP only

--noaccuracy / --nodfp / --iters / --mask_iters shorten a run. Results and their command:
docs/benchmarks.md "Registration".
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import sys
import time
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import cv2
import jax
import numpy as np

from dfp_jax import align
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import resample
from dfp_jax.app import flags as app_flags
from dfp_jax.app import runtime
from dfp_jax.app import scene as scene_lib
from experiments import common

PROTOCOL = 'bench_align/1'
METHODS = ('ecc', 'sift', 'ecc_ms')
METHOD_LABELS = {'ecc': 'ecc (align.estimate_transform, default)', 'sift': 'sift (align.features_transform)',
                 'ecc_ms': 'ecc_ms (cv2.findTransformECCMultiScale)'}
SUPERSAMPLE = 2  # The moving frame is warped at this multiple of its size, then area-downsampled.


class Warp(NamedTuple):
  """A similarity about the frame centre (`align.centred_similarity`)."""
  label: str
  shift: tuple  # (dx, dy) px.
  angle_deg: float
  magnification: float  # 0.01 = +1 %.

  def matrix(self, shape) -> np.ndarray:
    return align.centred_similarity(shape, self.shift, self.angle_deg, self.magnification)


WARPS = (
    Warp('shift 0.7 px', (0.6, -0.3), 0.0, 0.0),
    Warp('shift 6.1 px', (-5.0, 3.5), 0.0, 0.0),
    Warp('rotation +0.7 deg', (0.0, 0.0), 0.7, 0.0),
    Warp('rotation -1.5 deg', (0.0, 0.0), -1.5, 0.0),
    Warp('magnification +1.5 %', (0.0, 0.0), 0.0, 0.015),
    Warp('magnification -4 %', (0.0, 0.0), 0.0, -0.04),
    Warp('2.8 px, +0.5 deg, +2 %', (2.2, 1.7), 0.5, 0.02),
    Warp('5.0 px, -1.2 deg, -3 %', (-3.0, -4.0), -1.2, -0.03),
)

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (defined when it runs, so that tests and other scripts import its functions
  without them)."""
  common.define_flags()
  app_flags.define_config_flags((align.AlignConfig,))
  flags.DEFINE_bool('accuracy', True, 'Run part 1: estimation accuracy on synthetic warps.')
  flags.DEFINE_list('lightfield', list(common.HCI_SCENES), 'Light-field folders whose centre views are '
                    'accuracy sources.')
  flags.DEFINE_string('mfifb', '../shared/data/mfifb', 'Folder of pair folders; the A.* image of each is '
                      'an accuracy source (empty: none).')
  flags.DEFINE_list('sigmas', ['0', '1.5', '3'], 'Gaussian blur sigmas (px) of the moving frame only.')
  flags.DEFINE_integer('random_warps', 0, 'Random warps added to WARPS (shift 0.5-6 px, +-1.5 deg, +-4 %; '
                       'seed --seed).')
  flags.DEFINE_list('methods', list(METHODS), f'Estimators: {", ".join(METHODS)} (ecc_ms only where this '
                    'OpenCV has findTransformECCMultiScale).')
  flags.DEFINE_float('fail_px', 1.0, 'An estimate whose RMS error is above this (px) is a failure.')
  flags.DEFINE_integer('opencv_threads', 1, 'cv2.setNumThreads for the whole run (timings; 0 = OpenCV\'s '
                       'default).')
  flags.DEFINE_bool('dfp', True, 'Run part 2: DFP on a warped HCI pair, registration off vs --align.')
  flags.DEFINE_string('dfp_lightfield', common.HCI_DINO, 'Light field of the DFP case.')
  flags.DEFINE_string('dfp_region', '128:128', 'Top-left corner y:x of the DFP case\'s region (view px).')
  flags.DEFINE_integer('dfp_region_size', 256, 'Side of the DFP case\'s region (view px).')
  flags.DEFINE_integer('dfp_scale', 2, 'Scale of the DFP case (the inputs are region_size / scale px).')
  flags.DEFINE_list('dfp_shift', ['1.5', '0'], 'Shift dx,dy (input px) of the second input.')
  flags.DEFINE_float('dfp_rotation', 0.3, 'Rotation (deg) of the second input about its centre.')
  flags.DEFINE_float('dfp_magnification', 0.01, 'Magnification of the second input (0.01 = +1 %).')
  flags.DEFINE_string('bench_dir', 'outputs/benchmark_gt', 'Focal-stack cache (shared with benchmark_gt).')
  flags.DEFINE_string('json', 'outputs/bench_align.json', 'Write the results here (one JSON object).')
  flags.DEFINE_string('table', None, 'Also write the markdown tables to this file.')


# ---------------------------------------------------------------------------------------------------
# Part 1: accuracy.


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur of sigma px ([H, W, C] kept); sigma 0 returns the image."""
  if sigma <= 0:
    return image
  return cv2.GaussianBlur(image, (0, 0), sigma).reshape(image.shape)


def render(image: np.ndarray, w: np.ndarray, supersample: int = SUPERSAMPLE) -> np.ndarray:
  """`image` [H, W, C] seen under the reference -> moving transform w: out(w x) = image(x), rendered at
  `supersample` x the size (cubic) and area-downsampled back; clipped to [0, 1]."""
  h, wd = image.shape[:2]
  f = supersample
  up = cv2.resize(image, (wd * f, h * f), interpolation=cv2.INTER_CUBIC)
  wu = align.conjugate(w, align.scale_matrix(f, f))
  # Without WARP_INVERSE_MAP, dst(y) = src(M^-1 y): dst(M u) = src(u).
  out = cv2.warpPerspective(up, wu, (wd * f, h * f), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
  out = cv2.resize(out, (wd, h), interpolation=cv2.INTER_AREA)
  return np.clip(out.reshape(h, wd, -1), 0.0, 1.0).astype(np.float32)


def crop_margin(w: np.ndarray, shape) -> int:
  """Pixels cut at each border so that no rendered pixel comes from outside the source."""
  return int(math.ceil(align.max_displacement(w, shape))) + 3


def cropped_truth(w: np.ndarray, margin: int) -> np.ndarray:
  """w in the coordinates of both frames cropped by `margin` at each border."""
  t = np.array([[1.0, 0.0, margin], [0.0, 1.0, margin], [0.0, 0.0, 1.0]])
  return np.linalg.inv(t) @ w @ t


def max_error(w_est: np.ndarray, w_true: np.ndarray, shape) -> float:
  """Largest distance (px) between where the two affine maps send a pixel of the frame (at a corner:
  the norm of an affine map's difference is convex)."""
  h, wd = shape[:2]
  corners = np.array([[0.0, 0.0], [wd - 1.0, 0.0], [0.0, h - 1.0], [wd - 1.0, h - 1.0]])
  return float(np.max(np.linalg.norm(align.apply(w_est, corners) - align.apply(w_true, corners), axis=-1)))


def has_ecc_multiscale() -> bool:
  return hasattr(cv2, 'findTransformECCMultiScale') and hasattr(cv2, 'ECCParameters')


def ecc_multiscale(moving: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """cv2.findTransformECCMultiScale from the identity (affine, as many levels as `align.pyramid` has,
  align's ECC smoothing and criteria) at align's capped size, projected on the nearest similarity."""
  ref_pyr = align.pyramid(align.to_luma(reference))
  (ref, s), (mov, _) = ref_pyr[0], align.pyramid(align.to_luma(moving))[0]
  params = cv2.ECCParameters()
  params.motionType = cv2.MOTION_AFFINE
  params.nlevels = len(ref_pyr)
  params.gaussFiltSize = align.DEFAULT_GAUSS_SIZE
  # The stopping criteria of align's ECC levels.
  params.criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, align.ECC_ITERATIONS, align.ECC_EPS)
  _, out = cv2.findTransformECCMultiScale(ref, mov, np.eye(2, 3, dtype=np.float32), params)
  wl = np.eye(3)
  wl[:2] = out
  return align.nearest_similarity(np.linalg.inv(s) @ wl @ s, reference.shape)


def estimate(method: str, moving: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """The reference -> moving transform (3 x 3) by `method`; raises what the method raises."""
  if method == 'ecc':
    return align.estimate_transform(moving, reference)[0]
  if method == 'sift':
    return align.features_transform(align.to_luma(moving), align.to_luma(reference))[0]
  if method == 'ecc_ms':
    return ecc_multiscale(moving, reference)
  raise ValueError(f'unknown method {method!r}')


def available_methods(methods) -> list[str]:
  """`methods` less ecc_ms where this OpenCV lacks it (logged)."""
  out = list(methods)
  if 'ecc_ms' in out and not has_ecc_multiscale():
    logging.warning('OpenCV %s has no findTransformECCMultiScale: ecc_ms left out', cv2.__version__)
    out.remove('ecc_ms')
  return out


def accuracy_rows(name: str, image: np.ndarray, warps, sigmas, methods, fail_px: float = 1.0) -> list[dict]:
  """One row per (warp, sigma, method) for source `image` [H, W, C] float32 in [0, 1]: the fields
  image, size (of the cropped frames), warp, shift, angle_deg, magnification, sigma, method, status
  ('ok' or 'error: ...'), error_px (RMS over the frame; NaN when the method raised), max_error_px,
  seconds, failed (raised, or error_px > fail_px)."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  shape = image.shape[:2]
  reference_full = render(image, np.eye(3))  # The same resampling as the moving frames.
  rows = []
  for sigma in sigmas:
    source = blur(image, float(sigma))
    for warp in warps:
      w = warp.matrix(shape)
      m = crop_margin(w, shape)
      sl = np.s_[m:shape[0] - m, m:shape[1] - m]
      ref = np.ascontiguousarray(reference_full[sl])
      mov = np.ascontiguousarray(render(source, w)[sl])
      truth = cropped_truth(w, m)
      for method in methods:
        t0 = time.perf_counter()
        try:
          w_est = estimate(method, mov, ref)
          status = 'ok'
        except (cv2.error, ValueError) as e:
          w_est, status = None, 'error: ' + (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
        seconds = time.perf_counter() - t0
        err = float('nan') if w_est is None else align.rms_difference(w_est, truth, ref.shape)
        rows.append({'image': name, 'size': list(ref.shape[:2]), 'warp': warp.label,
                     'shift': [float(v) for v in warp.shift], 'angle_deg': float(warp.angle_deg),
                     'magnification': float(warp.magnification), 'sigma': float(sigma), 'method': method,
                     'status': status, 'error_px': err,
                     'max_error_px': float('nan') if w_est is None else max_error(w_est, truth, ref.shape),
                     'seconds': seconds, 'failed': bool(w_est is None or not err <= fail_px)})
  return rows


def summarize(rows) -> dict:
  """runs, failures (raised + above fail_px), raised, median / p95 / max of error_px and max of
  max_error_px over the runs that returned, median seconds."""
  e = np.array([r['error_px'] for r in rows], float)
  ok = np.isfinite(e)
  emax = np.array([r['max_error_px'] for r in rows], float)[ok]
  stat = lambda fn, v: float(fn(v)) if v.size else float('nan')  # pylint: disable=unnecessary-lambda-assignment
  return {'runs': len(rows), 'failures': int(sum(r['failed'] for r in rows)), 'raised': int((~ok).sum()),
          'median_px': stat(np.median, e[ok]), 'p95_px': stat(lambda v: np.percentile(v, 95), e[ok]),
          'max_px': stat(np.max, e[ok]), 'max_corner_px': stat(np.max, emax),
          'median_s': float(np.median([r['seconds'] for r in rows])) if rows else float('nan')}


def random_warps(count: int, seed: int) -> list[Warp]:
  rng = np.random.default_rng(seed)
  out = []
  for k in range(count):
    r, phi = rng.uniform(0.5, 6.0), rng.uniform(0.0, 2 * math.pi)
    a, m = rng.uniform(-1.5, 1.5), rng.uniform(-0.04, 0.04)
    out.append(Warp(f'random {k}: {r:.1f} px, {a:+.2f} deg, {100 * m:+.1f} %',
                    (r * math.cos(phi), r * math.sin(phi)), a, m))
  return out


def sources() -> list[tuple[str, np.ndarray]]:
  """(name, image) of the accuracy sources: light-field centre views, then the MFIFB A images."""
  out = []
  for folder in FLAGS.lightfield:
    lf = lightfield.load_light_field(folder)
    out.append((common.scene_name(folder), np.asarray(lf.center_view, np.float32)))
  if FLAGS.mfifb:
    for pair in sorted(glob.glob(os.path.join(FLAGS.mfifb, '*', ''))):
      found = sorted(glob.glob(os.path.join(pair, 'A.*')))
      if found:
        out.append((os.path.basename(os.path.normpath(pair)), image_io.read_image(found[0])[0]))
  return out


def run_accuracy(methods) -> dict:
  warps = list(WARPS) + random_warps(FLAGS.random_warps, FLAGS.seed)
  sigmas = [float(s) for s in FLAGS.sigmas]
  rows, names = [], []
  t0 = time.perf_counter()
  for name, image in sources():
    t1 = time.perf_counter()
    rs = accuracy_rows(name, image, warps, sigmas, methods, FLAGS.fail_px)
    rows += rs
    names.append({'name': name, 'size': list(image.shape)})
    logging.info('accuracy %s (%dx%d): %s (%.1f s)', name, image.shape[0], image.shape[1], ', '.join(
        f'{m} median {summarize([r for r in rs if r["method"] == m])["median_px"]:.3f} px' for m in methods),
                 time.perf_counter() - t1)
  return {'sources': names, 'warps': [w._asdict() for w in warps], 'sigmas': sigmas, 'methods': methods,
          'fail_px': FLAGS.fail_px, 'seconds': time.perf_counter() - t0,
          'summary': {m: summarize([r for r in rows if r['method'] == m]) for m in methods},
          'by_sigma': {m: {f'{s:g}': summarize([r for r in rows if r['method'] == m and r['sigma'] == s])
                           for s in sigmas} for m in methods},
          'rows': rows}


# ---------------------------------------------------------------------------------------------------
# Part 2: DFP on a warped pair.


def move(image: np.ndarray, w: np.ndarray) -> np.ndarray:
  """`image` [H, W, C] under the reference -> moving transform w at its own size: out(w x) = image(x)
  (cv2.warpAffine, cubic, reflected borders, clipped to [0, 1])."""
  h, wd = image.shape[:2]
  out = cv2.warpAffine(np.ascontiguousarray(image, np.float32), w[:2], (wd, h), flags=cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REFLECT)
  return np.clip(out.reshape(image.shape), 0.0, 1.0)


def run_dfp(config, align_config: align.AlignConfig) -> dict:
  s, size = FLAGS.dfp_scale, FLAGS.dfp_region_size
  (y, x), = common.parse_corners([FLAGS.dfp_region], 'dfp_region')
  scene = common.scene_name(FLAGS.dfp_lightfield)
  stacks = common.Stacks(os.path.join(FLAGS.bench_dir, 'stacks'), size)
  slices, gt, planes = stacks.get(scene, FLAGS.dfp_lightfield, (y, x), 'inf', math.inf, 2)
  lr = resample.area_downsample(np.asarray(slices, np.float32), s)
  shape = lr.shape[1:3]
  w_true = align.centred_similarity(shape, tuple(float(v) for v in FLAGS.dfp_shift), FLAGS.dfp_rotation,
                                    FLAGS.dfp_magnification)
  moved = move(lr[1], w_true)
  border = s * (int(math.ceil(align.max_displacement(w_true, shape))) + 1)  # Output px, for the interior.
  paths = [f'slice{i}.png' for i in range(2)]  # The names scene.register reports.
  mode = align_config.mode
  runs = [('unwarped', [lr[0], lr[1]], 'off'), ('warped', [lr[0], moved], 'off')]
  if mode != 'off':
    runs.append(('warped', [lr[0], moved], mode))
  key = jax.random.key(FLAGS.seed)
  rows = []
  for inputs, images, m in runs:
    t0 = time.perf_counter()
    images, valid, summary = scene_lib.register(images, paths, dataclasses.replace(align_config, mode=m))
    t_reg = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = fusion.fuse(images, config=config, key=key, valid=valid, progress=None)
    seconds = time.perf_counter() - t1
    row = {'inputs': inputs, 'align': m, 'PSNR': common.psnr(result.fused, gt),
           'PSNR_interior': float(metrics.psnr(result.fused, gt[:result.fused.shape[0], :result.fused.shape[1]],
                                               crop=border)),
           'interior_crop_px': border, 'fuse_s': seconds, 'register_s': t_reg,
           'main_steps': int(result.timings.get('main_steps', 0)),
           'mask_steps': int(result.timings.get('mask_steps', 0)), 'alignment': summary}
    if summary is not None:
      w_est = np.asarray(summary['inputs'][1]['matrix'], float)
      row['transform_error_px'] = align.rms_difference(w_est, w_true, shape)
      row['resampled'] = bool(summary['inputs'][1]['warped'])
    rows.append(row)
    logging.info('DFP %s inputs, --align=%s: PSNR %.2f dB (interior %.2f dB), %.0f s', inputs, m, row['PSNR'],
                 row['PSNR_interior'], seconds)
  return {'lightfield': os.path.abspath(FLAGS.dfp_lightfield), 'region': [y, x], 'region_size': size,
          'scale': s, 'planes': np.asarray(planes).tolist(), 'lr_size': list(shape),
          'warp': {'shift': [float(v) for v in FLAGS.dfp_shift], 'angle_deg': FLAGS.dfp_rotation,
                   'magnification': FLAGS.dfp_magnification, 'matrix': w_true.tolist(),
                   'max_displacement_px': align.max_displacement(w_true, shape)},
          'rows': rows}


# ---------------------------------------------------------------------------------------------------
# Tables.


def tables(res: dict) -> str:
  out = []
  acc = res.get('accuracy')
  if acc:
    n_src, n_w, n_s = len(acc['sources']), len(acc['warps']), len(acc['sigmas'])
    out += [f'### Registration accuracy: {n_src} sources x {n_w} warps x {n_s} blurs of the moving frame '
            f'(sigma {", ".join(f"{s:g}" for s in acc["sigmas"])} px); error = RMS over the frame of '
            '|W_est x - W x| (px)', '',
            f'| method | runs | failures (raised or > {acc["fail_px"]:g} px) | median | p95 | max | '
            'max corner error | median time (s) |', '|---|---|---|---|---|---|---|---|']
    for m, s in acc['summary'].items():
      out.append(f'| {METHOD_LABELS.get(m, m)} | {s["runs"]} | {s["failures"]} ({s["raised"]} raised) | '
                 f'{s["median_px"]:.3f} | {s["p95_px"]:.3f} | {s["max_px"]:.3f} | {s["max_corner_px"]:.3f} | '
                 f'{s["median_s"]:.3f} |')
    sig = [f'{s:g}' for s in acc['sigmas']]
    out += ['', '### By blur sigma of the moving frame: median / p95 / max error (px), failures', '',
            '| method | ' + ' | '.join(f'sigma {s}' for s in sig) + ' |', '|---|' + '---|' * len(sig)]
    for m, by in acc['by_sigma'].items():
      out.append(f'| {m} | ' + ' | '.join(f'{by[s]["median_px"]:.3f} / {by[s]["p95_px"]:.3f} / '
                                          f'{by[s]["max_px"]:.3f}, {by[s]["failures"]}' for s in sig) + ' |')
  dfp = res.get('dfp')
  if dfp:
    w = dfp['warp']
    h, wd = dfp['lr_size']
    out += ['', f'### DFP x{dfp["scale"]}, {os.path.basename(dfp["lightfield"])} region '
            f'{dfp["region"][0]}:{dfp["region"][1]} ({dfp["region_size"]} px, inputs {h}x{wd}); the second '
            f'input moved by ({w["shift"][0]:g}, {w["shift"][1]:g}) px, {w["angle_deg"]:g} deg, '
            f'{100 * w["magnification"]:g} % (largest displacement {w["max_displacement_px"]:.2f} px); PSNR '
            'against the centre view', '',
            '| inputs | --align | PSNR (dB) | PSNR interior (dB) | transform error (px) | resampled | '
            'steps (mask + main) | fuse (s) |', '|---|---|---|---|---|---|---|---|']
    for r in dfp['rows']:
      err = f'{r["transform_error_px"]:.3f}' if 'transform_error_px' in r else ''
      out.append(f'| {r["inputs"]} | {r["align"]} | {r["PSNR"]:.2f} | {r["PSNR_interior"]:.2f} | {err} | '
                 f'{r.get("resampled", "")} | {r["mask_steps"]} + {r["main_steps"]} | {r["fuse_s"]:.0f} |')
  return '\n'.join(out) + '\n'


def write_json(path: str, res: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(res, f, indent=1, default=float)
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  common.setup()
  cv2.setNumThreads(FLAGS.opencv_threads if FLAGS.opencv_threads > 0 else -1)
  unknown = [m for m in FLAGS.methods if m not in METHODS]
  if unknown:
    raise app.UsageError(f'--methods: unknown {",".join(unknown)} (known: {", ".join(METHODS)})')
  try:
    if any(float(s) < 0 for s in FLAGS.sigmas):
      raise ValueError
  except ValueError:
    raise app.UsageError(f'--sigmas needs numbers >= 0, got {",".join(FLAGS.sigmas)}') from None
  if len(FLAGS.dfp_shift) != 2:
    raise app.UsageError('--dfp_shift needs dx,dy')
  config = app_flags.fusion_config(FLAGS).replace(scale=FLAGS.dfp_scale)
  align_config = app_flags.config_of(align.AlignConfig, FLAGS)
  if FLAGS.dfp:
    side = FLAGS.dfp_region_size // FLAGS.dfp_scale
    short = fusion.size_shortfall(config, side, side)
    if short:
      raise app.UsageError(f'--dfp_region_size={FLAGS.dfp_region_size} at x{FLAGS.dfp_scale}: {short}')
  res = {'protocol': PROTOCOL, 'command': ' '.join(sys.argv), 'versions': runtime.versions(),
         'backend': jax.default_backend(), 'opencv_threads': cv2.getNumThreads(), 'seed': FLAGS.seed,
         'config': config.to_dict(), 'align_config': dataclasses.asdict(align_config),
         'accuracy': None, 'dfp': None}
  if FLAGS.accuracy:
    res['accuracy'] = run_accuracy(available_methods(FLAGS.methods))
    write_json(FLAGS.json, res)  # The accuracy part is kept if the DFP part is interrupted.
  if FLAGS.dfp:
    res['dfp'] = run_dfp(config, align_config)
  write_json(FLAGS.json, res)
  common.write_table(tables(res), FLAGS.table)
  return 0


if __name__ == '__main__':
  define_flags()
  jax.config.parse_flags_with_absl()
  app.run(main)
