"""What the benchmark and study scripts share: flags, runtime setup, ground-truth cases, scores, oracles.

Owns: the flag set every script uses (the configuration flags of `dfp_jax.app.flags`, `--seed`, the
compilation cache), the `--scenes` / `--regions` / `--lightfield` flag parsers, the light-field
ground-truth case (views -> `lightfield.make_focal_stack` -> `resample.area_downsample` by the scale;
the centre view is the all-in-focus truth), PSNR against that truth, the main stage's starting point
for scripts that drive it window by window, a private compilation cache and the peak-memory probe for
timings, the authors' PyTorch step timed in the same run as ours (`Authors`, through
`../shared/tools/ref_step_bench.py`) for side-by-side figures, and the per-pixel oracles of
`studies/x1_ceiling.py`.

Flag-free at import (tests import it); scripts call `define_flags()` and the other `define_*`
helpers at module level. Scripts run as modules from the repository root:
`python -m experiments.benchmarks.benchmark_gt ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import filters
from dfp_jax import fusion
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import optimize
from dfp_jax import resample
from dfp_jax.app import flags as app_flags
from dfp_jax.app import runtime
from dfp_jax.config import FusionConfig

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The repository.
HCI_DINO = '../shared/data/lightfield/hci_dino_33views'  # Relative to the repository root.
HCI_SCENES = tuple(f'../shared/data/lightfield/hci_{s}_33views'
                   for s in ('dino', 'greek', 'kitchen', 'vinyl'))  # The four with ground truth.


def scene_name(folder: str) -> str:
  """'dino' for '../shared/data/lightfield/hci_dino_33views'; other folders: their base name."""
  return os.path.basename(os.path.normpath(folder)).removeprefix('hci_').removesuffix('_33views')


def aperture_label(a: float) -> str:
  """'inf' (all views) or the radius, as the results' JSON and tables name a synthetic aperture."""
  return 'inf' if math.isinf(a) else f'{a:g}'


def digest(*parts) -> str:
  """A short hash of what a recorded result depends on (JSON lines keep only rows of their digest)."""
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_jsonl(path: str, digest_: str | None = None) -> list[dict]:
  """The records of a JSON-lines file (none if it is missing), only those of `digest_` if given; a cut
  or damaged line (an interrupted run) is skipped."""
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(r, dict) and (digest_ is None or r.get('digest') == digest_):
          out.append(r)
  return out


def append_jsonl(path: str, record: dict) -> None:
  """Appends one record (a line of JSON; values JSON lacks are written as strings)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    f.write(json.dumps(record, default=str) + '\n')


def write_table(text: str, path: str | None) -> None:
  """Prints a script's table and, with a path (`--table`), writes it there too."""
  print(text)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text + '\n')
# name=light-field folder@y:x:h:w: two regions of HCI dino and the bundled Lytro Illum light field (a
# real capture: its centre view is only an approximate reference).
DEFAULT_SCENES = (
    f'dino_a={HCI_DINO}@128:128:256:256',
    f'dino_b={HCI_DINO}@256:0:256:256',
    'lytro_2067=../shared/data/lightfield/lytro_illum_2067_center5x5@60:150:256:256',
)


# ---------------------------------------------------------------------------------------------------
# Flags and runtime.


def define_flags(*, seed: bool = True, compilation_cache: bool = True) -> None:
  """The configuration flags (`--scale`, `--iters`, ... as `dfp-jax` has them), `--seed` and the
  persistent compilation cache's flags (`app_flags.define_runtime_flags`). Read them with
  `app_flags.fusion_config(FLAGS)`."""
  app_flags.define_config_flags()
  app_flags.define_runtime_flags(seed=seed, compilation_cache=compilation_cache)


def setup() -> None:
  """Library log levels, the backend check and, where the script defines its flags, the compilation
  cache (`dfp_jax.app.runtime.setup`)."""
  cache = 'compilation_cache' in FLAGS and FLAGS.compilation_cache
  runtime.setup(cache, FLAGS.compilation_cache_dir if cache else None)


def define_lightfield_flag(help_extra: str = '') -> None:
  flags.DEFINE_string('lightfield', HCI_DINO, 'Light-field folder with an all-in-focus centre view (HCI '
                      'naming or views.json)' + help_extra + '.')


def define_region_flags() -> None:
  """--lightfield, --regions (top-left corners) and --region_size: square regions of one light field."""
  define_lightfield_flag()
  flags.DEFINE_list('regions', ['128:128', '0:0', '256:256', '0:256', '256:0'], 'Top-left corners y:x '
                    'of the square regions scored.')
  flags.DEFINE_integer('region_size', 256, 'Side of each region (pixels of the views).')


def define_scenes_flag() -> None:
  flags.DEFINE_list('scenes', list(DEFAULT_SCENES), 'Light-field ground-truth cases, comma-separated: '
                    'name=lightfield_folder@y:x:h:w (a crop of the views).')


def parse_corners(items, name: str = 'regions') -> list[tuple[int, int]]:
  """'y:x' items of a region-list flag (--regions) as (y, x) pairs."""
  try:
    out = [tuple(int(v) for v in item.split(':')) for item in items]
  except ValueError:
    out = []
  if not out or any(len(c) != 2 for c in out):
    raise app.UsageError(f'--{name} needs y:x corners, got {",".join(items)}')
  return out


def parse_scene(spec: str) -> tuple[str, str, tuple[int, int, int, int]]:
  """'name=folder@y:x:h:w' (a --scenes item) as (name, folder, crop)."""
  try:
    name, rest = spec.split('=', 1)
    folder, crop = rest.rsplit('@', 1)
    y, x, h, w = (int(v) for v in crop.split(':'))
  except ValueError:
    raise app.UsageError(f'a scene is name=lightfield_folder@y:x:h:w, got {spec!r}') from None
  return name, folder, (y, x, h, w)


# ---------------------------------------------------------------------------------------------------
# Light-field ground-truth cases.


class Case(NamedTuple):
  """DFP's inputs with a true all-in-focus answer."""
  lr: np.ndarray  # [N, h, w, C] the refocused slices, area-downsampled by the scale (float32).
  gt: np.ndarray  # [h * scale, w * scale, C] the centre view (all in focus), cropped to match.
  planes: np.ndarray  # [N] the slices' disparities, ascending.


def focal_stack(lf: lightfield.LightField, num_planes: int = 2, planes=None,
                aperture: float = math.inf) -> lightfield.FocalStack:
  """`lightfield.make_focal_stack` with N planes chosen automatically, or `planes`; the light-field
  job's defaults otherwise."""
  return lightfield.make_focal_stack(lf, lightfield.LightFieldConfig(
      num_planes=num_planes, planes=None if planes is None else tuple(float(d) for d in planes),
      aperture=aperture))


def at_scale(stack: lightfield.FocalStack, center_view, scale: int) -> Case:
  """The case at `scale`: the slices area-downsampled by it, the truth cropped to their size x it."""
  lr = resample.area_downsample(stack.slices, scale)
  gt = np.asarray(center_view, np.float32)[:lr.shape[1] * scale, :lr.shape[2] * scale]
  return Case(lr, gt, stack.planes)


def gt_case(folder: str, crop=None, scale: int = 1, num_planes: int = 2, planes=None,
            aperture: float = math.inf) -> Case:
  """Light field `folder` (views cropped to y,x,h,w `crop`) -> focal stack -> inputs at `scale`."""
  lf = lightfield.load_light_field(folder, crop=None if crop is None else tuple(crop))
  return at_scale(focal_stack(lf, num_planes, planes, aperture), lf.center_view, scale)


def scene_case(spec: str, scale: int) -> tuple[str, Case]:
  """A --scenes item as (name, two-slice `Case` at `scale`)."""
  name, folder, crop = parse_scene(spec)
  return name, gt_case(folder, crop, scale)


class Stacks:
  """(slices [N, S, S, C], truth [S, S, C], planes) per (scene, region, aperture, N): from
  <bench_dir>/stacks/*.npz, else made (the light field is loaded once per scene and region)."""

  def __init__(self, folder: str, size: int):
    self.folder, self.size = folder, size
    self._lf_key, self._lf = None, None

  def path(self, scene, src, region, ap_label, ap, n) -> str:
    lfc = lightfield.LightFieldConfig(num_planes=n, aperture=ap)
    ident = json.dumps([os.path.abspath(src), region, self.size, dataclasses.asdict(lfc),
                        lightfield.SHIFT_METHOD], default=str)
    h = hashlib.sha256(ident.encode()).hexdigest()[:10]
    return os.path.join(self.folder, f'{scene}_{region[0]}_{region[1]}_{self.size}_a{ap_label}_n{n}_{h}.npz')

  def get(self, scene, src, region, ap_label, ap, n):
    path = self.path(scene, src, region, ap_label, ap, n)
    if os.path.exists(path):
      with np.load(path) as z:
        return z['slices'], z['gt'], z['planes']
    if self._lf_key != (src, region):
      self._lf = lightfield.load_light_field(src, crop=(region[0], region[1], self.size, self.size))
      self._lf_key = (src, region)
    t0 = time.perf_counter()
    stack = lightfield.make_focal_stack(self._lf, lightfield.LightFieldConfig(num_planes=n, aperture=ap))
    gt = np.asarray(self._lf.center_view, np.float32)
    logging.info('focal stack %s %d:%d a=%s N=%d: planes %s (%.1f s)', scene, region[0], region[1], ap_label,
                 n, np.round(stack.planes, 3).tolist(), time.perf_counter() - t0)
    os.makedirs(self.folder, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
      np.savez(f, slices=stack.slices.astype(np.float32), gt=gt, planes=stack.planes)
    os.replace(tmp, path)
    return stack.slices.astype(np.float32), gt, stack.planes


SEAM_PX = 8  # Issue 23: "the RMS error within 8 px of tile borders".


def seam_ratio(err2: np.ndarray, plan, scale: int, px: int = SEAM_PX) -> float:
  """RMS error within `px` output pixels of an inner tile border (a `tiles.TilePlan` at `scale`) over
  the RMS error elsewhere; err2 [H, W, C] is the squared error of the output."""
  h, w = err2.shape[:2]
  near = np.zeros((h, w), bool)
  t = plan.tile * scale
  for starts, axis in ((plan.starts_y, 0), (plan.starts_x, 1)):
    for s0 in starts:
      for edge in (s0 * scale, s0 * scale + t):
        if 0 < edge < (h if axis == 0 else w):
          sl = slice(max(0, edge - px), edge + px)
          if axis == 0:
            near[sl, :] = True
          else:
            near[:, sl] = True
  e = err2.mean(axis=-1)
  return float(np.sqrt(e[near].mean() / e[~near].mean()))


def psnr(image, gt) -> float:
  """PSNR (dB) of `image` against the top-left part of `gt` of its size."""
  return float(metrics.psnr(jnp.asarray(image), jnp.asarray(gt[:image.shape[0], :image.shape[1]])))


def gt_scores(image, gt) -> dict[str, float]:
  """`metrics.gt_metrics` (PSNR, SSIM, on RGB and luma) as floats."""
  return {k: float(v) for k, v in metrics.gt_metrics(jnp.asarray(image), jnp.asarray(gt)).items()}


def main_stage_start(lr, config: FusionConfig, key):
  """What `fusion.fuse` does before its main stage (`fusion.prepare_main_stage`), for scripts that run
  the main stage window by window. Returns (stage, state, problem, raw maps [N, H, W], channels)."""
  x = fusion.validate_images(lr, config)
  start = fusion.prepare_main_stage(key, x, config, progress=None)
  return start.stage, start.state, start.problem, start.raw_maps, x.shape[-1]


def fixed_trajectory(lr, gt, config: FusionConfig, key, window: int | None = None) -> tuple[list, np.ndarray]:
  """The fixed run of the main stage (the same program and trajectory as fuse(stop='fixed')), window by
  window: per window the step, PSNR of the EMA result against `gt`, the stop statistic ('change', from
  the second window on), the mean loss terms and the seconds so far. Returns (rows, final output)."""
  stage, state, problem, _, c = main_stage_start(lr, config, key)
  window = window or config.stop_window
  rows, previous, t0 = [], None, time.perf_counter()
  out = None
  for done in range(window, config.iters + 1, window):
    state, report = optimize.run_stage(stage, state, problem, window, window, None, loop=config.loop)
    current, change = stage.jit_output_change(state, previous if previous is not None else jnp.float32(0))
    out = np.asarray(fusion.final_output(state, config=config, channels=c))
    row = {'step': done, 'psnr': psnr(out, gt), 'seconds': time.perf_counter() - t0,
           'terms': {k: float(np.mean(v)) for k, v in report.history.items()}}
    if previous is not None:
      row['change'] = float(change)
    previous = current
    rows.append(row)
    logging.info('fixed run: step %d PSNR %.2f change %s', done, row['psnr'], row.get('change'))
  return rows, out


# ---------------------------------------------------------------------------------------------------
# Timings.


@contextlib.contextmanager
def private_compilation_cache(prefix: str = 'dfp_bench_cache_'):
  """JAX's persistent compilation cache in a temporary folder of this process's own (every program
  cached, however fast it compiled), removed on exit, so that a "cold" compile is cold whatever earlier
  runs left in the user's cache. Yields `empty()`, which empties it again, and `hits()`, the number of
  persistent-cache hits so far (JAX's monitoring event)."""
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix=prefix)
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  count = [0]

  def listener(event, **kwargs):
    del kwargs
    if event == '/jax/compilation_cache/cache_hits':
      count[0] += 1

  monitoring.register_event_listener(listener)

  def empty():
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)

  try:
    yield empty, lambda: count[0]
  finally:
    if hasattr(monitoring, 'unregister_event_listener'):  # Older jax lacks it.
      monitoring.unregister_event_listener(listener)
    shutil.rmtree(folder, ignore_errors=True)


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss) if sys.platform == 'darwin' else int(rss) * 1024


# ---------------------------------------------------------------------------------------------------
# The authors' PyTorch step, measured in the same run as ours (`../shared/tools/ref_step_bench.py`: their
# own `net/` and losses from a snapshot of their repository kept outside the project, in a torch venv).

AUTHORS_BENCH = os.path.join(os.path.dirname(ROOT), 'shared', 'tools', 'ref_step_bench.py')
NOT_MEASURED = ("The authors' step was NOT measured in this run (no --authors_python / --authors_repo): "
                'dfp_jax only, no comparison with the authors\' code.')


def define_authors_flags() -> None:
  """--authors_python, --authors_repo, --authors_bench, --threads: how to run the authors' step."""
  flags.DEFINE_string('authors_python', None, "Python of a torch venv that runs the authors' step "
                      '(with --authors_repo); without both, their step is not measured and the output '
                      'says so.')
  flags.DEFINE_string('authors_repo', None, "The authors' repository (a git dir or checkout of "
                      'GuYuanjie/DeepFusionPrior) outside the project: the MIRROR of --authors_bench.')
  flags.DEFINE_string('authors_bench', AUTHORS_BENCH, "The script that times the authors' step "
                      "(it prints one JSON line per stage and HR size).")
  flags.DEFINE_integer('threads', 2, "torch threads of the authors' step (torch.set_num_threads); ours "
                       "runs with XLA's own thread pool (reported).")


class AuthorsRun(NamedTuple):
  """One run of the authors' bench: its rows {(stage, hr): row} (a failed row has 'error' instead of the
  timings), its '#' header lines, and the load average (1, 5, 15 min) before and after it."""
  rows: dict
  header: list
  loadavg_before: tuple
  loadavg_after: tuple
  seconds: float


class Authors(NamedTuple):
  """How to run the authors' step (`authors_from_flags`)."""
  python: str
  repo: str
  bench: str
  threads: int

  def step(self, hr_sizes, stages=('main', 'mask'), reps: int = 10, warmup: int | None = None) -> AuthorsRun:
    """Times their steps at the HR sizes (their mask stage at HR / 2) in a child process. Raises
    RuntimeError if it fails or leaves out a row asked for."""
    cmd = [self.python, self.bench, '--sizes', *map(str, hr_sizes), '--stages', ','.join(stages),
           '--reps', str(reps), '--threads', str(self.threads)]
    if warmup is not None:
      cmd += ['--warmup', str(warmup)]
    tmp = tempfile.mkdtemp(prefix='dfp_authors_')  # Their code is extracted here; removed after.
    before = os.getloadavg()
    t0 = time.perf_counter()
    try:
      r = subprocess.run(cmd, env=dict(os.environ, MIRROR=self.repo, TMPDIR=tmp), capture_output=True,
                         text=True, check=False)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    seconds, after = time.perf_counter() - t0, os.getloadavg()
    if r.returncode != 0:
      raise RuntimeError(f"the authors' step failed ({' '.join(cmd)}, exit {r.returncode}): "
                         f'{(r.stderr or r.stdout).strip()[-2000:]}')
    lines = r.stdout.splitlines()
    rows = {}
    for line in lines:
      if line.startswith('{'):
        row = json.loads(line)
        rows[(row['stage'], int(row['hr']))] = row
    missing = [(s, h) for h in hr_sizes for s in stages if (s, int(h)) not in rows]
    if missing:
      raise RuntimeError(f"the authors' step printed no row for {missing} ({' '.join(cmd)}): "
                         f'{r.stdout.strip()[-2000:]}')
    return AuthorsRun(rows, [l for l in lines if l.startswith('#')], before, after, seconds)


def authors_stage(runs: list[AuthorsRun], stage: str, hr: int) -> dict:
  """One (stage, HR size) over several runs of the authors' step: {'params', 'error'} when a run
  failed, else {'params', 'runs': each run's median s/step}."""
  rows = [a.rows[(stage, hr)] for a in runs]
  failed = [r['error'] for r in rows if 'error' in r]
  if failed:
    return {'params': rows[0]['params'], 'error': failed[0]}
  return {'params': rows[0]['params'], 'runs': [r['median_s'] for r in rows]}


def authors_from_flags(scale: int) -> Authors | None:
  """The authors' step as the flags (`define_authors_flags`) give it, or None without them; `scale`:
  ours (their bench times their x2 setting only)."""
  python, repo = FLAGS.authors_python, FLAGS.authors_repo
  if not python and not repo:
    return None
  if not (python and repo):
    raise app.UsageError('--authors_python and --authors_repo go together')
  if scale != 2:
    raise app.UsageError("the authors' bench times their x2 setting only: use --scale=2 with --authors_*")
  for flag, path in (('authors_python', python), ('authors_repo', repo),
                     ('authors_bench', FLAGS.authors_bench)):
    if not os.path.exists(path):
      raise app.UsageError(f'--{flag}: {path} does not exist')
  return Authors(python, repo, FLAGS.authors_bench, FLAGS.threads)


def xla_threads() -> dict:
  """What XLA:CPU runs our step with: its intra-op thread pool has one thread per core this process may
  use (XLA's default; XLA_FLAGS may change it)."""
  return {'cores_available': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
          else os.cpu_count(), 'cores_machine': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', '')}


def spread(values) -> dict:
  """Median, min, max and (max - min) / median of per-round figures."""
  v = [float(x) for x in values]
  med = float(np.median(v))
  return {'median': med, 'min': min(v), 'max': max(v), 'rounds': v,
          'spread': (max(v) - min(v)) / med if med else float('nan')}


# ---------------------------------------------------------------------------------------------------
# Oracles (`studies/x1_ceiling.py`): fusions of a focal stack by simple per-pixel rules, and bounds
# that use the truth. Each takes a stack [N, H, W, C] of registered inputs in [0, 1] (float32) and
# returns one image [H, W, C]. The `oracle_*` functions are bounds for analysis, never methods.


def select(stack: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Per-pixel selection: stack [N, H, W, C], index [H, W] -> [H, W, C]."""
  return np.take_along_axis(stack, index[None, ..., None], axis=0)[0]


def _blur(planes: np.ndarray, sigma: float) -> np.ndarray:
  return np.stack([cv2.GaussianBlur(np.ascontiguousarray(p, np.float32), (0, 0), sigma) for p in planes])


def feathered(stack: np.ndarray, maps: np.ndarray, sigma: float) -> np.ndarray:
  """The fusion by decision maps [N, H, W] smoothed by a Gaussian of sigma (renormalised to sum 1)."""
  soft = _blur(maps, sigma)
  soft /= soft.sum(0, keepdims=True)
  return np.einsum('nhw,nhwc->hwc', soft, stack)


def laplacian_selection(stack: np.ndarray, sigma: float) -> np.ndarray:
  """Per pixel, the input with the largest |4-neighbour Laplacian| of luma, smoothed by a Gaussian of
  sigma: the focus cue of DFP's joint-gradient loss (max |Lap| over the inputs) used as a rule."""
  lap = np.abs(np.asarray(filters.laplacian(filters.luma(jnp.asarray(stack)))))
  return select(stack, _blur(lap, sigma).argmax(0))


def laplacian_energy_fusion(stack: np.ndarray) -> np.ndarray:
  """The "windowed Laplacian-energy selection" baseline: per pixel the input [N, H, W, C] with the largest
  box-9 Laplacian energy of luma (`lightfield.focus_measure`, the measure that chooses the focal planes);
  ties to the lower index."""
  energy = jax.vmap(lightfield.focus_measure)(jnp.asarray(stack))
  return select(np.asarray(stack), np.asarray(jnp.argmax(energy, axis=0)))


def oracle_pixel(stack: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Per pixel, the input with the smallest RGB squared error against the truth."""
  return select(stack, ((stack - gt[None]) ** 2).sum(-1).argmin(0))


def oracle_window(stack: np.ndarray, gt: np.ndarray, sigma: float) -> np.ndarray:
  """Per pixel, the input whose squared error against the truth, smoothed by a Gaussian of sigma, is
  smallest (selection that decides per region)."""
  return select(stack, _blur(((stack - gt[None]) ** 2).sum(-1), sigma).argmin(0))


def oracle_blend(stack: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Per pixel, the convex combination of the N inputs nearest the truth (squared error over C).

  Exact by enumeration of the simplex's faces: on each subset S of inputs the affine least-squares fit
  (weights summing to 1) is kept where its weights are all >= 0, and the best kept fit wins. The
  nearest point of the inputs' convex hull is a positive combination of at most C + 1 affinely
  independent inputs (Caratheodory), whose affine fit is unique, so subsets of up to C + 1 inputs
  suffice. Singletons are the inputs themselves: never below `oracle_pixel`.
  """
  n, h, w, c = stack.shape
  x = stack.reshape(n, h * w, c).astype(np.float64)
  g = gt.reshape(h * w, c).astype(np.float64)
  best = np.full(h * w, np.inf)
  out = np.zeros((h * w, c))
  for mask in range(1, 2 ** n):
    idx = [i for i in range(n) if mask >> i & 1]
    if len(idx) > c + 1:
      continue
    last = x[idx[-1]]
    if len(idx) == 1:
      wts, fit = np.ones((h * w, 1)), last
    else:
      d = np.stack([x[i] - last for i in idx[:-1]], axis=-1)  # [P, C, k - 1]
      a = np.einsum('pkc,pc->pk', np.linalg.pinv(d, rcond=1e-10), g - last)
      wts = np.concatenate([a, 1.0 - a.sum(-1, keepdims=True)], axis=-1)
      fit = last + np.einsum('pck,pk->pc', d, a)
    err = np.where(np.all(wts >= -1e-9, axis=-1), ((fit - g) ** 2).sum(-1), np.inf)
    better = err < best
    best = np.where(better, err, best)
    out[better] = fit[better]
  return out.reshape(h, w, c).astype(np.float32)
