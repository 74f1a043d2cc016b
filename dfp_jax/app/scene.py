"""The single-scene job: `--inputs=a.png,b.png` -> `--output_dir`.

Order (each check before any work, so a refusal costs nothing): read and check the inputs, estimate the
memory, check the output folder, then fuse inside a staging folder that replaces the output folder only
when every file is written (`output_folder.StagingDir`).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import jax
import numpy as np

from dfp_jax import align as align_lib
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import memory
from dfp_jax import output_folder
from dfp_jax import tiles as tiles_lib
from dfp_jax.app import outputs
from dfp_jax.config import FusionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobArgs:
  """What every job takes besides its inputs."""
  config: FusionConfig = FusionConfig()
  output_dir: str = 'outputs/run'
  output_bit_depth: str = 'auto'  # 'auto', '8' or '16'.
  seed: int = 0
  check_memory: bool = True

  def bit_depth(self, input_depths) -> int:
    """The outputs' bit depth: the user's, or 16 if any input has more than 8 bits."""
    if self.output_bit_depth != 'auto':
      return int(self.output_bit_depth)
    return 16 if any(d > 8 for d in input_depths) else 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceneArgs(JobArgs):
  inputs: tuple = ()  # Paths of the N >= 2 input images.
  align: align_lib.AlignConfig = align_lib.AlignConfig()
  tiles: tiles_lib.TileConfig = tiles_lib.TileConfig()


def plan(h: int, w: int, n: int, c: int, config, args) -> tiles_lib.TilePlan:
  """Whole image, tiles or the x1 fast path, from the sizes alone (`tiles.plan_tiles`), logged."""
  available = memory.available_memory() if args.check_memory else None
  t = args.tiles
  p = tiles_lib.plan_tiles(h, w, n, c, config, available, t.tile_size, t.tile_overlap, t.x1_fast_path)
  if p.kind == 'tiles':
    logging.info('%dx%d at x%d does not fit whole in %s: %d tiles of %dx%d', h, w, config.scale,
                 errors.format_bytes(available) if available else 'the memory', p.count, p.tile, p.tile)
  return p


def fuse_planned(images, p: tiles_lib.TilePlan, config, seed: int, names, valid):
  """`fusion.fuse`, or `tiles.fuse_tiles` for a plan other than 'whole'."""
  key = jax.random.key(seed)
  if p.kind == 'whole':
    return fusion.fuse(images, config=config, key=key, names=names, valid=valid)
  return tiles_lib.fuse_tiles(np.stack(images), p, config, key, valid, names=names)


def register(images, paths, align: align_lib.AlignConfig):
  """The inputs (read from `paths`) registered to the reference input (`align.align_inputs`): (images,
  valid masks [N, H, W] or None when nothing was resampled, the summary.json entry or None with
  --align=off)."""
  if align.mode == 'off':
    return images, None, None
  names = [os.path.basename(p) for p in paths]
  reg = align_lib.align_inputs(images, align, list(paths))
  moved = [names[i] for i in np.flatnonzero(reg.warped)]
  if reg.skipped:
    logging.warning('not registered: %s; taken as aligned (--align=on tries anyway)', reg.skipped)
  if moved:
    logging.info('aligned to %s: %s resampled (largest motion %.2f px)', names[reg.reference],
                 ', '.join(moved), float(reg.displacement_px.max()))
  return ([reg.images[i] for i in range(len(images))], reg.masks if reg.warped.any() else None,
          reg.summary(names))


def check_commas(paths) -> None:
  """A file whose name holds a comma cannot be given: --inputs splits at commas. Say so, rather than
  'file not found' for its pieces."""
  for i in range(len(paths)):
    if os.path.exists(paths[i]):
      continue
    for j in range(i + 2, len(paths) + 1):
      joined = ','.join(paths[i:j])
      if os.path.isfile(joined):
        raise errors.InputError(f'{joined}: its name holds a comma, and --inputs splits at commas; rename '
                                'the file (or link it under a name without one)')


def run_scene(args: SceneArgs) -> int:
  """Fuses one scene into args.output_dir; returns the exit status (0)."""
  config = args.config
  if not args.inputs:
    raise errors.InputError('no inputs: pass --inputs=a.png,b.png (2 or more images) or a --flagfile')
  check_commas(args.inputs)
  # Sizes, the size rules and the memory are checked from the files' headers, before any decoding.
  headers = image_io.read_headers(args.inputs)
  h, w, n = headers[0].height, headers[0].width, len(headers)
  c = max(hd.channels for hd in headers)
  short = fusion.size_shortfall(config, h, w)
  if short:
    raise errors.InputError(f'{headers[0].path}: {h}x{w} is too small: {short}')
  try:
    tile_plan = plan(h, w, n, c, config, args)
  except errors.MemoryBudgetError as e:
    raise errors.MemoryBudgetError(f'{headers[0].path}: {e}') from None
  mem = tiles_lib.plan_memory(tile_plan, h, w, n, c, config)
  paths = [hd.path for hd in headers]
  images, infos = image_io.load_inputs(args.inputs, headers)
  fusion.validate_images(images, config, paths)
  output_folder.check_output_dir(args.output_dir, protect=paths)  # Before any log line or work.
  bit_depth = args.bit_depth([i.bit_depth for i in infos])
  logging.info('DFP: %d inputs of %dx%dx%d, x%d -> %dx%d; backend %s; estimated peak memory %.0f MiB',
               len(images), h, w, images[0].shape[2], config.scale, config.scale * h, config.scale * w,
               jax.default_backend(), mem['peak'] / 2 ** 20)
  images, valid, alignment = register(images, paths, args.align)
  with output_folder.StagingDir(args.output_dir, protect=paths) as tmp:
    result = fuse_planned(images, tile_plan, config, args.seed, paths, valid)
    extra = {'seed': args.seed, 'memory_estimate_bytes': mem, 'plan': tile_plan._asdict()}
    if alignment is not None:
      extra['alignment'] = alignment
    outputs.write_result(tmp, result, images, [os.path.basename(p) for p in paths],
                         [i.to_dict() for i in infos], config, bit_depth, summary_extra=extra,
                         shown_as=args.output_dir)
  logging.info('done in %.1f s: results in %s', result.timings['total_s'],
               output_folder.resolve_output_dir(args.output_dir))
  return 0
