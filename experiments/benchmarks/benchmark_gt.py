"""Multi-scene ground-truth benchmark (issue 25 section 1): DFP and simple baselines on light fields.

Protocol. For every light field of `--lightfield` (scene = the folder name without `hci_` and
`_33views`), every square region of `--regions` (top-left y:x, `--region_size` view pixels; the
same for every scene), synthetic aperture a (`--apertures`: radius in view steps, inf = all views, 1.5 =
the 3 x 3 views around the centre), stack size N (`--num_planes`) and scale s (`--scales`):
  1. the views cropped to the region -> `lightfield.make_focal_stack(lf, LightFieldConfig(num_planes=N,
     aperture=a))` (N automatically chosen planes); cached under `--bench_dir`/stacks per
     (scene, region, a, N), reused across scales and runs;
  2. the low-resolution inputs are the slices `resample.area_downsample`d by s (region_size / s pixels);
  3. the ground truth is the region's centre view (all in focus), at the full region size;
  4. every method's output, at the full region size, is scored against it (`metrics.gt_metrics`: PSNR
     and SSIM on RGB, plus the luma ones).
Methods (the `--methods` base names):
  * `dfp`: `fusion.fuse` with the configuration flags at scale s, key `--seed` (`batch.fuse_batch` over
    same-shape cases with `--batch_strategy`);
  * fuse at the LR size, then upsample by s with bicubic (`+bicubic`) and, for s > 1, Lanczos-3
    (`+lanczos3`, jax.image.resize lanczos3): `average`; `map` (the fusion by the papers' DoubleReblur maps,
    `compare` rule with the largest-region clean-up, whatever the configuration: `map_fusion`);
    `dfp_map` (the fusion by DFP's own decision maps, those of the configuration); `laplacian_energy`
    (per pixel the slice of largest `lightfield.focus_measure`: box-9 Laplacian energy of luma);
    `laplacian_pyramid` (`baselines.laplacian_pyramid_fusion`); `best_slice` (the single slice with
    the best PSNR, chosen per upsampler);
  * `perfect`: the ground truth area-downsampled by s, then upsampled: the ceiling of any
    fuse-then-upsample pipeline (not at x1, where it is the truth);
  * `oracle_pixel` (+bicubic): per LR pixel the slice nearest the area-downsampled truth.
"Best simple baseline" (tables only) = per case the best of average, map, laplacian_energy,
laplacian_pyramid and best_slice, each with every upsampler of that scale.

`--lf_job` runs the light-field job's goal instead: per scene the whole views area-downsampled x2
(`load_light_field(folder, downsample=2)`), `lightfield.fuse_light_field` with the configuration at x2
and the default `LightFieldConfig`, scored against the full-resolution centre view, with
`best_slice+bicubic`, `average+bicubic`, `map+bicubic` and `perfect+bicubic` of the same stack.

  python -m experiments.benchmarks.benchmark_gt                       # the full grid (hundreds of runs)
  python -m experiments.benchmarks.benchmark_gt --dfp=false           # the baselines only (minutes)
  python -m experiments.benchmarks.benchmark_gt --scales=2 --apertures=1.5 --num_planes=2 \
      --regions=128:128 --table=outputs/x2.md                         # a reduced grid
  python -m experiments.benchmarks.benchmark_gt --lf_job

Results: JSON lines appended to `--json` (default `<bench_dir>/results.jsonl`), one case's lines at a
time as it finishes:
  * `{"kind": "header", "digest", "protocol", "mode", "seed", "config" (FusionConfig.to_dict() without
    scale), "region_size" and "shift" (regions) or "lf_downsample" and "lightfield_config" (--lf_job),
    "scenes" {name: folder}, "versions", "backend", "devices"}`, once per digest (and library versions);
  * `{"kind": "row", "digest", "mode" ("regions" | "lf_job"), "scene", "region" [y, x] (null for
    lf_job), "region_size", "aperture" ("inf", "1.5"), "N", "scale", "method", "PSNR", "SSIM", "PSNR_Y",
    "SSIM_Y", "planes", "lr_size"}`, plus "slice" for best_slice and, for dfp, "seconds" (fuse's wall
    time, compilation included; the group program's with --batch_strategy=vmap/shard), "main_steps",
    "mask_steps", "compile_s", "strategy".
The digest covers the configuration (without --scale), the seed and the protocol. A rerun with the same
flags scores only the (case, method) pairs not yet in the file under its digest (an interrupted run
resumes; a cut last line is ignored), then prints the tables from the file: one command reproduces them.
Tables (markdown, `--table` writes them too): per (aperture, N, scale), rows = methods, the best simple
baseline and "DFP - best simple baseline" (with the issue's goal: >= +0.3 dB at x2 / x4, >= -0.1 dB at
x1, on every scene), columns = scenes (mean over the regions; "(k/R)" when only k of R are scored), the
mean over scenes and the worst scene. The configuration flags are dfp-jax's (docs/cli.md); --scale is
set per case from --scales.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import errors
from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import resample
from dfp_jax.app import flags as app_flags
from dfp_jax.app import runtime
from dfp_jax.batch import STRATEGIES
from dfp_jax.batch import BatchError
from dfp_jax.batch import fuse_batch
from experiments import common

PROTOCOL = 'benchmark_gt/2'  # Change when the protocol changes: old rows then no longer match.
HCI_SCENES = tuple(f'../shared/data/lightfield/hci_{s}_33views'
                   for s in ('dino', 'greek', 'kitchen', 'vinyl'))
SIMPLE = ('average', 'map', 'laplacian_energy', 'laplacian_pyramid', 'best_slice')  # "Best simple baseline".
METHODS = ('dfp', 'dfp_map') + SIMPLE + ('perfect', 'oracle_pixel')
UPSAMPLERS = {'bicubic': 'bicubic', 'lanczos3': 'lanczos'}  # Row suffix -> baselines.upsample method.
LF_JOB_SCALE = 2  # --lf_job: views area-downsampled by this, fused at this scale.
LF_JOB_METHODS = ('dfp', 'best_slice+bicubic', 'average+bicubic', 'map+bicubic', 'perfect+bicubic')
GOALS = {1: -0.1, 2: 0.3, 4: 0.3}  # Issue 25: DFP - best simple baseline on every scene (dB).

FLAGS = flags.FLAGS
flags.DEFINE_list('lightfield', list(HCI_SCENES), 'Light-field folders with an all-in-focus centre view '
                  '(HCI naming or views.json), comma-separated; paths relative to the repository root.')
flags.DEFINE_list('regions', ['0:0', '0:256', '256:0', '256:256', '128:128'], 'Top-left corners y:x of '
                  'the square output regions (view pixels), the same for every scene.')
flags.DEFINE_integer('region_size', 256, 'Side of each region (view pixels); a multiple of every scale.')
flags.DEFINE_list('apertures', ['inf', '1.5'], 'Synthetic aperture radii (view steps; inf = all views).')
flags.DEFINE_list('num_planes', ['2', '4'], 'Focal-stack sizes N.')
flags.DEFINE_list('scales', ['1', '2', '4'], 'Scales s (the inputs are region_size / s pixels).')
flags.DEFINE_bool('dfp', True, 'Run DFP; --nodfp scores the baselines only.')
flags.DEFINE_list('methods', [], f'Subset of the methods to score (default all): {", ".join(METHODS)}.')
flags.DEFINE_bool('lf_job', False, 'Score the light-field job (whole views downsampled x2, --scale=2) '
                  'instead of the regions.')
flags.DEFINE_string('bench_dir', 'outputs/benchmark_gt', 'Folder of the focal-stack cache (stacks/), the '
                    'default --json and --save_images.')
flags.DEFINE_string('json', None, 'JSON-lines file the rows are appended to (default '
                    '<bench_dir>/results.jsonl).')
flags.DEFINE_string('table', None, 'Also write the markdown tables to this file.')
flags.DEFINE_list('table_metrics', ['PSNR'], 'Metrics tabulated (PSNR, SSIM, PSNR_Y, SSIM_Y).')
flags.DEFINE_enum('batch_strategy', None, list(STRATEGIES), 'Run DFP with batch.fuse_batch over the '
                  'pending cases of one shape (N, scale) with this strategy (default: fusion.fuse, one case '
                  'after another).')
flags.DEFINE_bool('save_images', False, 'Write every scored image to <bench_dir>/images.')
common.define_flags()


# ---------------------------------------------------------------------------------------------------
# Flags -> the grid.


def scene_name(folder: str) -> str:
  name = os.path.basename(os.path.normpath(folder))
  name = name[len('hci_'):] if name.startswith('hci_') else name
  return name[:-len('_33views')] if name.endswith('_33views') else name


def aperture_label(a: float) -> str:
  return 'inf' if math.isinf(a) else f'{a:g}'


def _ints(name: str, values, allowed=None) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    out = []
  if not out or (allowed and any(v not in allowed for v in out)):
    raise app.UsageError(f'--{name} needs integers{" in " + str(allowed) if allowed else ""}, got '
                         f'{",".join(values)}')
  return out


def parse_grid():
  """(scenes [(name, folder)], corners, apertures [(label, value)], Ns, scales, method base names)."""
  scenes = [(scene_name(f), f) for f in FLAGS.lightfield]
  if not scenes or len({n for n, _ in scenes}) != len(scenes):
    raise app.UsageError(f'--lightfield needs folders with distinct names, got {",".join(FLAGS.lightfield)}')
  for _, folder in scenes:
    if not os.path.isdir(folder):
      raise app.UsageError(f'--lightfield: {folder} is not a folder')
  try:
    apertures = [(aperture_label(float(v)), float(v)) for v in FLAGS.apertures]
  except ValueError:
    apertures = []
  if not apertures or any(not a >= 0 for _, a in apertures):
    raise app.UsageError(f'--apertures needs radii >= 0 (or inf), got {",".join(FLAGS.apertures)}')
  ns = _ints('num_planes', FLAGS.num_planes)
  if any(n < 2 for n in ns):
    raise app.UsageError('--num_planes: every N must be at least 2')
  scales = _ints('scales', FLAGS.scales, (1, 2, 4))
  if any(FLAGS.region_size % s for s in scales):
    raise app.UsageError(f'--region_size={FLAGS.region_size} must be a multiple of every scale')
  methods = list(FLAGS.methods) or list(METHODS)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise app.UsageError(f'--methods: unknown {",".join(unknown)} (known: {", ".join(METHODS)})')
  methods = [m for m in METHODS if m in methods and (FLAGS.dfp or m != 'dfp')]
  if not methods:
    raise app.UsageError('no method to score (--methods with --nodfp)')
  return scenes, common.parse_corners(FLAGS.regions), apertures, ns, scales, methods


def method_names(bases, scale: int) -> list[str]:
  """The row names of the method base names at `scale`, in table order."""
  out = []
  for m in bases:
    if m == 'dfp':
      out.append(m)
    elif m == 'oracle_pixel':
      out.append('oracle_pixel+bicubic')
    elif not (m == 'perfect' and scale == 1):
      out += [f'{m}+{u}' for u in UPSAMPLERS if scale > 1 or u == 'bicubic']
  return out


def digest(config, mode: str, **protocol) -> tuple[str, dict]:
  """(sha256 of what defines every row of a run but the case itself, that payload)."""
  cfg = config.to_dict()
  cfg.pop('scale')  # Per case.
  payload = {'protocol': PROTOCOL, 'mode': mode, 'seed': FLAGS.seed, 'config': cfg, **protocol}
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16], payload


# ---------------------------------------------------------------------------------------------------
# The results file: JSON lines, appended one case at a time.


def read_records(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for i, line in enumerate(f):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:  # A line cut by an interrupted write: that case runs again.
          logging.warning('%s:%d: not JSON, ignored', path, i + 1)
  return out


def append_records(path: str, records: list[dict]) -> None:
  """Appends `records` as JSON lines in one write (a case's rows land together or, if cut, unparsable)."""
  if not records:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  text = ''.join(json.dumps(r) + '\n' for r in records)
  with open(path, 'a+b') as f:
    if f.tell() > 0:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b'\n':  # A line cut by an interrupted write stays one (ignored) line.
        text = '\n' + text
    f.write(text.encode())
    f.flush()
    os.fsync(f.fileno())


def row_key(r: dict) -> tuple:
  region = r.get('region')
  return (r['scene'], None if region is None else tuple(region), r['aperture'], r['N'], r['scale'],
          r['method'])


class Results:
  """The rows of one digest in the results file; `add` appends a case's rows (and the header first)."""

  def __init__(self, path: str, dig: str, header: dict):
    self.path, self.digest, self.header = path, dig, header
    records = read_records(path)
    self.rows = {row_key(r): r for r in records if r.get('kind') == 'row' and r.get('digest') == dig}
    self.header_written = any(r.get('kind') == 'header' and r.get('digest') == dig
                              and r.get('versions') == header['versions'] for r in records)

  def done(self, case: tuple, name: str) -> bool:
    return case + (name,) in self.rows

  def add(self, rows: list[dict]) -> None:
    if not rows:
      return
    records = [] if self.header_written else [dict(kind='header', digest=self.digest, **self.header)]
    records += [dict(kind='row', digest=self.digest, **r) for r in rows]
    append_records(self.path, records)
    self.header_written = True
    self.rows.update((row_key(r), r) for r in records[-len(rows):])


# ---------------------------------------------------------------------------------------------------
# Methods.


@functools.lru_cache(maxsize=None)
def _upsampler(scale: int, method: str):
  return jax.jit(functools.partial(baselines.upsample, scale=scale, method=method))


def upsample(image, scale: int, suffix: str) -> jnp.ndarray:
  return _upsampler(scale, UPSAMPLERS[suffix])(jnp.asarray(image))


_scores = jax.jit(jax.vmap(metrics.gt_metrics, in_axes=(0, None)))
_psnrs = jax.jit(jax.vmap(metrics.psnr, in_axes=(0, None)))
_maps = jax.jit(focus.decision_maps, static_argnums=1)
_pyramid = jax.jit(baselines.laplacian_pyramid_fusion)


def dfp_map_fusion(lr: np.ndarray, config, result=None) -> jnp.ndarray:
  """The `dfp_map` row at the LR size: the inputs fused by DFP's own decision maps (those of the DFP run,
  `result.decision_maps_raw`, or without one, --nodfp, computed as DFP computes them: config.focus)."""
  maps = result.decision_maps_raw if result is not None else _maps(jnp.asarray(lr), config.focus)
  return baselines.decision_map_fusion(jnp.asarray(lr), jnp.asarray(maps))


# The `map` baseline of the list: "the DoubleReblur map fusion", as the package made its maps
# before the multi-scale measure (the 'compare' rule with DoubleReblur's region steps).
DOUBLEREBLUR_MAPS = focus.FocusConfig(measure='doublereblur', cleanup='regions')


def map_fusion(lr: np.ndarray) -> jnp.ndarray:
  """The `map` baseline at the LR size: the inputs fused by DoubleReblur's maps (DOUBLEREBLUR_MAPS)."""
  return baselines.decision_map_fusion(jnp.asarray(lr), _maps(jnp.asarray(lr), DOUBLEREBLUR_MAPS))


def lr_fusions(bases, lr: np.ndarray, gt_lr: np.ndarray, config, result) -> dict[str, np.ndarray]:
  """The fuse-then-upsample methods' images at the LR size (best_slice apart)."""
  make = {'average': lambda: baselines.average_fusion(jnp.asarray(lr)),
          'map': lambda: map_fusion(lr),
          'dfp_map': lambda: dfp_map_fusion(lr, config, result),
          'laplacian_energy': lambda: common.laplacian_energy_fusion(lr),
          'laplacian_pyramid': lambda: _pyramid(jnp.asarray(lr)),
          'perfect': lambda: gt_lr,
          'oracle_pixel': lambda: common.oracle_pixel(lr, gt_lr)}
  return {m: np.asarray(make[m]()) for m in bases if m in make}


def score_case(names, lr: np.ndarray, gt: np.ndarray, scale: int, config, result=None) -> dict:
  """{row name: (scores, extra fields, image)} for the row names `names` of one case."""
  gt_lr = resample.area_downsample(gt, scale)
  bases = {n.split('+')[0] for n in names}
  images, extra = {}, {}
  if 'dfp' in names:
    images['dfp'] = result.fused
  for base, img in lr_fusions(bases, lr, gt_lr, config, result).items():
    for u in UPSAMPLERS:
      if f'{base}+{u}' in names:
        images[f'{base}+{u}'] = np.asarray(upsample(img, scale, u))
  for u in UPSAMPLERS:
    if f'best_slice+{u}' in names:
      ups = jnp.stack([upsample(x, scale, u) for x in lr])
      best = int(np.argmax(np.asarray(_psnrs(ups, jnp.asarray(gt)))))
      images[f'best_slice+{u}'], extra[f'best_slice+{u}'] = np.asarray(ups[best]), {'slice': best}
  order = [n for n in names if n in images]
  stacked = _scores(jnp.asarray(np.stack([images[n] for n in order])), jnp.asarray(gt))
  return {n: ({k: float(v[i]) for k, v in stacked.items()}, extra.get(n, {}), images[n])
          for i, n in enumerate(order)}


def dfp_fields(result, seconds: float) -> dict:
  t = result.timings
  return {'seconds': seconds, 'main_steps': int(t.get('main_steps', 0)),
          'mask_steps': int(t.get('mask_steps', 0)),
          'compile_s': float(t.get('main_compile_s', 0.0) + t.get('mask_compile_s', 0.0)),
          'strategy': t.get('strategy', 'fuse')}


# ---------------------------------------------------------------------------------------------------
# Focal stacks, cached on disk.


# ---------------------------------------------------------------------------------------------------
# Progress.


class Progress:
  """Logs each finished case with the elapsed time and an ETA (mean time of the finished cases of the
  same scale and kind, else of all)."""

  def __init__(self, todo):
    self.todo = list(todo)  # (scale, runs dfp) per pending case.
    self.times = collections.defaultdict(list)
    self.t0 = time.perf_counter()
    self.count = 0

  def done(self, kind, seconds: float, text: str) -> None:
    self.count += 1
    self.times[kind].append(seconds)
    self.todo.remove(kind)
    every = [t for v in self.times.values() for t in v]
    eta = sum(np.mean(self.times[k]) if self.times[k] else np.mean(every) for k in self.todo)
    logging.info('case %d/%d %s (%.1f s); elapsed %s, ETA %s', self.count, self.count + len(self.todo), text,
                 seconds, _hms(time.perf_counter() - self.t0), _hms(eta))


def _hms(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def _save_images(case_name: str, scored: dict, gt) -> None:
  folder = os.path.join(FLAGS.bench_dir, 'images')
  for name, (_, _, img) in scored.items():
    image_io.write_image(os.path.join(folder, f'{case_name}_{name.replace("+", "_")}.png'), img)
  image_io.write_image(os.path.join(folder, f'{case_name}_truth.png'), gt)


def _summary(scored: dict) -> str:
  psnr = {n: s['PSNR'] for n, (s, _, _) in scored.items()}
  simple = {n: v for n, v in psnr.items() if n.split('+')[0] in SIMPLE}
  parts = [f'dfp {psnr["dfp"]:.2f} dB'] if 'dfp' in psnr else []
  if simple:
    best = max(simple, key=simple.get)
    parts.append(f'best simple {simple[best]:.2f} ({best})')
  return ', '.join(parts)


# ---------------------------------------------------------------------------------------------------
# Regions mode.


def run_regions(config, results: Results, grid) -> None:
  scenes, corners, apertures, ns, scales, bases = grid
  size = FLAGS.region_size
  stacks = common.Stacks(os.path.join(FLAGS.bench_dir, 'stacks'), size)
  pending = []  # (case key, source folder, aperture value, missing row names).
  for (scene, src), (y, x), (ap_label, ap), n, s in ((a, b, c, d, e) for a in scenes for b in corners
                                                     for c in apertures for d in ns for e in scales):
    case = (scene, (y, x), ap_label, n, s)
    missing = [m for m in method_names(bases, s) if not results.done(case, m)]
    if missing:
      pending.append((case, src, ap, missing))
  total = len(scenes) * len(corners) * len(apertures) * len(ns) * len(scales)
  logging.info('%d cases: %d done before, %d to run (digest %s, %s)', total, total - len(pending),
               len(pending), results.digest, results.path)
  progress = Progress((c[4], 'dfp' in m) for c, _, _, m in pending)
  key = jax.random.key(FLAGS.seed)

  def finish(case, missing, lr, gt, planes, start, result=None, seconds=0.0, kind=None):
    """Scores the case's `missing` rows, appends them and logs the progress (`start`: when it began)."""
    scene, (y, x), ap_label, n, s = case
    scored = score_case(missing, lr, gt, s, config, result)
    base = {'mode': 'regions', 'scene': scene, 'region': [y, x], 'region_size': size, 'aperture': ap_label,
            'N': n, 'scale': s}
    results.add([dict(base, method=name, **sc, **extra, planes=np.asarray(planes).tolist(),
                      lr_size=list(lr.shape[1:3]), **(dfp_fields(result, seconds) if name == 'dfp' else {}))
                 for name, (sc, extra, _) in scored.items()])
    if FLAGS.save_images:
      _save_images(f'{scene}_{y}_{x}_a{ap_label}_N{n}_x{s}', scored, gt)
    progress.done(kind or (s, 'dfp' in missing), time.perf_counter() - start,
                  f'{scene} {y}:{x} a={ap_label} N={n} x{s}: {_summary(scored)}')

  def inputs(case, src, ap):
    scene, region, ap_label, n, s = case
    slices, gt, planes = stacks.get(scene, src, region, ap_label, ap, n)
    return resample.area_downsample(slices, s), gt, planes

  batched = collections.defaultdict(list)
  for case, src, ap, missing in pending:
    if FLAGS.batch_strategy and 'dfp' in missing:
      batched[(case[3], case[4])].append((case, src, ap, missing))
      continue
    t0 = time.perf_counter()
    lr, gt, planes = inputs(case, src, ap)
    result, seconds = None, 0.0
    if 'dfp' in missing:
      t1 = time.perf_counter()
      result = fusion.fuse(list(lr), config=config.replace(scale=case[4]), key=key)
      seconds = time.perf_counter() - t1
    finish(case, missing, lr, gt, planes, t0, result, seconds)
  for (n, s), group in batched.items():  # One shape per group: one program.
    data = [inputs(case, src, ap) for case, src, ap, _ in group]
    start = [time.perf_counter()]  # When the scene now finishing began (the previous one's end).

    def on_result(i, res, group=group, data=data, start=start):
      case, _, _, missing = group[i]
      if isinstance(res, BatchError):
        logging.warning('DFP failed on %s: %s (its dfp row is left to a rerun)', case, res.message)
        finish(case, [m for m in missing if m != 'dfp'], *data[i], start[0], kind=(case[4], True))
      else:  # DFP's own time: for vmap / shard that of the whole group program.
        finish(case, missing, *data[i], start[0], res, float(res.timings.get('total_s', 0.0)))
      start[0] = time.perf_counter()

    fuse_batch([lr for lr, _, _ in data], config.replace(scale=s), keys=[key] * len(group),
               strategy=FLAGS.batch_strategy, on_result=on_result,
               names=[f'{c[0]} {c[1][0]}:{c[1][1]} a={c[2]} N={n} x{s}' for c, _, _, _ in group])


# ---------------------------------------------------------------------------------------------------
# Light-field job mode.


def run_lf_job(config, results: Results, scenes, bases) -> None:
  lfc = lightfield.LightFieldConfig()
  ap_label, n, s = aperture_label(lfc.aperture), lfc.num_planes, LF_JOB_SCALE
  names = [m for m in LF_JOB_METHODS if m.split('+')[0] in bases]
  pending = [(scene, src, [m for m in names if not results.done((scene, None, ap_label, n, s), m)])
             for scene, src in scenes]
  pending = [p for p in pending if p[2]]
  logging.info('light-field job: %d scenes, %d to run (digest %s, %s)', len(scenes), len(pending),
               results.digest, results.path)
  progress = Progress((s, 'dfp' in m) for _, _, m in pending)
  for scene, src, missing in pending:
    t0 = time.perf_counter()
    lf = lightfield.load_light_field(src, downsample=s)
    h, w, _ = lf.image_shape
    gt = np.asarray(lightfield.load_light_field(src).center_view, np.float32)[:h * s, :w * s]
    result, seconds = None, 0.0
    if 'dfp' in missing:  # Its seconds: the light-field job's (focal stack and DFP).
      t1 = time.perf_counter()
      result, stack = lightfield.fuse_light_field(lf, config.replace(scale=s), lfc,
                                                  key=jax.random.key(FLAGS.seed), source=src)
      seconds = time.perf_counter() - t1
    else:
      stack = lightfield.make_focal_stack(lf, lfc)
    scored = score_case(missing, stack.slices, gt, s, config, result)
    base = {'mode': 'lf_job', 'scene': scene, 'region': None, 'region_size': None, 'aperture': ap_label,
            'N': n, 'scale': s}
    results.add([dict(base, method=name, **sc, **extra, planes=np.asarray(stack.planes).tolist(),
                      lr_size=[h, w], **(dfp_fields(result, seconds) if name == 'dfp' else {}))
                 for name, (sc, extra, _) in scored.items()])
    if FLAGS.save_images:
      _save_images(f'lf_job_{scene}', scored, gt)
    progress.done((s, 'dfp' in missing), time.perf_counter() - t0, f'{scene}: {_summary(scored)}')


# ---------------------------------------------------------------------------------------------------
# Tables.


def _cell(values, total: int, fmt: str) -> str:
  if not values:
    return ''
  text = format(float(np.mean(values)), fmt)
  return text if len(values) == total else f'{text} ({len(values)}/{total})'


def _row(label: str, per_scene: dict, scenes, total: int, fmt: str) -> str:
  """A table line: per-scene means (over its cases), the mean over scenes and the worst scene."""
  means = [float(np.mean(per_scene[s])) for s in scenes if per_scene.get(s)]
  cells = [_cell(per_scene.get(s, []), total, fmt) for s in scenes]
  complete = len(means) == len(scenes)
  mean = format(float(np.mean(means)), fmt) + ('' if complete else ' (partial)') if means else ''
  worst = format(min(means), fmt) + ('' if complete else ' (partial)') if means else ''
  return f'| {label} | ' + ' | '.join(cells + [mean, worst]) + ' |'


def group_table(rows: dict, scenes, cases_of, names, metric: str, title: str, ref: tuple | None,
                goal: float | None) -> tuple[list[str], dict]:
  """Markdown lines of one table: rows `names` (+ 'best simple baseline' and the DFP delta), columns
  `scenes` + mean + worst. `cases_of(scene)` lists the scene's case keys; `rows[case][name]` a row.
  `ref` = (label, names) of the reference whose per-case best the DFP delta is taken against.
  Returns (lines, {scene: DFP - reference} per scene)."""
  fmt = '.4f' if metric.startswith('SSIM') else '.2f'
  total = len(cases_of(scenes[0]))
  lines = [title, '', '| method | ' + ' | '.join(scenes) + ' | mean | worst |',
           '|---|' + '---|' * (len(scenes) + 2)]

  def values(fn):
    out = {}
    for scene in scenes:
      vals = [fn(rows.get(c, {})) for c in cases_of(scene)]
      out[scene] = [v for v in vals if v is not None]
    return out

  present = [n for n in names if any(values(lambda r, n=n: r[n][metric] if n in r else None).values())]
  ref_label, ref_names = ref if ref else (None, ())

  def best_ref(r):
    vals = [r[n][metric] for n in ref_names if n in r]
    return max(vals) if vals else None

  last_ref = max((i for i, n in enumerate(present) if n in ref_names), default=None)
  delta = {}
  for i, n in enumerate(present):
    lines.append(_row(n, values(lambda r, n=n: r[n][metric] if n in r else None), scenes, total, fmt))
    if i == last_ref and len(ref_names) > 1:  # The per-case best of the reference methods.
      lines.append(_row(f'**{ref_label}**', values(best_ref), scenes, total, fmt))
  if ref and 'dfp' in present:
    d = values(lambda r: r['dfp'][metric] - best_ref(r) if 'dfp' in r and best_ref(r) is not None else None)
    lines.append(_row(f'**DFP - {ref_label}**', d, scenes, total, '+' + fmt))
    delta = {s: float(np.mean(v)) for s, v in d.items() if v}
    if goal is not None and metric == 'PSNR' and delta:
      worst = min(delta.values())
      met = worst >= goal and len(delta) == len(scenes)
      lines += ['', f'Goal: DFP - {ref_label} >= {goal:+.2f} dB on every scene: '
                    f'{"met" if met else "NOT met"} (worst {worst:+.2f} dB'
                    f'{"" if len(delta) == len(scenes) else ", not every scene scored"}).']
  return lines, delta


def regions_tables(results: Results, grid, metrics_) -> str:
  scenes, corners, apertures, ns, scales, bases = grid
  by_case = collections.defaultdict(dict)
  for r in results.rows.values():
    if r['mode'] == 'regions':
      by_case[(r['scene'], tuple(r['region']), r['aperture'], r['N'], r['scale'])][r['method']] = r
  names_scene = [n for n, _ in scenes]
  out = []
  for metric in metrics_:
    for ap_label, _ in apertures:
      for n in ns:
        for s in scales:
          names = method_names(bases, s)
          simple = [m for m in names if m.split('+')[0] in SIMPLE]
          title = (f'### aperture {ap_label}, N = {n}, x{s}: {metric} (RGB) against the centre view, per '
                   f'scene = mean over its {len(corners)} regions of {FLAGS.region_size} px')
          lines, _ = group_table(by_case, names_scene,
                                 lambda sc, a=ap_label, n=n, s=s: [(sc, c, a, n, s) for c in corners],
                                 names, metric, title, ('best simple baseline', simple), GOALS.get(s))
          out.append('\n'.join(lines))
  return '\n\n'.join(out) + '\n'


def lf_job_tables(results: Results, scenes, bases, metrics_) -> str:
  lfc = lightfield.LightFieldConfig()
  key = (aperture_label(lfc.aperture), lfc.num_planes, LF_JOB_SCALE)
  by_case = collections.defaultdict(dict)
  for r in results.rows.values():
    if r['mode'] == 'lf_job':
      by_case[(r['scene'], None) + key][r['method']] = r
  names = [m for m in LF_JOB_METHODS if m.split('+')[0] in bases]
  out = []
  for metric in metrics_:
    title = (f'### light-field job: views area-downsampled x{LF_JOB_SCALE}, x{LF_JOB_SCALE}, '
             f'N = {lfc.num_planes}, aperture {key[0]}: {metric} (RGB) against the full-resolution centre '
             'view')
    lines, _ = group_table(by_case, [n for n, _ in scenes], lambda sc: [(sc, None) + key], names, metric,
                           title, ('best_slice+bicubic', ['best_slice+bicubic']), 0.0)
    out.append('\n'.join(lines))
  return '\n\n'.join(out) + '\n'


# ---------------------------------------------------------------------------------------------------


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  common.setup()
  config = app_flags.fusion_config(FLAGS)
  grid = parse_grid()
  scenes, bases = grid[0], grid[5]
  bad = [m for m in FLAGS.table_metrics if m not in ('PSNR', 'SSIM', 'PSNR_Y', 'SSIM_Y')]
  if bad:
    raise app.UsageError(f'--table_metrics: unknown {",".join(bad)}')
  if 'dfp' in bases and not FLAGS.lf_job:
    for s in grid[4]:
      short = fusion.size_shortfall(config.replace(scale=s), FLAGS.region_size // s, FLAGS.region_size // s)
      if short:
        raise app.UsageError(f'--region_size={FLAGS.region_size} at x{s}: {short}')
  if FLAGS.lf_job:
    dig, payload = digest(config, 'lf_job', lf_downsample=LF_JOB_SCALE,
                          lightfield_config=dataclasses.asdict(lightfield.LightFieldConfig()))
  else:
    dig, payload = digest(config, 'regions', region_size=FLAGS.region_size, shift=lightfield.SHIFT_METHOD)
  header = dict(payload, scenes={n: os.path.abspath(f) for n, f in scenes}, versions=runtime.versions(),
                backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()])
  results = Results(FLAGS.json or os.path.join(FLAGS.bench_dir, 'results.jsonl'), dig, header)
  try:
    if FLAGS.lf_job:
      run_lf_job(config, results, scenes, bases)
      text = lf_job_tables(results, scenes, bases, FLAGS.table_metrics)
    else:
      run_regions(config, results, grid)
      text = regions_tables(results, grid, FLAGS.table_metrics)
  except errors.InputError as e:  # An unreadable light field, a region outside the views: one line.
    raise SystemExit(f'benchmark_gt: {e}') from None
  print(text, flush=True)
  if FLAGS.table:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.table)), exist_ok=True)
    with open(FLAGS.table, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  app.run(main)
