"""Tests of dfp_jax.embedding (decision embedding, DFP_METHOD.md section 5) against float64 NumPy.

Maps are 8 x 8 (or 16 x 16) with fixed seeds; losses run in float32 and are compared at rtol 1e-5.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfp_jax import embedding

# Compile time dominates these small tests on CPU (as in flax's imagenet tests).
jax.config.update('jax_disable_most_optimizations', True)

RTOL = 1e-5


def _rand(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def _soft(n, seed=0, h=8, w=8):
  """Soft maps [n, h, w] as the mask net gives them: (m, 1 - m) for n = 2, a softmax otherwise."""
  if n == 2:
    m = _rand((h, w), seed)
    return np.stack([m, 1.0 - m])
  logits = np.random.default_rng(seed).normal(size=(h, w, n))
  return np.asarray(embedding.soft_maps(jnp.asarray(logits, jnp.float32), n))


# ------------------------------------------------------------------------------- soft maps, channels


def test_mask_channels_and_activation():
  assert embedding.mask_channels(2) == 1 and embedding.mask_activation(2) == 'sigmoid'
  for n in (3, 4):
    assert embedding.mask_channels(n) == n and embedding.mask_activation(n) == 'none'


def test_soft_maps():
  m = _rand((8, 8, 1), 1)
  soft = np.asarray(embedding.soft_maps(jnp.asarray(m), 2))
  np.testing.assert_array_equal(soft[0], m[..., 0])
  np.testing.assert_allclose(soft[1], 1.0 - m[..., 0], atol=0)
  logits = np.random.default_rng(2).normal(size=(8, 8, 3))
  soft = np.asarray(embedding.soft_maps(jnp.asarray(logits, jnp.float32), 3))
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  np.testing.assert_allclose(soft, np.moveaxis(e / e.sum(axis=-1, keepdims=True), -1, 0), atol=1e-6)


# ------------------------------------------------------------------------------- hard maps


def test_hard_maps_two_inputs_threshold():
  soft = _soft(2, seed=3)
  soft[0, 0, 0], soft[1, 0, 0] = 0.5, 0.5  # A tie goes to the second input (m > 0.5 is strict).
  hard = np.asarray(embedding.hard_maps(jnp.asarray(soft)))
  expected = (soft[0] > 0.5).astype(np.float32)
  np.testing.assert_array_equal(hard[0], expected)
  np.testing.assert_array_equal(hard[1], 1.0 - expected)
  assert hard[0, 0, 0] == 0.0 and hard[1, 0, 0] == 1.0
  assert 0 < expected.sum() < expected.size  # Both labels occur.


@pytest.mark.parametrize('n', [3, 4])
def test_hard_maps_argmax_one_hot(n):
  soft = _soft(n, seed=n)
  hard = np.asarray(embedding.hard_maps(jnp.asarray(soft)))
  chex.assert_shape(hard, soft.shape)
  labels = np.argmax(soft, axis=0)
  for i in range(n):
    np.testing.assert_array_equal(hard[i], (labels == i).astype(np.float32))
  np.testing.assert_array_equal(hard.sum(axis=0), 1.0)  # A partition.
  assert set(np.unique(hard)) == {0.0, 1.0}


@pytest.mark.parametrize('n', [2, 3])
def test_hard_maps_partition(n):
  hard = np.asarray(embedding.hard_maps(jnp.asarray(_soft(n, seed=10 + n, h=16, w=16))))
  np.testing.assert_array_equal(hard.sum(axis=0), 1.0)
  assert np.all((hard == 0) | (hard == 1))


# ------------------------------------------------------------------------------- straight-through


@pytest.mark.parametrize('n', [2, 3])
def test_straight_through_forward_is_hard(n):
  soft = jnp.asarray(_soft(n, seed=20 + n))
  np.testing.assert_array_equal(np.asarray(embedding.straight_through(soft)),
                                np.asarray(embedding.hard_maps(soft)))


@pytest.mark.parametrize('n', [2, 3])
def test_straight_through_backward_is_identity(n):
  soft = jnp.asarray(_soft(n, seed=30 + n))
  w = jnp.asarray(np.random.default_rng(40 + n).normal(size=soft.shape).astype(np.float32))
  g_st = jax.grad(lambda s: jnp.sum(w * embedding.straight_through(s)))(soft)
  g_id = jax.grad(lambda s: jnp.sum(w * s))(soft)
  np.testing.assert_array_equal(np.asarray(g_st), np.asarray(g_id))
  np.testing.assert_array_equal(np.asarray(g_st), np.asarray(w))
  # The hard maps alone have a zero gradient (that is why the estimator is needed).
  g_hard = jax.grad(lambda s: jnp.sum(w * embedding.hard_maps(s)))(soft)
  np.testing.assert_array_equal(np.asarray(g_hard), 0.0)


def test_straight_through_gradient_reaches_logits():
  # Through soft_maps (sigmoid net output for N = 2): d/dm sum(w0 st(m) + w1 st(1 - m)) = w0 - w1.
  m = jnp.asarray(_rand((8, 8, 1), 50))
  w = jnp.asarray(np.random.default_rng(51).normal(size=(2, 8, 8)).astype(np.float32))
  g = jax.grad(lambda x: jnp.sum(w * embedding.straight_through(embedding.soft_maps(x, 2))))(m)
  np.testing.assert_allclose(np.asarray(g)[..., 0], np.asarray(w[0] - w[1]), atol=1e-6)


# ------------------------------------------------------------------------------- loss


def _np_paper_loss(m_hat, m, a, b):
  """Eq. 20 as DFP_METHOD.md reads it, float64: means over pixels, channels averaged in image terms."""
  m_hat, m = m_hat.astype(np.float64), m.astype(np.float64)
  a, b = a.astype(np.float64), b.astype(np.float64)
  t_map = np.mean(np.abs(m_hat - m))
  t_a = np.mean(np.abs(m_hat[..., None] * a - m[..., None] * a))
  t_b = np.mean(np.abs((1 - m_hat)[..., None] * b - (1 - m)[..., None] * b))
  return t_map, t_a + t_b


@pytest.mark.parametrize('binary_hat', [True, False])
def test_embedding_loss_two_inputs_is_the_paper_formula(binary_hat):
  a, b = _rand((16, 16, 3), 60), _rand((16, 16, 3), 61)
  m = (_rand((16, 16), 62) > 0.5).astype(np.float32)
  m_hat = _rand((16, 16), 63)
  if binary_hat:
    m_hat = (m_hat > 0.5).astype(np.float32)
  maps_hat = jnp.asarray(np.stack([m_hat, 1 - m_hat]))
  maps = jnp.asarray(np.stack([m, 1 - m]))
  total, terms = embedding.embedding_loss(maps_hat, maps, jnp.stack([a, b]))
  t_map, t_img = _np_paper_loss(m_hat, m, a, b)
  np.testing.assert_allclose(float(terms['map']), t_map, rtol=RTOL)
  np.testing.assert_allclose(float(terms['masked_inputs']), t_img, rtol=RTOL)
  np.testing.assert_allclose(float(total), t_map + t_img, rtol=RTOL)
  assert float(terms['total']) == float(total)
  assert float(total) > 0


def test_embedding_loss_n3_general_formula():
  # L = mean_pixels sum_i |M_hat_i - M_i| + sum_i mean|M_hat_i X_i - M_i X_i|.
  x = _rand((3, 8, 8, 3), 70)
  maps = np.asarray(embedding.hard_maps(jnp.asarray(_soft(3, 71))))
  maps_hat = _soft(3, 72)
  total, terms = embedding.embedding_loss(jnp.asarray(maps_hat), jnp.asarray(maps), jnp.asarray(x))
  mh, mm, xx = maps_hat.astype(np.float64), maps.astype(np.float64), x.astype(np.float64)
  t_map = np.mean(np.sum(np.abs(mh - mm), axis=0))
  t_img = sum(np.mean(np.abs(mh[i][..., None] * xx[i] - mm[i][..., None] * xx[i])) for i in range(3))
  np.testing.assert_allclose(float(terms['map']), t_map, rtol=RTOL)
  np.testing.assert_allclose(float(total), t_map + t_img, rtol=RTOL)


@pytest.mark.parametrize('n', [2, 3])
def test_embedding_loss_zero_at_the_target(n):
  x = jnp.asarray(_rand((n, 8, 8, 3), 80 + n))
  maps = embedding.hard_maps(jnp.asarray(_soft(n, 90 + n)))
  total, terms = embedding.embedding_loss(maps, maps, x)
  assert float(total) == 0.0 and float(terms['map']) == 0.0 and float(terms['masked_inputs']) == 0.0


def test_abs_zero_subgradient_value_and_derivative():
  x = jnp.asarray([-np.inf, -2.0, -0.5, -0.0, 0.0, 0.25, 3.0, np.inf], jnp.float32)
  y = np.asarray(embedding.abs_zero_subgradient(x))
  np.testing.assert_array_equal(y, np.abs(np.asarray(x)))
  assert not np.signbit(y).any()  # |-0.0| is +0.0.
  g = jax.vmap(jax.grad(embedding.abs_zero_subgradient))(x[1:-1])
  np.testing.assert_array_equal(g, [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])  # torch.abs's choice: 0 at 0.


@pytest.mark.parametrize('n', [2, 3])
def test_embedding_gradient_vanishes_on_pixels_already_right(n):
  """Through the straight-through maps the pixels that already match the target get no gradient;
  the wrong ones get the float64 derivative of the loss (with jnp.abs every right pixel got one too)."""
  x = jnp.asarray(_rand((n, 8, 8, 3), 100 + n))
  target = embedding.hard_maps(jnp.asarray(_soft(n, 110 + n)))
  soft = jnp.asarray(_soft(n, 120 + n))
  grad = jax.grad(lambda s: embedding.embedding_loss(embedding.straight_through(s), target, x)[0])(soft)
  hard = np.asarray(embedding.hard_maps(soft))
  right = np.all(hard == np.asarray(target), axis=0)  # Pixels whose hard map is already the target.
  assert 0 < right.sum() < right.size
  np.testing.assert_array_equal(np.asarray(grad)[:, right], 0.0)
  # Wrong pixels: d/dm_hat_i of mean|m_hat_i - m_i| [+ sum over i] + mean|m_hat_i X_i - m_i X_i|.
  hw = right.size
  d = np.sign(hard.astype(np.float64) - np.asarray(target, np.float64))
  xs = np.asarray(x, np.float64)
  expected = d * np.abs(xs).sum(-1) / (hw * 3) + (d / hw if n > 2 else 0.0)
  if n == 2:
    expected[0] += d[0] / hw  # The map term is counted once, on the first map.
  np.testing.assert_allclose(np.asarray(grad)[:, ~right], expected[:, ~right], rtol=1e-5, atol=1e-9)
