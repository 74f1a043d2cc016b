"""Tests of the one-scene pipeline dfp_jax.fuse: shapes, partitions, determinism, errors, memory."""

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dfp_jax
from dfp_jax import fusion
from dfp_jax import models
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError

TINY = models.NetConfig((4, 8), (4, 8), (2, 2), 3)
TINY_MASK = models.NetConfig((4, 8), (4, 8), (0, 2), 3)
CFG = FusionConfig(scale=2, iters=6, mask_iters=3, chunk_size=4, image_net=TINY, mask_net=TINY_MASK)


def _pair(h=16, w=20, c=3, seed=0):
  """A sharp texture with the left half blurred in B and the right half blurred in A."""
  rng = np.random.default_rng(seed)
  x = rng.random((h, w, c)).astype(np.float32)
  k = np.array([1, 4, 6, 4, 1], np.float32) / 16
  blur = x.copy()
  for axis in (0, 1):
    blur = np.apply_along_axis(lambda v: np.convolve(np.pad(v, 2, mode='reflect'), k, 'valid'), axis, blur)
  left = np.arange(w) < w // 2
  a = np.where(left[None, :, None], x, blur)
  b = np.where(left[None, :, None], blur, x)
  return a.astype(np.float32), b.astype(np.float32)


def test_fuse_shapes_partition_and_history():
  a, b = _pair()
  r = dfp_jax.fuse([a, b], scale=2, config=CFG, key=jax.random.key(1), progress=None)
  assert r.fused.shape == (32, 40, 3) and r.fused_lr.shape == (16, 20, 3)
  assert r.fused.min() >= 0 and r.fused.max() <= 1
  for maps in (r.decision_maps_raw, r.decision_maps):
    assert maps.shape == (2, 16, 20)
    np.testing.assert_array_equal(maps.sum(0), 1.0)
    assert set(np.unique(maps)) <= {0.0, 1.0}
  assert {k: len(v['total']) for k, v in r.history.items()} == {'mask': 3, 'main': 6}
  assert set(r.history['main']) == {'total', 'content', 'joint_grad', 'grad_limit'}
  np.testing.assert_allclose(
      r.history['main']['total'],
      r.history['main']['content'] + 0.5 * r.history['main']['joint_grad']
      + 0.1 * r.history['main']['grad_limit'], rtol=1e-5)


def test_few_steps_reduce_the_loss_on_a_32x32_pair():
  a, b = _pair(32, 32, seed=2)
  cfg = CFG.replace(iters=12, mask_iters=0, lr=1e-2)
  r = dfp_jax.fuse([a, b], config=cfg, key=jax.random.key(0), progress=None)
  total = r.history['main']['total']
  assert total[-1] < 0.9 * total[0], total
  assert np.all(np.diff(total) < 0), total
  np.testing.assert_array_equal(r.decision_maps, r.decision_maps_raw)  # mask_iters=0: raw maps.


def test_output_bias_starts_the_net_at_the_inputs_mean_colour():
  a, b = _pair(32, 32, seed=3)
  x = jnp.stack([jnp.asarray(a) * 0.2, jnp.asarray(b) * jnp.asarray([0.1, 0.2, 0.05])])  # Dark, tinted.
  maps = jnp.stack([jnp.ones((32, 32)), jnp.zeros((32, 32))])
  mean = np.asarray(x, np.float64).mean(axis=(0, 1, 2))
  first = {}
  for mode in ('mean', 'zero'):
    cfg = CFG.replace(output_base='none', output_bias=mode)
    state, problem = fusion.init_main_state(jax.random.key(0), x, maps, config=cfg)
    bias = np.asarray(state.params['params']['head']['bias'], np.float64)
    if mode == 'mean':
      np.testing.assert_allclose(1 / (1 + np.exp(-bias)), mean, rtol=1e-5)  # sigmoid(bias) = mean.
    else:
      np.testing.assert_array_equal(bias, 0.0)
    out = fusion.main_stage(cfg, 3).net.apply(state.params, problem['z'])
    first[mode] = float(np.abs(np.asarray(out).mean(axis=(0, 1)) - mean).max())
  assert first['mean'] < 0.5 * first['zero'], first  # The first output starts near the mean colour.


@pytest.mark.parametrize('scale', [1, 2])
def test_output_base_starts_the_net_at_the_map_fusion(scale):
  """output_base='map_fusion': the first output is close to B = bicubic(sum_i M_i X_i) (OpenCV's
  bicubic as the reference), the head's bias is zero, and the loss and output use sigmoid(net + logit B)."""
  a, b = _pair(32, 32, seed=6)
  x = jnp.stack([jnp.asarray(a), jnp.asarray(b)])
  left = np.arange(32)[None, :] < 13
  maps = jnp.asarray(np.stack([left, ~left]).astype(np.float32) * np.ones((32, 1), np.float32))
  fused = np.where(left[..., None], a, b)
  ref = fused if scale == 1 else np.clip(
      cv2.resize(fused, (32 * scale, 32 * scale), interpolation=cv2.INTER_CUBIC), 0, 1)
  cfg = CFG.replace(scale=scale, output_base='map_fusion')
  np.testing.assert_allclose(np.asarray(fusion.output_base(x, maps, cfg)), ref, atol=2e-5)
  state, problem = fusion.init_main_state(jax.random.key(0), x, maps, config=cfg)
  np.testing.assert_array_equal(np.asarray(state.params['params']['head']['bias']), 0.0)
  stage = fusion.main_stage(cfg, 3)
  first = np.asarray(fusion.image_output(stage.net.apply(state.params, problem['z']), problem, cfg))
  _, (_, out) = stage.loss_fn(state.params, problem)
  np.testing.assert_allclose(np.asarray(out), first, atol=1e-6)  # The loss sees the same image.
  err_base = np.abs(first - ref).mean()
  plain_cfg = CFG.replace(scale=scale, output_base='none')
  state0, problem0 = fusion.init_main_state(jax.random.key(0), x, maps, config=plain_cfg)
  plain = np.asarray(fusion.main_stage(plain_cfg, 3).net.apply(state0.params, problem0['z']))
  assert err_base < 0.05 and err_base < 0.25 * np.abs(plain - ref).mean(), (err_base, np.abs(plain - ref).mean())
  r = dfp_jax.fuse([a, b], config=cfg.replace(mask_iters=0, iters=8), progress=None)
  assert r.fused.shape == (32 * scale, 32 * scale, 3) and 0 <= r.fused.min() and r.fused.max() <= 1


def test_fuse_measures_the_output_from_the_embedded_maps():
  """With the decision embedding on, B is built from the embedded maps (not the raw DoubleReblur ones),
  for N = 3 grey inputs at x4 as for pairs."""
  a, b = _pair(32, 32, c=1, seed=7)
  c = np.where(np.arange(32)[None, :, None] < 8, a, b)
  cfg = CFG.replace(scale=4, mask_iters=3, iters=1, output_average='last')
  r = dfp_jax.fuse([a, b, c], config=cfg, key=jax.random.key(2), progress=None)
  assert r.fused.shape == (128, 128, 1)
  x = jnp.stack([jnp.asarray(v) for v in (a, b, c)])
  b_emb = np.asarray(fusion.output_base(x, jnp.asarray(r.decision_maps), cfg))
  b_raw = np.asarray(fusion.output_base(x, jnp.asarray(r.decision_maps_raw), cfg))
  assert np.abs(b_emb - b_raw).mean() > 0.01  # The embedding changed the maps (else nothing is tested).
  assert np.abs(r.fused - b_emb).mean() < 0.5 * np.abs(r.fused - b_raw).mean()


def test_bit_identical_for_same_key_and_different_for_other_key():
  a, b = _pair(seed=3)
  r1 = dfp_jax.fuse([a, b], config=CFG, key=jax.random.key(7), progress=None)
  r2 = dfp_jax.fuse([a, b], config=CFG, key=jax.random.key(7), progress=None)
  r3 = dfp_jax.fuse([a, b], config=CFG, key=jax.random.key(8), progress=None)
  np.testing.assert_array_equal(r1.fused, r2.fused)
  np.testing.assert_array_equal(r1.decision_maps, r2.decision_maps)
  assert not np.array_equal(r1.fused, r3.fused)


def test_three_inputs_grey_and_noise_input():
  a, b = _pair(c=1, seed=4)
  c = 0.5 * (a + b)
  cfg = CFG.replace(scale=1, input_type='noise', noise_channels=4)
  r = dfp_jax.fuse([a, b, c], config=cfg, progress=None)
  assert r.fused.shape == (16, 20, 1)
  assert r.network_input.shape == (16, 20, 4)
  assert r.decision_maps.shape == (3, 16, 20)
  np.testing.assert_array_equal(r.decision_maps.sum(0), 1.0)


def test_ema_output_is_not_the_last_iterate():
  a, b = _pair(seed=5)
  r_ema = dfp_jax.fuse([a, b], config=CFG, progress=None)
  r_last = dfp_jax.fuse([a, b], config=CFG.replace(output_average='last'), progress=None)
  assert not np.allclose(r_ema.fused, r_last.fused)


@pytest.mark.parametrize('images, match', [
    ([np.zeros((16, 16, 3), np.float32)], 'at least 2'),
    ([np.zeros((16, 16, 3), np.float32), np.zeros((16, 18, 3), np.float32)], 'differs'),
    ([np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 1), np.float32)], 'channel'),
    ([np.zeros((4, 4, 3), np.float32)] * 2, 'too small'),
    ([np.full((16, 16, 3), 2.0, np.float32)] * 2, r'\[0, 1\]'),
    ([np.full((16, 16, 3), np.nan, np.float32)] * 2, 'NaN'),
    ([np.zeros((40, 40, 3), np.float32), np.ones((40, 40, 3), np.float32)], 'no focus information'),
    ([np.full((40, 40, 3), 128 / 255, np.float32), np.full((40, 40, 3), 130 / 255, np.float32)],
     'no focus information'),  # Both flat: the networks' gradients were NaN (a wrong "lower the lr").
])
def test_validate_images_errors(images, match):
  with pytest.raises(InputError, match=match):
    fusion.validate_images(images, CFG, names=[f'img{i}.png' for i in range(len(images))])


@pytest.mark.parametrize('prior, degradation', [('deep_decoder', 'area'), ('skipnet', 'area')])
def test_other_priors_and_degradations_fuse(prior, degradation):
  """The second prior and the area degradation: the loss falls, fused_lr is the output's degradation."""
  from dfp_jax import resample  # pylint: disable=g-import-not-at-top
  cfg = CFG.replace(prior=prior, degradation=degradation, iters=30, mask_iters=0, stop='fixed', lr=1e-2,
                    deep_decoder=models.DeepDecoderConfig(channels=8, levels=3))
  a, b = _pair(32, 32)
  r = dfp_jax.fuse([a, b], config=cfg, progress=None)
  chex.assert_shape(r.fused, (64, 64, 3))
  loss = r.history['main']['total']
  assert loss[-5:].mean() < loss[:5].mean()
  np.testing.assert_allclose(r.fused_lr, np.asarray(resample.downsample(r.fused, 2, degradation)), atol=1e-6)


def test_fuse_takes_each_pixel_from_an_input_that_covers_it():
  a, b = _pair(32, 32)
  valid = np.ones((2, 32, 32), bool)
  valid[1, :, 24:] = False  # B does not cover the right quarter (registration brought it in).
  cfg = CFG.replace(scale=1, iters=2, stop='fixed', chunk_size=2)
  r = dfp_jax.fuse([a, b], config=cfg, progress=None, valid=valid)
  assert not r.decision_maps_raw[1][:, 24:].any() and not r.decision_maps[1][:, 24:].any()
  np.testing.assert_array_equal(r.decision_maps.sum(0), 1.0)
