"""The batch job: `--input_dir=DATASET` -> every scene folder fused into `--output_dir/<scene>/`.

Layout: DATASET/<scene>/ holds the scene's registered inputs (`A.png`, `B.png`, more for stacks; any
image files, taken in name order; `GT.*` and a `fused/` subfolder are ignored, as in the benchmark
layout; folders holding this tool's results are skipped). Each scene's outputs are those of the
single-scene job, in OUTPUT_DIR/<scene>/, staged and moved into place; OUTPUT_DIR/manifest.json
(`app.manifest`) records every scene. Restarted with the same command after an interruption (Ctrl-C,
kill -9, power loss), scenes whose files all match their recorded checksums, with the same inputs and
configuration, are skipped; everything else is redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

from absl import logging
import jax

from dfp_jax import batch
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax import output_folder
from dfp_jax.app import manifest
from dfp_jax.app import outputs
from dfp_jax.app import runtime
from dfp_jax.app.scene import JobArgs

IGNORED_STEMS = ('gt',)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchArgs(JobArgs):
  input_dir: str = ''  # The dataset: one subfolder per scene.
  strategy: str = 'auto'  # fuse_batch's strategy.
  max_scenes_per_step: int | None = None
  resume: bool = True
  coordinator_address: str | None = None
  num_processes: int = 1
  process_id: int = 0


def result_folder_kind(folder: str) -> str | None:
  """'batch' if folder holds a batch manifest of this tool, 'scene' if it holds a single-scene
  summary.json of this tool, else None: such folders hold results, not a scene's inputs."""
  for name, kind, key in ((manifest.MANIFEST, 'batch', 'scenes'), ('summary.json', 'scene', 'dfp_jax_version')):
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
                 self.total, self.failed, rate, optimize.format_seconds(eta))


def run_batch(args: BatchArgs) -> int:
  """The batch job. Returns 0 if every scene is done, 1 if some failed."""
  config = args.config
  runtime.init_distributed(args.coordinator_address, args.num_processes, args.process_id)
  rank, world = jax.process_index(), jax.process_count()
  output_dir = output_folder.resolve_output_dir(args.output_dir)
  if output_folder.is_inside(args.input_dir, output_dir):
    raise errors.InputError(f'--output_dir={args.output_dir} holds --input_dir={args.input_dir}: the scenes\' result '
                            'folders would replace the input scene folders; choose another --output_dir')
  found = discover_scenes(args.input_dir)
  for name, paths in found:
    if paths and os.path.realpath(output_dir) == os.path.realpath(os.path.join(args.input_dir, name)):
      raise errors.InputError(f'--output_dir={args.output_dir} is the scene folder {os.path.join(args.input_dir, name)}, '
                              'which holds that scene\'s inputs; choose another --output_dir')
  all_scenes = [(name, paths) for name, paths in found
                # --output_dir inside --input_dir (a new or result folder, checked above): not a scene.
                if not output_folder.is_inside(os.path.join(args.input_dir, name), output_dir)]
  if not all_scenes:
    raise errors.InputError(f'{args.input_dir}: no scene subfolders besides --output_dir')
  mine = [s for k, s in enumerate(all_scenes) if k % world == rank]
  cfg_sha = manifest.config_digest(config, seed=args.seed, output_bit_depth=args.output_bit_depth)
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise errors.InputError(f'{args.output_dir}: cannot create the output folder ({e.strerror or e})') from None
  for name, _ in mine:  # Staging folders of killed runs (never a live run's: output_folder's rule).
    output_folder.remove_stale_staging(os.path.join(output_dir, name))
  recorded = manifest.read(output_dir)
  header = {'config': config.to_dict(), 'input_dir': os.path.abspath(args.input_dir),
            'versions': runtime.versions(), 'backend': jax.default_backend()}

  todo, loaded, updates = [], {}, {}
  for name, paths in mine:
    try:
      inputs_sha = {os.path.relpath(p, args.input_dir): manifest.sha256_file(p) for p in paths}
    except OSError as e:
      updates[name] = manifest.entry('failed', error=f'{name}: {e}')
      continue
    if args.resume and manifest.verified_done(output_dir, recorded['scenes'].get(name), inputs_sha, cfg_sha):
      logging.info('[batch] %s: already done (checksums verified), skipped', name)
      continue
    try:
      if len(paths) < 2:
        raise errors.InputError(f'{os.path.join(args.input_dir, name)}: a scene needs at least 2 input '
                                f'images, found {len(paths)}')
      images, infos = image_io.load_inputs(paths)
      fusion.validate_images(images, config, [i.path for i in infos])
      # Before the work, not after it: a scene folder holding files this tool did not write.
      output_folder.check_output_dir(os.path.join(output_dir, name), protect=paths)
    except errors.InputError as e:
      updates[name] = manifest.entry('failed', error=str(e), inputs=inputs_sha)
      logging.error('[batch] %s: %s', name, e)
      continue
    loaded[name] = (images, infos, inputs_sha)
    todo.append(name)
    updates[name] = manifest.entry('pending', inputs=inputs_sha)
  for e in updates.values():  # Every entry records the configuration it was tried with.
    e['config_sha256'] = cfg_sha
  manifest.update(output_dir, updates, header)
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
      entry = manifest.entry('failed', error=result.message, inputs=inputs_sha)
      logging.error('[batch] %s failed: %s', name, result.message)
    else:
      bit_depth = args.bit_depth([i.bit_depth for i in infos])
      scene_dir = os.path.join(output_dir, name)
      try:
        with output_folder.StagingDir(scene_dir, protect=[i.path for i in infos]) as tmp:
          summary = outputs.write_result(tmp, result, images, [os.path.basename(i.path) for i in infos],
                                         [i.to_dict() for i in infos], config, bit_depth,
                                         summary_extra={'seed': args.seed, 'scene': name},
                                         shown_as=scene_dir)
          files = {os.path.join(name, rel): manifest.sha256_file(os.path.join(tmp, rel))
                   for rel in summary['output']['files']}
      except Exception as e:  # pylint: disable=broad-except
        # Disk full, permissions...: this scene failed, the batch goes on.
        entry = manifest.entry('failed', error=f'{name}: writing the outputs failed: {e}', inputs=inputs_sha)
        logging.error('[batch] %s', entry['error'])
      else:
        seconds = float(result.timings.get('total_s', seconds))
        entry = manifest.entry('done', files=files, inputs=inputs_sha, seconds=seconds,
                       group_size=result.timings.get('group_size', 1),
                       strategy=result.timings.get('strategy'),
                       iterations={'mask': result.timings.get('mask_steps', 0),
                                   'main': result.timings.get('main_steps')})
    entry['config_sha256'] = cfg_sha
    manifest.update(output_dir, {name: entry})
    progress.scene_finished(entry['status'] == 'done')
    if kill_after and progress.done >= kill_after:  # Test hook: a hard kill (as kill -9) mid-batch.
      os.kill(os.getpid(), signal.SIGKILL)

  if todo:
    scenes = [loaded[n][0] for n in todo]
    _, report = batch.fuse_batch(
        scenes, config, keys=[jax.random.key(args.seed)] * len(todo), strategy=args.strategy,
        max_scenes_per_step=args.max_scenes_per_step, on_result=on_result, names=todo,
        check_memory=args.check_memory)
    manifest.update(output_dir, {}, {'buckets': report.buckets})
    logging.info('[batch] %d scene(s) in %.1f s: %.2f scene-iterations/s', len(todo), report.seconds,
                 report.scene_iters_per_s)
  final = manifest.read(output_dir)['scenes']
  bad = sorted(n for n, _ in mine if final.get(n, {}).get('status') != 'done')
  if bad:
    logging.error('[batch] %d scene(s) failed: %s (reasons in %s)', len(bad), ', '.join(bad),
                  os.path.join(output_dir, manifest.MANIFEST))
    return 1
  logging.info('[batch] all %d scene(s) done: %s', len(mine), output_dir)
  return 0
