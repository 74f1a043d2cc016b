"""The batch job of `experiments/run.py --input_dir=DATASET`: every scene folder, resumable.

Layout: DATASET/<scene>/ holds the scene's registered inputs (`A.png`, `B.png`, more for stacks; any
image files, taken in name order; `GT.*` and a `fused/` subfolder are ignored, as in the benchmark
layout). Each scene's outputs are those of the single-scene job, in OUTPUT_DIR/<scene>/, written to a
temporary folder and renamed into place. OUTPUT_DIR/manifest.json records every scene:

  {"scenes": {scene: {"status": "done" | "failed" | "pending", "files": {path: sha256 hex},
                      "error": message or null, "seconds": wall time, "inputs": {path: sha256},
                      "config_sha256": ...}}, "config": {...}, "updated": ...}

`files` paths are relative to OUTPUT_DIR. Restarted with the same command after an interruption (Ctrl-C,
kill -9, power loss), scenes whose files all match their recorded checksums, with the same inputs and
configuration, are skipped; everything else is redone. The manifest is rewritten atomically after
every scene, under a file lock, so several processes (`--num_processes`) can share one output folder.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import time

from absl import flags
from absl import logging
import jax
import numpy as np

from dfp_jax import batch
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from experiments import cli

try:
  import fcntl  # POSIX only; without it the manifest lock is a no-op.
except ImportError:  # pragma: no cover
  fcntl = None

MANIFEST = 'manifest.json'
IGNORED_STEMS = ('gt',)


def define_batch_flags():
  flags.DEFINE_string('input_dir', None, 'Batch mode: a folder with one subfolder per scene (A.*, B.*, '
                      '... in name order); outputs go to --output_dir/<scene>/ plus manifest.json.')
  flags.DEFINE_enum('batch_strategy', 'auto', list(batch.STRATEGIES), 'How scenes share the machine: '
                    'vmap (one program over a group of scenes; best on GPU/TPU), shard (one scene per '
                    'device, all devices at once), loop (one scene after another), auto (a short '
                    'measured probe per shape picks the fastest).')
  flags.DEFINE_integer('max_scenes_per_step', None, 'Cap on the scenes optimised at once (default: as '
                       'many as fit in memory).')
  flags.DEFINE_bool('resume', True, 'Skip scenes already done with verified checksums, same inputs '
                    'and same configuration.')
  flags.DEFINE_string('coordinator_address', None, 'Multi-process runs: host:port of process 0 '
                      '(jax.distributed.initialize); each process takes every num_processes-th scene.')
  flags.DEFINE_integer('num_processes', 1, 'Multi-process runs: number of processes.')
  flags.DEFINE_integer('process_id', 0, 'Multi-process runs: this process\'s index.')
  flags.DEFINE_integer('host_devices', 0, 'CPU backend: split the host into this many JAX devices so '
                       'the device-parallel strategies use every core (0 = one per core, at most 8; '
                       '1 = a single device). Ignored on GPU/TPU.')


def setup_devices(f):
  """Before JAX starts: one CPU device per core (XLA:CPU runs one scene's step on about one core)."""
  n = f.host_devices
  if n <= 0:
    try:
      n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
      n = os.cpu_count() or 1
    n = max(1, min(n, 8))
  if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', n)


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def result_folder_kind(folder: str) -> str | None:
  """'batch' if folder holds a batch manifest of this tool, 'scene' if it holds a single-scene
  summary.json of this tool, else None: such folders hold results, not a scene's inputs."""
  for name, kind, key in ((MANIFEST, 'batch', 'scenes'), ('summary.json', 'scene', 'dfp_jax_version')):
    try:
      with open(os.path.join(folder, name), encoding='utf-8') as fh:
        content = json.load(fh)
      if isinstance(content, dict) and key in content:
        return kind
    except (OSError, ValueError, TypeError):
      pass
  return None


def discover_scenes(input_dir: str) -> list[tuple[str, list[str]]]:
  """[(scene name, [input paths in name order])] for every subfolder of input_dir, except hidden ones and
  folders of this tool's results (a batch output folder, a single-scene result), which are logged."""
  if not os.path.isdir(input_dir):
    raise errors.InputError(f'{input_dir}: --input_dir is not a folder')
  scenes = []
  for name in sorted(os.listdir(input_dir)):
    folder = os.path.join(input_dir, name)
    if name.startswith('.') or not os.path.isdir(folder):
      continue
    kind = result_folder_kind(folder)
    if kind:
      logging.info('%s: skipped, it holds dfp_jax %s results, not a scene\'s inputs', folder, kind)
      continue
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
             if os.path.splitext(f)[1].lower() in image_io.READ_EXTENSIONS
             and os.path.splitext(f)[0].lower() not in IGNORED_STEMS and not f.startswith('.')]
    scenes.append((name, files))
  if not scenes:
    raise errors.InputError(f'{input_dir}: no scene subfolders (expected {input_dir}/<scene>/A.png, B.png)')
  return scenes


@contextlib.contextmanager
def _locked(path: str):
  if fcntl is None:
    yield
    return
  with open(path + '.lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_manifest(output_dir: str) -> dict:
  path = os.path.join(output_dir, MANIFEST)
  try:
    with open(path) as f:
      data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get('scenes'), dict):
      return data
    logging.warning('%s: not a manifest; starting a new one', path)
  except FileNotFoundError:
    pass
  except (OSError, ValueError) as e:
    logging.warning('%s: unreadable (%s); starting a new one', path, e)
  return {'scenes': {}}


def update_manifest(output_dir: str, updates: dict, extra: dict | None = None) -> dict:
  """Merges {scene: entry} into the manifest on disk (read-modify-write under a lock, atomic)."""
  path = os.path.join(output_dir, MANIFEST)
  os.makedirs(output_dir, exist_ok=True)
  with _locked(path):
    data = read_manifest(output_dir)
    data['scenes'].update(updates)
    if extra:
      data.update(extra)
    data['updated'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    image_io.write_json(path, data)
  return data


def verified_done(output_dir: str, entry: dict | None, inputs_sha: dict, config_sha: str) -> bool:
  """True if the manifest entry says done and every recorded file still has its checksum."""
  if not entry or entry.get('status') != 'done' or not entry.get('files'):
    return False
  if entry.get('inputs') != inputs_sha or entry.get('config_sha256') != config_sha:
    return False
  for rel, digest in entry['files'].items():
    path = os.path.join(output_dir, rel)
    if not os.path.isfile(path) or sha256_file(path) != digest:
      return False
  return True


def config_digest(config, **more) -> str:
  """Digest of everything that changes a scene's outputs (the configuration, seed, bit depth)."""
  payload = {'config': config.to_dict(), **more}
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class _Progress:
  """Scenes done, scene-iterations per second and ETA across the batch (absl INFO lines)."""

  def __init__(self, total: int, iters_per_scene: int):
    self.total, self.iters = total, iters_per_scene
    self.done = self.failed = 0
    self.t0 = time.perf_counter()

  def scene_finished(self, ok: bool):
    self.done += 1
    self.failed += 0 if ok else 1
    el = time.perf_counter() - self.t0
    rate = self.done * self.iters / el if el > 0 else float('nan')
    eta = (self.total - self.done) * self.iters / rate if rate > 0 else float('nan')
    bar = '#' * int(20 * self.done / max(self.total, 1))
    logging.info('[batch] [%-20s] %d/%d scenes (%d failed)  %.1f scene-it/s  ETA %s', bar, self.done,
                 self.total, self.failed, rate, _fmt(eta))


def _fmt(s):
  if not np.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def init_distributed(f):
  if f.num_processes > 1:
    if not f.coordinator_address:
      raise ValueError('--num_processes > 1 needs --coordinator_address=host:port')
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
    cli.check_backend()
  return jax.process_index(), jax.process_count()


def run_batch(f) -> int:
  """The batch job. Returns 0 if every scene is done, 1 if some failed."""
  config = cli.config_from_flags(f)
  rank, world = init_distributed(f)
  output_dir = image_io.resolve_output_dir(f.output_dir)
  if image_io.is_inside(f.input_dir, output_dir):
    raise errors.InputError(f'--output_dir={f.output_dir} holds --input_dir={f.input_dir}: the scenes\' result '
                            'folders would replace the input scene folders; choose another --output_dir')
  found = discover_scenes(f.input_dir)
  for name, paths in found:
    if paths and os.path.realpath(output_dir) == os.path.realpath(os.path.join(f.input_dir, name)):
      raise errors.InputError(f'--output_dir={f.output_dir} is the scene folder {os.path.join(f.input_dir, name)}, '
                              'which holds that scene\'s inputs; choose another --output_dir')
  all_scenes = [(name, paths) for name, paths in found
                # --output_dir inside --input_dir (a new or result folder, checked above): not a scene.
                if not image_io.is_inside(os.path.join(f.input_dir, name), output_dir)]
  if not all_scenes:
    raise errors.InputError(f'{f.input_dir}: no scene subfolders besides --output_dir')
  mine = [s for k, s in enumerate(all_scenes) if k % world == rank]
  cfg_sha = config_digest(config, seed=f.seed, output_bit_depth=f.output_bit_depth)
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise errors.InputError(f'{f.output_dir}: cannot create the output folder ({e.strerror or e})') from None
  mine_names = {name for name, _ in mine}
  for leftover in os.listdir(output_dir):  # Staging folders of this process's scenes, interrupted.
    for marker in ('.tmp-', '.old-'):
      if leftover.startswith('.') and marker in leftover and leftover[1:].split(marker)[0] in mine_names:
        shutil.rmtree(os.path.join(output_dir, leftover), ignore_errors=True)
  manifest = read_manifest(output_dir)
  header = {'config': config.to_dict(), 'input_dir': os.path.abspath(f.input_dir),
            'versions': cli.versions(), 'backend': jax.default_backend()}

  todo, loaded, updates = [], {}, {}
  for name, paths in mine:
    try:
      inputs_sha = {os.path.relpath(p, f.input_dir): sha256_file(p) for p in paths}
    except OSError as e:
      updates[name] = _entry('failed', error=f'{name}: {e}')
      continue
    if f.resume and verified_done(output_dir, manifest['scenes'].get(name), inputs_sha, cfg_sha):
      logging.info('[batch] %s: already done (checksums verified), skipped', name)
      continue
    try:
      if len(paths) < 2:
        raise errors.InputError(f'{os.path.join(f.input_dir, name)}: a scene needs at least 2 input '
                                f'images, found {len(paths)}')
      images, infos = image_io.load_inputs(paths)
      fusion.validate_images(images, config, [i.path for i in infos])
      # Before the work, not after it: a scene folder holding files this tool did not write.
      image_io.check_output_dir(os.path.join(output_dir, name), protect=paths)
    except errors.InputError as e:
      updates[name] = _entry('failed', error=str(e), inputs=inputs_sha)
      logging.error('[batch] %s: %s', name, e)
      continue
    loaded[name] = (images, infos, inputs_sha)
    todo.append(name)
    updates[name] = _entry('pending', inputs=inputs_sha)
  for entry in updates.values():  # Every entry records the configuration it was tried with.
    entry['config_sha256'] = cfg_sha
  update_manifest(output_dir, updates, header)
  failed = [n for n, e in updates.items() if e['status'] == 'failed']
  logging.info('[batch] %d scene(s) for this process: %d to do, %d skipped as done, %d failed to load',
               len(mine), len(todo), len(mine) - len(todo) - len(failed), len(failed))

  progress = _Progress(len(todo), config.iters + config.mask_iters)
  kill_after = int(os.environ.get('DFP_JAX_TEST_KILL_AFTER_SCENES', '0'))
  started = time.perf_counter()

  def on_result(k, result):
    name = todo[k]
    images, infos, inputs_sha = loaded[name]
    seconds = time.perf_counter() - started
    if isinstance(result, batch.BatchError):
      entry = _entry('failed', error=result.message, inputs=inputs_sha)
      logging.error('[batch] %s failed: %s', name, result.message)
    else:
      bit_depth = (int(f.output_bit_depth) if f.output_bit_depth != 'auto'
                   else image_io.auto_bit_depth(infos))
      scene_dir = os.path.join(output_dir, name)
      try:
        with image_io.StagingDir(scene_dir, protect=[i.path for i in infos]) as tmp:
          summary = cli.write_scene_outputs(tmp, result, images, infos, config, bit_depth,
                                            extra={'seed': f.seed, 'scene': name})
          files = {os.path.join(name, rel): sha256_file(os.path.join(tmp, rel))
                   for rel in summary['output']['files']}
      except Exception as e:  # pylint: disable=broad-except
        # Disk full, permissions...: this scene failed, the batch goes on.
        entry = _entry('failed', error=f'{name}: writing the outputs failed: {e}', inputs=inputs_sha)
        logging.error('[batch] %s', entry['error'])
      else:
        seconds = float(result.timings.get('total_s', seconds))
        entry = _entry('done', files=files, inputs=inputs_sha, seconds=seconds,
                       group_size=result.timings.get('group_size', 1),
                       strategy=result.timings.get('strategy'),
                       iterations={'mask': result.timings.get('mask_steps', 0),
                                   'main': result.timings.get('main_steps')})
    entry['config_sha256'] = cfg_sha
    update_manifest(output_dir, {name: entry})
    progress.scene_finished(entry['status'] == 'done')
    if kill_after and progress.done >= kill_after:  # Test hook: a hard kill (as kill -9) mid-batch.
      os.kill(os.getpid(), signal.SIGKILL)

  if todo:
    scenes = [loaded[n][0] for n in todo]
    _, report = batch.fuse_batch(
        scenes, config, keys=[jax.random.key(f.seed)] * len(todo), strategy=f.batch_strategy,
        max_scenes_per_step=f.max_scenes_per_step, on_result=on_result, names=todo,
        check_memory=f.check_memory)
    update_manifest(output_dir, {}, {'buckets': report.buckets})
    logging.info('[batch] %d scene(s) in %.1f s: %.2f scene-iterations/s', len(todo), report.seconds,
                 report.scene_iters_per_s)
  final = read_manifest(output_dir)['scenes']
  bad = sorted(n for n, _ in mine if final.get(n, {}).get('status') != 'done')
  if bad:
    logging.error('[batch] %d scene(s) failed: %s (reasons in %s)', len(bad), ', '.join(bad),
                  os.path.join(output_dir, MANIFEST))
    return 1
  logging.info('[batch] all %d scene(s) done: %s', len(mine), output_dir)
  return 0


def _entry(status, files=None, error=None, inputs=None, seconds=None, **more) -> dict:
  out = {'status': status, 'files': files or {}, 'error': error, 'seconds': seconds,
         'inputs': inputs or {}}
  out.update(more)
  return out
