"""Images of any size: the fusion on overlapping tiles, assembled without seams, in bounded memory.

A scene whose optimisation would not fit in the memory cap (`memory.available_memory`) is split into
overlapping tiles of one shape (so one compiled program serves them all), each tile is fused by
`fusion.fuse`'s pipeline (`batch.fuse_batch`, one tile after another), and the tiles' outputs are
blended with weights that fall linearly to zero across the overlaps (a partition of unity, so a
constant image stays constant and there is no visible seam).

The decision maps are computed once over the whole image before tiling (`decision_maps_in_strips`:
on overlapping strips of rows when the whole image does not fit, with any region clean-up run once on
the whole map on the host), and every tile receives its crop: the maps agree across tile borders by
construction. The decision embedding (a network over the whole map) is not run on tiles: tiles use
the maps as they are (`mask_iters` is treated as 0).

At x1 the main stage ends close to (slightly below) the fusion by its own maps (docs/benchmarks.md
"DFP at x1, N = 2, 3 x 3 views"), so `plan_tiles` can return the map fusion itself as the large-image
fast path (`TilePlan.kind` 'map_fusion'): as good a result at a tiny fraction of the time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

from absl import logging
import cv2
import numpy as np
import jax
import jax.numpy as jnp

from dfp_jax import baselines
from dfp_jax import config as config_lib
from dfp_jax import errors
from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import memory
from dfp_jax import optimize
from dfp_jax.config import FusionConfig
from dfp_jax.errors import MemoryBudgetError, format_bytes


@dataclasses.dataclass(frozen=True)
class TileConfig:
  """When and how a large image is fused in tiles (single-scene and light-field jobs)."""
  tile_size: int = config_lib.option(
      0, 'Tile side (pixels of the inputs) for images whose optimisation does not fit in memory; 0 = the '
      'largest that fits (the whole image when it fits). Tiles overlap and are blended without seams.')
  tile_overlap: int = config_lib.option(
      0, 'Overlap of neighbouring tiles (pixels of the inputs); 0 = an eighth of the tile, at least 16.')
  x1_fast_path: bool = config_lib.option(
      True, 'At --scale=1, fuse an image too large to optimise whole by its decision maps directly (the '
      'result the main stage ends near at x1) instead of optimising tiles.')

  def __post_init__(self):
    if self.tile_size < 0 or self.tile_overlap < 0:
      raise errors.InputError(f'--tile_size and --tile_overlap must be >= 0, got {self.tile_size}, '
                              f'{self.tile_overlap}')


class TilePlan(NamedTuple):
  """How one scene is fused: whole, in tiles, or by the x1 fast path."""
  kind: str  # 'whole', 'tiles' or 'map_fusion'.
  tile: int  # Tile side at the input size (LR pixels).
  overlap: int  # Overlap of neighbouring tiles (LR pixels).
  starts_y: tuple  # Top rows of the tiles.
  starts_x: tuple  # Left columns of the tiles.

  @property
  def count(self) -> int:
    return len(self.starts_y) * len(self.starts_x)


def _starts(length: int, tile: int, overlap: int) -> tuple:
  """Tile origins covering [0, length) with tiles of `tile` and at least `overlap` between neighbours;
  the last tile ends at the border (it may overlap its neighbour more)."""
  if tile >= length:
    return (0,)
  step = tile - overlap
  count = math.ceil((length - tile) / step) + 1
  return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


def whole_image_bytes(height: int, width: int, num_inputs: int, channels: int, scale: int) -> int:
  """Host bytes the tiled fusion holds for the whole image: the inputs and maps, the output and its
  blending weights (float32), plus a working margin."""
  lr = height * width
  return int(4 * (num_inputs * lr * (channels + 2) + scale * scale * lr * (channels + 1)) * 1.5)


def plan_tiles(height: int, width: int, num_inputs: int, channels: int, config: FusionConfig,
               available: int | None = None, tile: int = 0, overlap: int = 0, x1_fast: bool = True,
               headroom: float = 0.9) -> TilePlan:
  """The plan for an image of height x width (LR pixels), decided from the sizes alone (before decoding).

  tile: 0 = the largest side (a multiple of 32) whose optimisation fits in the memory left by the
  whole-image arrays; else the given side. overlap: 0 = tile / 8, at least 16 pixels.

  Raises MemoryBudgetError when even the whole-image arrays, or one tile of the smallest size, do not
  fit; the message says what would.
  """
  host = jax.default_backend() == 'cpu'
  key = 'host_peak' if host else 'peak'
  budget = headroom * available if available is not None else None
  whole = whole_image_bytes(height, width, num_inputs, channels, config.scale)
  if budget is not None and host and whole > budget:
    raise MemoryBudgetError(
        f'{height}x{width} at x{config.scale}: the decoded inputs and the output alone need about '
        f'{format_bytes(whole)}, more than the {format_bytes(available)} available; crop or downsample '
        'the inputs')
  rest = None if budget is None else budget - (whole if host else 0)
  fits_whole = rest is None or memory.estimate_memory(height, width, num_inputs, channels, config)[key] <= rest
  if tile == 0 and fits_whole:
    return TilePlan('whole', max(height, width), 0, (0,), (0,))
  if config.scale == 1 and x1_fast and tile == 0:
    return TilePlan('map_fusion', max(height, width), 0, (0,), (0,))
  tile_cfg = config.replace(mask_iters=0)  # Tiles take their crop of the whole image's maps.

  def tile_bytes(side):
    return memory.estimate_memory(side, side, num_inputs, channels, tile_cfg)[key]

  smallest = max(fusion.min_input_size(tile_cfg), 32)
  if tile == 0:
    tile = smallest
    side = 2 ** max(config.image_prior.depth, config.mask_net.depth)
    while side <= max(height, width):
      side *= 2
      cand = -(-side // 32) * 32
      if tile_bytes(cand) > rest:
        break
      tile = cand
    if tile_bytes(tile) > rest:
      need = tile_bytes(smallest)
      raise MemoryBudgetError(
          f'{height}x{width} at x{config.scale}: even one tile of {smallest}x{smallest} needs about '
          f'{format_bytes(need + whole)} with the whole-image arrays, more than the '
          f'{format_bytes(available)} available')
  tile = min(tile, height, width)
  if tile < smallest:
    raise ValueError(f'--tile_size={tile} is smaller than the {smallest} pixels a tile needs at x{config.scale}')
  overlap = overlap or max(16, tile // 8)
  overlap = min(overlap, tile // 2)
  return TilePlan('tiles', tile, overlap, _starts(height, tile, overlap), _starts(width, tile, overlap))


def plan_memory(plan: TilePlan, height: int, width: int, num_inputs: int, channels: int,
                config: FusionConfig) -> dict:
  """`memory.estimate_memory` of what `plan` optimises: the whole image, one tile (tiles take the whole
  image's maps: no decision embedding), or nothing but the whole-image arrays (the x1 fast path); the
  whole-image arrays of a plan other than 'whole' are under 'whole_image'."""
  if plan.kind == 'whole':
    return memory.estimate_memory(height, width, num_inputs, channels, config)
  whole = whole_image_bytes(height, width, num_inputs, channels, config.scale)
  if plan.kind == 'map_fusion':
    return {'mask': 0, 'main': 0, 'peak': whole, 'host_peak': whole, 'whole_image': whole}
  tile = memory.estimate_memory(plan.tile, plan.tile, num_inputs, channels, config.replace(mask_iters=0))
  return dict(tile, whole_image=whole)


def blend_weights(tile: int, overlap: int, scale: int) -> np.ndarray:
  """[tile*scale, tile*scale] weights: 1 inside, falling linearly to ~0 over the overlap at each side."""
  n = tile * scale
  ramp = np.ones(n, np.float32)
  o = overlap * scale
  if o > 0:
    edge = (np.arange(o, dtype=np.float32) + 0.5) / o
    ramp[:o] = edge
    ramp[n - o:] = edge[::-1]
  return np.minimum(ramp[:, None], ramp[None, :])


def decision_maps_in_strips(images: np.ndarray, cfg: focus.FocusConfig, valid=None,
                            rows: int = 1024, margin: int = 64) -> np.ndarray:
  """The decision maps [N, H, W] of a whole image, in bounded memory.

  An image of at most `rows` + 2 `margin` rows is computed whole (`focus.decision_maps`). A taller one
  is computed on overlapping strips of `rows` rows (with `margin` rows of context on each side, a
  multiple of 2^levels so the pyramid grid is the same) without clean-up, which equals the whole-image
  maps for the local measures (tested); the clean-up, whose region steps are global, then runs once on
  the whole index map on the host with OpenCV, and the inputs' coverage (`valid`) is applied last.
  DoubleReblur estimates its blur kernels per strip there (a warning says so): its kernel estimate is
  global in the whole-image maps.
  """
  n, h, w, _ = images.shape
  if h <= rows + 2 * margin:
    return np.asarray(fusion.decision_maps_jit(jnp.asarray(images), cfg,
                                               None if valid is None else jnp.asarray(valid)))
  if cfg.measure == 'doublereblur':
    logging.warning('%dx%d: DoubleReblur estimates its blur kernels per strip of %d rows on an image '
                    'this large (whole images: one estimate)', h, w, rows)
  local = dataclasses.replace(cfg, cleanup='none')
  index = np.zeros((h, w), np.int32)
  for y0 in range(0, h, rows):
    a, b = max(0, y0 - margin), min(h, y0 + rows + margin)
    part = fusion.decision_maps_jit(jnp.asarray(images[:, a:b]), local,
                                    None if valid is None else jnp.asarray(valid[:, a:b]))
    index[y0:min(h, y0 + rows)] = np.asarray(jnp.argmax(part, axis=0))[y0 - a:y0 - a + min(rows, h - y0)]
  if cfg.cleanup == 'regions' and n == 2:
    index = regions_cleanup_on_host(index, cfg.doublereblur)
  elif cfg.cleanup == 'small_regions':
    index = remove_small_regions_on_host(index, n, int(np.ceil(cfg.min_region * h * w)))
  if valid is not None:
    index = np.asarray(focus.restrict_to_valid(jnp.asarray(index), jnp.asarray(valid)))
  return (index[None] == np.arange(n)[:, None, None]).astype(np.float32)


def fuse_tiles(images, plan: TilePlan, config: FusionConfig, key=None, valid=None,
               progress: optimize.ProgressFn | None = optimize.log_progress,
               names=None) -> fusion.FusionResult:
  """Fuses one scene [N, H, W, C] by `plan` ('tiles' or 'map_fusion'); a FusionResult as `fuse`'s (its
  history holds the tiles' mean loss per step, timings the tiles' totals)."""
  from dfp_jax import batch  # pylint: disable=g-import-not-at-top  (batch imports fusion, as we do)
  x = np.asarray(images, np.float32)
  n, h, w, c = x.shape
  s = config.scale
  key = jax.random.key(0) if key is None else key
  t0 = time.perf_counter()
  cfg_focus = config.focus
  maps = decision_maps_in_strips(x, cfg_focus, valid)
  timings = {'decision_maps_s': time.perf_counter() - t0}
  if plan.kind == 'map_fusion':
    fused = np.asarray(baselines.decision_map_fusion(jnp.asarray(x), jnp.asarray(maps)))
    timings['total_s'] = time.perf_counter() - t0
    logging.info('x1 large-image fast path: the fusion by the decision maps (%dx%d)', h, w)
    return fusion.FusionResult(fused, fused, maps, maps, fused, {}, dict(timings, tiles=0))
  t, o = plan.tile, plan.overlap
  crops = [(y, xx) for y in plan.starts_y for xx in plan.starts_x]
  scenes = [x[:, y:y + t, xx:xx + t] for y, xx in crops]
  logging.info('%dx%d in %d tiles of %dx%d (overlap %d px), x%d', h, w, len(crops), t, t, o, s)
  tile_cfg = config.replace(mask_iters=0)  # The maps come whole (see the module docstring).
  out = np.zeros((s * h, s * w, c), np.float32)
  weight = np.zeros((s * h, s * w, 1), np.float32)
  ramp = blend_weights(t, o, s)[..., None]
  history: dict = {}
  steps = []
  started = time.perf_counter()

  def on_result(k, result):
    y, xx = crops[k]
    if isinstance(result, batch.BatchError):
      raise errors.InputError(f'{names[0] if names else "input"}: tile at ({y}, {xx}) failed: {result.message}')
    out[s * y:s * (y + t), s * xx:s * (xx + t)] += result.fused * ramp
    weight[s * y:s * (y + t), s * xx:s * (xx + t)] += ramp
    for name, v in result.history.get('main', {}).items():
      history.setdefault(name, []).append(np.asarray(v))
    steps.append(result.timings.get('main_steps', 0))
    done = len(steps)
    el = time.perf_counter() - started
    logging.info('[tiles] %d/%d done; ETA %s', done, len(crops),
                 optimize.format_seconds(el / done * (len(crops) - done)))

  tile_maps = [maps[:, y:y + t, xx:xx + t] for y, xx in crops]
  tile_valid = None if valid is None else [np.asarray(valid)[:, y:y + t, xx:xx + t] for y, xx in crops]
  # Each tile gets its crop of the whole image's maps (not recomputed on the crop).
  batch.fuse_batch(scenes, tile_cfg, keys=[key] * len(scenes), strategy='loop', on_result=on_result,
                   progress=progress, valids=tile_valid, maps=tile_maps)
  fused = out / np.maximum(weight, 1e-12)
  fused_lr = np.asarray(memory_safe_downsample(fused, s, config.degradation))
  length = min(len(v) for vs in history.values() for v in vs) if history else 0
  hist = {'main': {k: np.mean([v[:length] for v in vs], axis=0) for k, vs in history.items()}}
  timings.update(total_s=time.perf_counter() - t0, tiles=len(crops), main_steps=int(np.mean(steps)),
                 tile=t, tile_overlap=o)
  return fusion.FusionResult(fused, fused_lr, maps, maps, np.zeros((1, 1, c), np.float32), hist, timings)


def memory_safe_downsample(image: np.ndarray, scale: int, kind: str) -> np.ndarray:
  """The degradation of a large output, by strips of rows (host memory stays bounded)."""
  from dfp_jax import resample  # pylint: disable=g-import-not-at-top
  if scale == 1:
    return image
  h = image.shape[0]
  rows = max(scale * 4, (2048 // scale) * scale)
  pad = 4 * scale if kind == 'lanczos2' else 0
  parts = []
  for y0 in range(0, h, rows):
    a, b = max(0, y0 - pad), min(h, y0 + rows + pad)
    part = np.asarray(resample.downsample(jnp.asarray(image[a:b]), scale, kind))
    parts.append(part[(y0 - a) // scale:(y0 - a) // scale + min(rows, h - y0) // scale])
  return np.concatenate(parts, axis=0)


def regions_cleanup_on_host(index: np.ndarray, params: focus.DoubleReblurParams) -> np.ndarray:
  """`focus.regions_cleanup` of a two-input index map [H, W] with OpenCV (closing, largest region,
  hole filling): label propagation in jnp is too slow at tens of megapixels."""
  m = (index == 0).astype(np.uint8)
  m = cv2.erode(cv2.dilate(m, np.ones((params.kd, params.kd), np.uint8)), np.ones((params.ke, params.ke), np.uint8))
  if params.f == 1:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count > 1:
      best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
      m = (labels == best).astype(np.uint8)
      inv = (1 - m).astype(np.uint8)
      count, labels = cv2.connectedComponents(inv, connectivity=4)
      border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
      holes = (inv > 0) & ~np.isin(labels, list(border))
      m = m | holes
  return np.where(m > 0, 0, 1).astype(np.int32)


def remove_small_regions_on_host(index: np.ndarray, n: int, min_pixels: int) -> np.ndarray:
  """`focus.remove_small_regions` of an index map [H, W] with OpenCV: every 8-connected region of one
  label with fewer than `min_pixels` pixels grows inwards from its decided neighbours (most frequent
  label among the 8 neighbours, ties to the lower index)."""
  known = np.zeros(index.shape, bool)
  for k in range(n):
    count, labels, stats, _ = cv2.connectedComponentsWithStats((index == k).astype(np.uint8), connectivity=8)
    big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_pixels)
    known |= np.isin(labels, big[big > 0])
  if not known.any():
    return index
  index = index.copy()
  box = np.ones((3, 3), np.float32)
  while not known.all():
    votes = np.stack([cv2.filter2D(((index == k) & known).astype(np.float32), -1, box,
                                   borderType=cv2.BORDER_CONSTANT) for k in range(n)])
    grow = ~known & (votes.sum(axis=0) > 0)
    index[grow] = np.argmax(votes, axis=0)[grow]
    known |= grow
  return index
