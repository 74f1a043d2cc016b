"""Tests of dfp_jax.losses against float64 NumPy/SciPy written from DFP_METHOD.md section 6.

Images are 16 x 16 (low resolution) and 32 x 32 (x2 output) with fixed seeds, values in [0, 1]; the jnp
losses run in float32, so scalars are compared at rtol 1e-5 (atol 1e-6 near zero).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dfp_jax import filters
from dfp_jax import losses

# Compile time dominates these small tests on CPU (as in flax's imagenet tests).
jax.config.update('jax_disable_most_optimizations', True)

H = W = 16
RTOL = 1e-5
ATOL = 1e-6


def _rand(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def _partition(n, seed=0, h=H, w=W):
  """Random binary maps [n, h, w] that partition the image (one-hot of a random label per pixel)."""
  labels = np.random.default_rng(seed).integers(0, n, size=(h, w))
  maps = np.stack([(labels == i) for i in range(n)]).astype(np.float32)
  # Make sure every input owns some pixels.
  assert all(maps[i].sum() > 0 for i in range(n))
  return maps


# ------------------------------------------------------------------------------- NumPy references


def _np_luma(x):
  x = x.astype(np.float64)
  if x.shape[-1] == 1:
    return x[..., 0]
  return 0.257 * x[..., 0] + 0.504 * x[..., 1] + 0.098 * x[..., 2] + 0.0625


def _np_lap(y):
  """4-neighbour Laplacian, reflect-101 border (scipy 'mirror' = OpenCV BORDER_REFLECT_101)."""
  k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
  return ndimage.convolve(y, k, mode='mirror')


def _np_content(out_lr, images, maps, weights=None):
  n = images.shape[0]
  lam = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = 0.0
  for i in range(n):
    total += lam[i] * np.mean(np.abs(maps[i][..., None].astype(np.float64) *
                                     (out_lr.astype(np.float64) - images[i].astype(np.float64))))
  return total


def _np_joint_grad(out_lr, images):
  target = np.max(np.stack([np.abs(_np_lap(_np_luma(x))) for x in images]), axis=0)
  return np.mean(np.abs(np.abs(_np_lap(_np_luma(out_lr))) - target))


def _np_grad_limit(out_hr):
  x = out_hr.astype(np.float64)
  return np.mean(np.abs(np.diff(x, axis=1))) + np.mean(np.abs(np.diff(x, axis=0)))


# ------------------------------------------------------------------------------- content


@pytest.mark.parametrize('n', [2, 3])
def test_content_loss_zero_when_output_is_the_selected_input(n):
  images = _rand((n, H, W, 3), seed=n)
  maps = _partition(n, seed=n)
  # The output takes input i exactly where M_i = 1.
  out = np.einsum('nhw,nhwc->hwc', maps, images)
  loss = losses.content_loss(jnp.asarray(out), jnp.asarray(images), jnp.asarray(maps))
  assert float(loss) == 0.0
  # Any other choice of pixels costs something.
  wrong = np.einsum('nhw,nhwc->hwc', np.roll(maps, 1, axis=0), images)
  loss = losses.content_loss(jnp.asarray(wrong), jnp.asarray(images), jnp.asarray(maps))
  assert float(loss) > 0.0
  np.testing.assert_allclose(float(loss), _np_content(wrong, images, maps), rtol=RTOL)


@pytest.mark.parametrize('n', [2, 3])
@pytest.mark.parametrize('weights', [None, 'custom'])
def test_content_loss_matches_numpy(n, weights):
  images = _rand((n, H, W, 3), seed=10 + n)
  out = _rand((H, W, 3), seed=20 + n)
  maps = _rand((n, H, W), seed=30 + n)  # Soft (non-binary) maps: the formula is linear in M.
  lam = None if weights is None else tuple(float(v) for v in np.linspace(0.5, 2.0, n))
  loss = losses.content_loss(jnp.asarray(out), jnp.asarray(images), jnp.asarray(maps), lam)
  np.testing.assert_allclose(float(loss), _np_content(out, images, maps, lam), rtol=RTOL)


def test_content_loss_two_inputs_is_the_paper_formula():
  # Eq. 21: mean|m (I - A)| + mean|(1 - m)(I - B)|, means over pixels and channels.
  a, b, out = _rand((H, W, 3), 1), _rand((H, W, 3), 2), _rand((H, W, 3), 3)
  m = _rand((H, W), 4).astype(np.float64)
  expected = (np.mean(np.abs(m[..., None] * (out - a))) + np.mean(np.abs((1 - m)[..., None] * (out - b))))
  maps = np.stack([m, 1 - m]).astype(np.float32)
  loss = losses.content_loss(jnp.asarray(out), jnp.stack([a, b]), jnp.asarray(maps))
  np.testing.assert_allclose(float(loss), expected, rtol=RTOL)


# ------------------------------------------------------------------------------- joint gradient


@pytest.mark.parametrize('n,channels', [(2, 3), (3, 3), (2, 1)])
def test_joint_gradient_loss_matches_numpy(n, channels):
  images = _rand((n, H, W, channels), seed=40 + n)
  out = _rand((H, W, channels), seed=50 + n)
  target = losses.joint_gradient_target(jnp.asarray(images))
  chex.assert_shape(target, (H, W))
  np_target = np.max(np.stack([np.abs(_np_lap(_np_luma(x))) for x in images]), axis=0)
  np.testing.assert_allclose(np.asarray(target), np_target, rtol=0, atol=1e-5)
  loss = losses.joint_gradient_loss(jnp.asarray(out), target)
  np.testing.assert_allclose(float(loss), _np_joint_grad(out, images), rtol=RTOL)


def test_joint_gradient_loss_zero_for_the_sharper_input():
  rng = np.random.default_rng(60)
  sharp = rng.random((H, W, 3)).astype(np.float32)
  # A blurred copy need not have a smaller |Lap| at every pixel, so the second input is a damped copy:
  # Lap is linear and kills constants, so |Lap(Y(0.5 (x - c) + c))| = 0.5 |Lap(Y(x))| everywhere.
  flat = (0.5 * (sharp - 0.5) + 0.5).astype(np.float32)
  assert np.all(np.abs(_np_lap(_np_luma(sharp))) >= np.abs(_np_lap(_np_luma(flat))))
  images = jnp.asarray(np.stack([flat, sharp]))
  target = losses.joint_gradient_target(images)
  np.testing.assert_allclose(float(losses.joint_gradient_loss(jnp.asarray(sharp), target)), 0.0, atol=ATOL)
  # The damped one is penalised by the missing half of the Laplacian magnitude.
  expected = 0.5 * np.mean(np.abs(_np_lap(_np_luma(sharp))))
  np.testing.assert_allclose(float(losses.joint_gradient_loss(jnp.asarray(flat), target)), expected,
                             rtol=1e-4)


# ------------------------------------------------------------------------------- gradient limit


def test_gradient_limit_loss():
  const = jnp.full((2 * H, 2 * W, 3), 0.42)
  assert float(losses.gradient_limit_loss(const)) == 0.0
  x = _rand((2 * H, 2 * W, 3), seed=70)
  np.testing.assert_allclose(float(losses.gradient_limit_loss(jnp.asarray(x))), _np_grad_limit(x), rtol=RTOL)
  # Closed form: a horizontal ramp with step d has mean|dx| = d and mean|dy| = 0.
  ramp = np.broadcast_to((0.01 * np.arange(2 * W, dtype=np.float32))[None, :, None], (2 * H, 2 * W, 1))
  np.testing.assert_allclose(float(losses.gradient_limit_loss(jnp.asarray(ramp))), 0.01, rtol=1e-4)
  np.testing.assert_allclose(float(losses.gradient_limit_loss(jnp.asarray(ramp.transpose(1, 0, 2)))), 0.01,
                             rtol=1e-4)


# ------------------------------------------------------------------------------- total


@pytest.mark.parametrize('weights', [losses.LossWeights(),
                                     losses.LossWeights(alpha=2.0, beta=0.25, gamma=0.7,
                                                        content=(0.3, 1.5))])
def test_fusion_loss_total(weights):
  images = _rand((2, H, W, 3), seed=80)
  out_hr = _rand((2 * H, 2 * W, 3), seed=81)
  out_lr = _rand((H, W, 3), seed=82)  # Any LR image: fusion_loss takes it as given.
  maps = _partition(2, seed=83)
  total, terms = losses.fusion_loss(jnp.asarray(out_hr), jnp.asarray(out_lr), jnp.asarray(images),
                                    jnp.asarray(maps), losses.joint_gradient_target(jnp.asarray(images)),
                                    weights)
  assert set(terms) == {'total', 'content', 'joint_grad', 'grad_limit'}
  con = _np_content(out_lr, images, maps, weights.content)
  jg = _np_joint_grad(out_lr, images)
  gl = _np_grad_limit(out_hr)
  np.testing.assert_allclose(float(terms['content']), con, rtol=RTOL)
  np.testing.assert_allclose(float(terms['joint_grad']), jg, rtol=RTOL)
  np.testing.assert_allclose(float(terms['grad_limit']), gl, rtol=RTOL)
  alpha, beta, gamma = weights.alpha, weights.beta, weights.gamma
  np.testing.assert_allclose(float(total), alpha * con + beta * jg + gamma * gl, rtol=RTOL)
  assert float(terms['total']) == float(total)


def test_default_weights_are_the_papers():
  w = losses.LossWeights()
  assert (w.alpha, w.beta, w.gamma, w.content) == (1.0, 0.5, 0.1, None)


def test_fusion_loss_jit_and_grad():
  images = jnp.asarray(_rand((2, H, W, 3), seed=90))
  maps = jnp.asarray(_partition(2, seed=91))
  target = losses.joint_gradient_target(images)
  out_hr = jnp.asarray(_rand((2 * H, 2 * W, 3), seed=92))
  out_lr = out_hr[::2, ::2]

  def f(hr, lr):
    return losses.fusion_loss(hr, lr, images, maps, target)[0]

  np.testing.assert_allclose(float(jax.jit(f)(out_hr, out_lr)), float(f(out_hr, out_lr)), rtol=RTOL)
  g_hr, g_lr = jax.jit(jax.grad(f, argnums=(0, 1)))(out_hr, out_lr)
  chex.assert_tree_all_finite((g_hr, g_lr))
  chex.assert_equal_shape((g_hr, out_hr))


def test_joint_gradient_target_counts_only_inputs_that_cover_a_pixel():
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.random((2, 12, 14, 3)).astype(np.float32))
  valid = np.ones((2, 12, 14), bool)
  valid[1, :, 7:] = False
  full = np.asarray(losses.joint_gradient_target(images))
  got = np.asarray(losses.joint_gradient_target(images, jnp.asarray(valid)))
  lap0 = np.abs(np.asarray(filters.laplacian(filters.luma(images[0]))))
  np.testing.assert_allclose(got[:, 8:], lap0[:, 8:], atol=1e-6)  # Input 1 out (and its seam, col 6-7).
  np.testing.assert_allclose(got[:, :6], full[:, :6], atol=1e-6)  # Both in.
  np.testing.assert_array_equal(np.asarray(losses.joint_gradient_target(images, jnp.ones((2, 12, 14), bool))), full)
