"""The batch job: `--input_dir=DATASET` -> every scene folder fused into `--output_dir/<scene>/`.

Layout: DATASET/<scene>/ holds the scene's registered inputs (`A.png`, `B.png`, more for stacks; any
image files, taken in name order; `GT.*` and a `fused/` subfolder are ignored, as in the benchmark
layout; folders holding this tool's results are skipped). Each scene's outputs are those of the
single-scene job, in OUTPUT_DIR/<scene>/, staged and moved into place; OUTPUT_DIR/manifest.json
(`app.manifest`) records every scene.

The manifest is the work queue. Each process (started at any time, on any host that shares the output
folder) repeatedly claims the next scene that is neither done nor claimed by a live process, together
with up to `claim_size` more pending scenes of the same shape (the engine optimises a group of
same-shape scenes as one program), fuses them and records them, until every scene is done or failed.
A process whose remaining scenes are all claimed by live processes waits for them; a claim whose
process died is taken over (`manifest.claim_is_dead`). Restarted with the same command after an
interruption (Ctrl-C, kill -9, power loss), scenes whose files all match their recorded checksums, with
the same inputs and configuration, are skipped; everything else is redone. A scene that failed is
retried by processes started after the failure, never by the ones that saw it fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time

from absl import logging
import jax

from dfp_jax import align as align_lib
from dfp_jax import batch
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import memory
from dfp_jax import optimize
from dfp_jax import output_folder
from dfp_jax.app import manifest
from dfp_jax.app import outputs
from dfp_jax.app import runtime
from dfp_jax.app.scene import JobArgs
from dfp_jax.app.scene import register

IGNORED_STEMS = ('gt',)
POLL_S = 2.0  # How often a waiting process looks at the queue again.


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchArgs(JobArgs):
  input_dir: str = ''  # The dataset: one subfolder per scene.
  strategy: str = 'auto'  # fuse_batch's strategy.
  max_scenes_per_step: int | None = None  # Cap on a claimed group (and on what is optimised at once).
  resume: bool = True
  coordinator_address: str | None = None
  num_processes: int = 1
  process_id: int = 0
  align: align_lib.AlignConfig = align_lib.AlignConfig()


def result_folder_kind(folder: str) -> str | None:
  """'batch' if folder holds a batch manifest of this tool, 'scene' if it holds a single-scene
  summary.json of this tool, else None: such folders hold results, not a scene's inputs."""
  for name, kind, key in ((manifest.MANIFEST, 'batch', 'scenes'),
                          ('summary.json', 'scene', 'dfp_jax_version')):
    try:
      with open(os.path.join(folder, name), encoding='utf-8') as fh:
        content = json.load(fh)
      if isinstance(content, dict) and key in content:
        return kind
    except (OSError, ValueError, TypeError):
      pass
  return None


def _image_files(folder: str) -> list[str]:
  return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if os.path.splitext(f)[1].lower() in image_io.READ_EXTENSIONS
          and os.path.splitext(f)[0].lower() not in IGNORED_STEMS and not f.startswith('.')]


def discover_scenes(input_dir: str) -> list[tuple[str, list[str]]]:
  """[(scene name, [input paths in name order])] for every subfolder of input_dir, except hidden ones,
  folders of this tool's results (a batch output folder, a single-scene result) and folders holding no
  image but only such results further down, which are logged."""
  if not os.path.isdir(input_dir):
    raise errors.InputError(f'{input_dir}: --input_dir is not a folder')
  scenes = []
  for name in sorted(os.listdir(input_dir)):
    folder = os.path.join(input_dir, name)
    if name.startswith('.') or not os.path.isdir(folder):
      continue
    kind = result_folder_kind(folder)
    files = [] if kind else _image_files(folder)
    if not files and not kind:
      inner = [d for d in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d))]
      if inner and all(result_folder_kind(os.path.join(folder, d)) for d in inner):
        kind = 'nested'
    if kind:
      logging.info("%s: skipped, it holds dfp_jax %s results, not a scene's inputs", folder,
                   'batch' if kind == 'nested' else kind)
      continue
    scenes.append((name, files))
  if not scenes:
    raise errors.InputError(f'{input_dir}: no scene subfolders (expected {input_dir}/<scene>/A.png, B.png)')
  return scenes


@dataclasses.dataclass
class Scene:
  """One scene of the dataset as the queue sees it."""
  name: str
  paths: list
  inputs_sha: dict = dataclasses.field(default_factory=dict)
  headers: list | None = None  # image_io.ImageHeader of each input, once read.
  shape: tuple | None = None  # (N, H, W, C) from the headers: the bucket key of the engine.
  error: str | None = None  # Why it cannot be fused (found before any decoding).


def _survey(args: BatchArgs, name: str, paths: list, output_dir: str, config) -> Scene:
  """Checksums and headers of a scene's inputs, and every refusal that needs no decoding."""
  scene = Scene(name, paths)
  folder = os.path.join(args.input_dir, name)
  try:
    if name in manifest.RESERVED:
      raise errors.InputError(f'{folder}: the scene name {name!r} is the name of a file of the batch in '
                              '--output_dir; rename the scene folder')
    for p in paths:
      image_io.check_readable(p)  # Before hashing: a FIFO would block.
    scene.inputs_sha = {os.path.relpath(p, args.input_dir): manifest.sha256_file(p) for p in paths}
    if len(paths) < 2:
      raise errors.InputError(f'{folder}: a scene needs at least 2 input images, found {len(paths)}')
    scene.headers = image_io.read_headers(paths)
    h, w = scene.headers[0].height, scene.headers[0].width
    c = max(hd.channels for hd in scene.headers)
    scene.shape = (len(paths), h, w, c)
    short = fusion.size_shortfall(config, h, w)
    if short:
      raise errors.InputError(f'{paths[0]}: {h}x{w} is too small: {short}')
    if args.check_memory:
      memory.check_memory(h, w, len(paths), c, config, name=folder)
    # Before the work, not after it: a scene folder holding files this tool did not write.
    output_folder.check_output_dir(os.path.join(output_dir, name), protect=paths)
  except (errors.InputError, errors.MemoryBudgetError, OSError) as e:
    scene.error = str(e) if not isinstance(e, OSError) else f'{folder}: {e}'
  return scene


class _Heartbeat:
  """A thread refreshing this process's claims every HEARTBEAT_S (also while it compiles or runs a long
  stage), so that no other process takes a live claim over."""

  def __init__(self, output_dir: str, owner: manifest.Owner):
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._run, args=(output_dir, owner), daemon=True,
                                   name='dfp_jax-heartbeat')

  def _run(self, output_dir, owner):
    while not self.stop.wait(manifest.HEARTBEAT_S):
      try:
        manifest.heartbeat(output_dir, owner)
      except Exception as e:  # pylint: disable=broad-except  (a full disk must not kill the run)
        logging.warning('[batch] could not refresh the heartbeat in %s: %s', output_dir, e)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stop.set()
    self.thread.join(timeout=5)
    return False


class _Progress:
  """Scenes done over all processes, this process's rate, and an ETA (absl INFO lines)."""

  def __init__(self, total: int):
    self.total = total
    self.mine = 0
    self.t0 = time.perf_counter()

  def report(self, done: int, failed: int, running: int):
    el = time.perf_counter() - self.t0
    rate = self.mine / el if el > 0 and self.mine else float('nan')
    left = self.total - done - failed
    eta = left / rate if rate > 0 else float('nan')
    bar = '#' * int(20 * (done + failed) / max(self.total, 1))
    logging.info('[batch] [%-20s] %d/%d scenes done, %d failed, %d running (all processes); this process '
                 '%.2f scenes/min; ETA %s', bar, done, self.total, failed, running, 60 * rate,
                 optimize.format_seconds(eta))


def claim_size(args: BatchArgs, shape, config) -> int:
  """How many same-shape scenes a process claims at once: --max_scenes_per_step if given; otherwise one
  per local device on a CPU (what the device-parallel strategies fill), or on an accelerator as many as
  fit in its memory (at most 32), so the vmap strategy has a group to work on."""
  if args.max_scenes_per_step:
    return args.max_scenes_per_step
  devices = jax.local_devices()
  if devices[0].platform == 'cpu':
    return len(devices)
  n, h, w, c = shape
  return max(1, min(32, batch.plan.scenes_that_fit(h, w, n, c, config, devices)))


def run_batch(args: BatchArgs) -> int:
  """The batch job. Returns 0 if every scene is done, 1 if some failed."""
  config = args.config
  runtime.init_distributed(args.coordinator_address, args.num_processes, args.process_id)
  output_dir = output_folder.resolve_output_dir(args.output_dir)
  if output_folder.is_inside(args.input_dir, output_dir):
    raise errors.InputError(f'--output_dir={args.output_dir} holds --input_dir={args.input_dir}: the scenes\' '
                            'result folders would replace the input scene folders; choose another --output_dir')
  found = discover_scenes(args.input_dir)
  for name, paths in found:
    if paths and os.path.realpath(output_dir) == os.path.realpath(os.path.join(args.input_dir, name)):
      raise errors.InputError(f'--output_dir={args.output_dir} is the scene folder '
                              f'{os.path.join(args.input_dir, name)}, which holds that scene\'s inputs; '
                              'choose another --output_dir')
  found = [(name, paths) for name, paths in found
           # --output_dir inside --input_dir (a new or result folder, checked above): not a scene.
           if not output_folder.is_inside(os.path.join(args.input_dir, name), output_dir)]
  if not found:
    raise errors.InputError(f'{args.input_dir}: no scene subfolders besides --output_dir')
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise errors.InputError(f'{args.output_dir}: cannot create the output folder ({e.strerror or e})') from None
  with manifest.locked(output_dir):  # Reads (and sets aside) a damaged manifest before any work.
    manifest.read(output_dir)
  cfg_sha = manifest.config_digest(config, seed=args.seed, output_bit_depth=args.output_bit_depth)
  for name, _ in found:  # Staging folders of killed runs (never a live run's: output_folder's rule).
    output_folder.remove_stale_staging(os.path.join(output_dir, name))
  scenes = {name: _survey(args, name, paths, output_dir, config) for name, paths in found}
  header = {'config': config.to_dict(), 'input_dir': os.path.abspath(args.input_dir),
            'versions': runtime.versions(), 'backend': jax.default_backend()}
  owner = manifest.Owner(output_dir)
  try:
    with _Heartbeat(output_dir, owner):
      return _work(args, scenes, output_dir, cfg_sha, header, owner)
  except BaseException:  # Ctrl-C, SIGTERM, an error: what this process claimed goes back to the queue.
    released = manifest.release(output_dir, owner)
    if released:
      logging.warning('[batch] %s: back in the queue', ', '.join(released))
    raise
  finally:
    owner.close()


def _register(output_dir, scenes, cfg_sha, header, owner, started, resume) -> set:
  """Records every scene in the manifest (pending, or failed with what the survey found) unless it is
  verified done or claimed by a live process; returns the names already done."""
  done = set()
  with manifest.locked(output_dir):
    data = manifest.read(output_dir)
    for name, scene in scenes.items():
      old = data['scenes'].get(name)
      if resume and manifest.verified_done(output_dir, old, scene.inputs_sha, cfg_sha):
        logging.info('[batch] %s: already done (checksums verified), skipped', name)
        done.add(name)
        continue
      if old and old.get('status') == 'running' and not manifest.claim_is_dead(output_dir, old.get('claim')):
        continue  # Another live process works on it.
      if scene.error:
        new = manifest.entry('failed', error=scene.error, inputs=scene.inputs_sha, finished=started,
                             host=owner.host, pid=owner.pid)
        logging.error('[batch] %s: %s', name, scene.error)
      else:
        new = manifest.entry('pending', inputs=scene.inputs_sha)
      new['config_sha256'] = cfg_sha
      data['scenes'][name] = new
    data.update(header)
    manifest.write(output_dir, data)
  return done


def _claim(output_dir, scenes, cfg_sha, owner, started, attempted, verified, args, config):
  """Under the lock: the next group of scenes this process may work on (claimed in the manifest), or
  [] with the counts (done, failed, running elsewhere) when there is none."""
  with manifest.locked(output_dir):
    data = manifest.read(output_dir)
    free, running, done, failed = [], 0, 0, 0
    for name, scene in scenes.items():
      e = data['scenes'].get(name) or {}
      status = e.get('status')
      if status == 'done' and (name in verified or manifest.verified_done(
          output_dir, e, scene.inputs_sha, cfg_sha)):
        verified.add(name)
        done += 1
      elif status == 'running' and not owner.owns(e) and not manifest.claim_is_dead(output_dir, e.get('claim')):
        running += 1
      elif status == 'failed' and (name in attempted or float(e.get('finished') or 0) >= started) \
          and e.get('config_sha256') == cfg_sha and e.get('inputs') == scene.inputs_sha:
        failed += 1  # Failed since this process started (or by it): not retried by this process.
      elif scene.error is None and name not in attempted:
        if status == 'running':
          logging.warning('[batch] %s: taking over the claim of %s (process %s), which is gone', name,
                          e['claim'].get('host'), e['claim'].get('pid'))
        free.append(name)
      else:
        failed += 1
    if not free:
      return [], (done, failed, running)
    first = scenes[free[0]]
    group = [n for n in free if scenes[n].shape == first.shape][:claim_size(args, first.shape, config)]
    now = time.time()
    for name in group:
      claimed = manifest.entry('running', inputs=scenes[name].inputs_sha, claim=owner.claim(now))
      claimed['config_sha256'] = cfg_sha
      data['scenes'][name] = claimed
    manifest.write(output_dir, data)
    return group, (done, failed, running)


def _work(args, scenes, output_dir, cfg_sha, header, owner) -> int:
  config = args.config
  started = time.time()
  done0 = _register(output_dir, scenes, cfg_sha, header, owner, started, args.resume)
  verified = set(done0)
  attempted: set = set()
  logging.info('[batch] %d scene(s): %d done already, %d refused before any work; this process %s:%d '
               'shares the rest with any other process on %s', len(scenes), len(done0),
               sum(s.error is not None for s in scenes.values()), owner.host, owner.pid, output_dir)
  progress = _Progress(len(scenes))
  programs = batch.ProgramCache()  # Compiled once per shape in this process, reused by later claims.
  kill_after = int(os.environ.get('DFP_JAX_TEST_KILL_AFTER_SCENES', '0'))
  waiting_since = None
  while True:
    group, (done, failed, running) = _claim(output_dir, scenes, cfg_sha, owner, started, attempted,
                                            verified, args, config)
    if not group:
      if running == 0:
        progress.report(done, failed, running)
        break
      if waiting_since is None:
        waiting_since = time.perf_counter()
        logging.info('[batch] waiting for %d scene(s) claimed by other processes', running)
      time.sleep(POLL_S)
      continue
    waiting_since = None
    attempted.update(group)
    logging.info('[batch] %s: claimed (%d scene(s) of %s)', ', '.join(group), len(group),
                 'x'.join(map(str, scenes[group[0]].shape)))
    _fuse_group(args, [scenes[n] for n in group], output_dir, cfg_sha, owner, programs, progress,
                kill_after)
    progress.report(*_counts(output_dir, scenes))
  with manifest.locked(output_dir):
    final = manifest.read(output_dir)['scenes']
  bad = sorted(n for n in scenes if final.get(n, {}).get('status') != 'done')
  if bad:
    logging.error('[batch] %d scene(s) failed: %s (reasons in %s)', len(bad), ', '.join(bad),
                  os.path.join(output_dir, manifest.MANIFEST))
    return 1
  logging.info('[batch] all %d scene(s) done: %s', len(scenes), output_dir)
  return 0


def _counts(output_dir, scenes) -> tuple[int, int, int]:
  with manifest.locked(output_dir):
    data = manifest.read(output_dir)['scenes']
  status = [(data.get(n) or {}).get('status') for n in scenes]
  return status.count('done'), status.count('failed'), status.count('running')


def _fuse_group(args, group, output_dir, cfg_sha, owner, programs, progress, kill_after):
  """Loads, fuses and records one claimed group of same-shape scenes."""
  config = args.config
  loaded, started = [], time.perf_counter()

  def record(name, entry_):
    entry_.update(config_sha256=cfg_sha, host=owner.host, pid=owner.pid, finished=time.time())
    manifest.update(output_dir, {name: entry_})

  for scene in group:
    try:
      images, infos = image_io.load_inputs(scene.paths, scene.headers)
      fusion.validate_images(images, config, [i.path for i in infos])
      images, valid, alignment = register(images, [i.path for i in infos], args.align)
    except errors.InputError as e:
      record(scene.name, manifest.entry('failed', error=str(e), inputs=scene.inputs_sha))
      logging.error('[batch] %s: %s', scene.name, e)
      continue
    loaded.append((scene, images, infos, valid, alignment))
  if not loaded:
    return

  def on_result(k, result):
    scene, images, infos, _, alignment = loaded[k]
    name = scene.name
    if isinstance(result, batch.BatchError):
      entry_ = manifest.entry('failed', error=result.message, inputs=scene.inputs_sha)
      logging.error('[batch] %s failed: %s', name, result.message)
    else:
      scene_dir = os.path.join(output_dir, name)
      try:
        with output_folder.StagingDir(scene_dir, protect=[i.path for i in infos]) as tmp:
          summary = outputs.write_result(tmp, result, images, [os.path.basename(i.path) for i in infos],
                                         [i.to_dict() for i in infos], config,
                                         args.bit_depth([i.bit_depth for i in infos]),
                                         summary_extra={'seed': args.seed, 'scene': name,
                                                        **({'alignment': alignment} if alignment else {})},
                                         shown_as=scene_dir)
          files = {os.path.join(name, rel): manifest.sha256_file(os.path.join(tmp, rel))
                   for rel in summary['output']['files']}
      except Exception as e:  # pylint: disable=broad-except
        # Disk full, permissions...: this scene failed, the batch goes on.
        entry_ = manifest.entry('failed', error=f'{name}: writing the outputs failed: {e}',
                                inputs=scene.inputs_sha)
        logging.error('[batch] %s', entry_['error'])
      else:
        entry_ = manifest.entry('done', files=files, inputs=scene.inputs_sha,
                                seconds=float(result.timings.get('total_s', time.perf_counter() - started)),
                                group_size=result.timings.get('group_size', 1),
                                strategy=result.timings.get('strategy'),
                                iterations={'mask': result.timings.get('mask_steps', 0),
                                            'main': result.timings.get('main_steps')})
        logging.info('[batch] %s: done', name)
        progress.mine += 1
    record(name, entry_)
    if kill_after and progress.mine >= kill_after:  # Test hook: a hard kill (as kill -9) mid-batch.
      os.kill(os.getpid(), signal.SIGKILL)

  _, report = batch.fuse_batch(
      [item[1] for item in loaded], config, keys=[jax.random.key(args.seed)] * len(loaded),
      strategy=args.strategy, max_scenes_per_step=args.max_scenes_per_step, on_result=on_result,
      names=[item[0].name for item in loaded], check_memory=args.check_memory, programs=programs,
      valids=[item[3] for item in loaded])
  manifest.update(output_dir, {}, {'buckets': report.buckets})
