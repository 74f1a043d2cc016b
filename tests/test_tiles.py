"""tiles: the plan from the sizes alone, the blend weights, strip-wise maps, and the tiled fusion."""

import cv2
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import memory
from dfp_jax import models
from dfp_jax import tiles
from dfp_jax.config import FusionConfig
from dfp_jax.errors import MemoryBudgetError

import synthetic  # pylint: disable=g-bad-import-order  (tests/ is on pytest's path)

TINY = models.NetConfig((4, 8), (4, 8), (2, 2), 3)
CFG = FusionConfig(scale=2, iters=4, mask_iters=0, chunk_size=4, stop='fixed', image_net=TINY, mask_net=TINY)


def test_plan_whole_tiles_fast_path_and_refusal():
  whole = tiles.plan_tiles(96, 128, 2, 3, CFG, available=2 ** 40)
  assert whole.kind == 'whole' and whole.count == 1
  need = memory.estimate_memory(96, 128, 2, 3, CFG)['host_peak']
  small = tiles.plan_tiles(96, 128, 2, 3, CFG, available=int(need * 0.5))
  assert small.kind == 'tiles' and small.count > 1 and small.tile % 32 == 0
  assert memory.estimate_memory(small.tile, small.tile, 2, 3, CFG)['host_peak'] < need * 0.5
  assert small.starts_y[0] == 0 and small.starts_y[-1] + small.tile == 96  # The grid covers the image.
  assert small.starts_x[-1] + small.tile == 128
  assert all(b - a <= small.tile - small.overlap for a, b in zip(small.starts_x, small.starts_x[1:]))
  fast = tiles.plan_tiles(96, 128, 2, 3, CFG.replace(scale=1), available=int(need * 0.3))
  assert fast.kind == 'map_fusion'
  with pytest.raises(MemoryBudgetError, match='the decoded inputs and the output alone need'):
    tiles.plan_tiles(30000, 30000, 2, 3, CFG, available=6 * 2 ** 30)
  forced = tiles.plan_tiles(96, 128, 2, 3, CFG, available=None, tile=64, overlap=8)
  assert forced.kind == 'tiles' and forced.tile == 64 and forced.overlap == 8


def test_blend_weights_are_a_partition_of_unity_over_the_tile_grid():
  p = tiles.plan_tiles(80, 112, 2, 3, CFG, available=None, tile=32, overlap=8)
  acc = np.zeros((160, 224))
  ramp = tiles.blend_weights(p.tile, p.overlap, 2)
  for y in p.starts_y:
    for x in p.starts_x:
      acc[2 * y:2 * (y + 32), 2 * x:2 * (x + 32)] += ramp
  assert acc.min() > 0  # Every output pixel is covered...
  const = np.zeros_like(acc)
  for y in p.starts_y:
    for x in p.starts_x:
      const[2 * y:2 * (y + 32), 2 * x:2 * (x + 32)] += 0.7 * ramp
  np.testing.assert_allclose(const / acc, 0.7, atol=1e-6)  # ...and a constant stays constant.


def test_decision_maps_in_strips_equal_the_whole_image_maps():
  _, a, b = synthetic.left_right_pair(72, 56, 3, 0.8, 7, 2.0)
  x = np.stack([a, b])
  whole = np.asarray(fusion.decision_maps_jit(jnp.asarray(x), focus.FocusConfig(), None))
  strips = tiles.decision_maps_in_strips(x, focus.FocusConfig(), rows=16, margin=16)
  np.testing.assert_array_equal(strips, whole)


def test_tiled_fusion_covers_the_image_and_stays_close_to_the_whole_one():
  _, a, b = synthetic.left_right_pair(64, 96, 4, 0.8, 7, 2.0)
  x = np.stack([a, b])
  p = tiles.plan_tiles(64, 96, 2, 3, CFG, available=None, tile=32, overlap=8)
  tiled = tiles.fuse_tiles(x, p, CFG, jax.random.key(0), progress=None)
  whole = fusion.fuse(list(x), config=CFG, progress=None)
  assert tiled.fused.shape == whole.fused.shape == (128, 192, 3)
  assert tiled.fused_lr.shape == (64, 96, 3) and np.all(np.isfinite(tiled.fused))
  np.testing.assert_array_equal(tiled.decision_maps_raw, whole.decision_maps_raw)  # One map, cropped.
  assert np.sqrt(np.mean((tiled.fused - whole.fused) ** 2)) < 0.02  # Few steps: both near the base.
  assert tiled.timings['tiles'] == p.count


@pytest.mark.parametrize('cleanup', ['regions', 'small_regions'])
def test_strip_maps_run_the_region_cleanup_once_on_the_whole_map(cleanup):
  """Region clean-ups are global: the strips are computed without one, then the host clean-up (OpenCV)
  runs on the whole map and must equal the jnp clean-up of the whole-image maps; coverage is applied
  after it (a pixel never goes to an input that does not cover it)."""
  rng = np.random.default_rng(3)
  _, a, b = synthetic.left_right_pair(72, 56, 3, 0.8, 7, 2.0)
  x = np.stack([a, b])
  x[0, 30:34, 40:44] = rng.random((4, 4, 3))  # A small in-focus speck on the blurred side.
  cfg = focus.FocusConfig(cleanup=cleanup, min_region=0.01)
  whole = np.asarray(fusion.decision_maps_jit(jnp.asarray(x), cfg, None))
  strips = tiles.decision_maps_in_strips(x, cfg, rows=16, margin=16)
  np.testing.assert_array_equal(strips, whole)
  valid = np.ones((2, 72, 56), bool)
  valid[1, :, :8] = False  # Input 1 does not cover the left border.
  with_valid = tiles.decision_maps_in_strips(x, cfg, valid=valid, rows=16, margin=16)
  assert np.all(with_valid[1][~valid[1]] == 0)


def test_host_small_region_removal_matches_the_jnp_one():
  rng = np.random.default_rng(0)
  for n, min_pixels in ((2, 6), (3, 10), (3, 1000)):
    coarse = (rng.random((8, 6)) * n).astype(np.uint8)
    index = cv2.resize(coarse, (30, 40), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    index[::7, ::5] = (index[::7, ::5] + 1) % n  # Single-pixel specks.
    want = np.asarray(focus.remove_small_regions(jnp.asarray(index), n, min_pixels))
    np.testing.assert_array_equal(tiles.remove_small_regions_on_host(index, n, min_pixels), want)


def test_host_regions_cleanup_matches_the_jnp_one():
  rng = np.random.default_rng(1)
  index = (rng.random((48, 40)) < 0.5).astype(np.int32)
  index[10:30, 8:30] = 0
  params = focus.DoubleReblurParams()
  want = np.asarray(focus.regions_cleanup(jnp.asarray(index), params))
  np.testing.assert_array_equal(tiles.regions_cleanup_on_host(index, params), want)
