"""Tests of dfp_jax.resample against closed forms, direct float64 NumPy loops, OpenCV and jax.image.

The Lanczos-2 references are written from DFP_METHOD.md section 7 (deep image prior's "lanczos2" at
phase 0.5) in float64; the jnp code runs in float32, so images in [0, 1] are compared at atol 1e-6
(kernels of L1 norm ~1.1) and the bicubic upsampling against `cv2.resize` (float64) at atol 1e-5.
"""

from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfp_jax import resample

# Compile time dominates these small tests on CPU (as in flax's imagenet tests).
jax.config.update('jax_disable_most_optimizations', True)

ATOL = 1e-6


def _rand(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def _np_lanczos2_1d(s: int) -> np.ndarray:
  """DIP's get_kernel('lanczos', phase=0.5, support=2), 1-D factor, float64, normalised.

  Taps i = 1 .. 4s at distance d = |i + 0.5 - (2s + 1)| / s, value support^2 sin(pi d) sin(pi d / 2)
  / (pi^2 d^2) = 2 sinc(d) sinc(d / 2).
  """
  i = np.arange(1, 4 * s + 1, dtype=np.float64)
  d = np.abs(i + 0.5 - (2 * s + 1)) / s
  k = 4.0 * np.sin(np.pi * d) * np.sin(np.pi * d / 2.0) / (np.pi ** 2 * d ** 2)
  return k / k.sum()


def _np_lanczos2_downsample(x: np.ndarray, s: int) -> np.ndarray:
  """Direct reference: replicate pad (4s - s) / 2, 4s x 4s outer-product kernel, stride-s correlation."""
  k1 = _np_lanczos2_1d(s)
  k2 = np.outer(k1, k1)  # [4s, 4s]
  p = (4 * s - s) // 2
  xp = np.pad(x.astype(np.float64), ((p, p), (p, p), (0, 0)), mode='edge')
  hh, ww, c = x.shape
  h, w = hh // s, ww // s
  out = np.zeros((h, w, c), np.float64)
  for i in range(h):
    for j in range(w):
      win = xp[i * s:i * s + 4 * s, j * s:j * s + 4 * s, :]
      out[i, j] = np.einsum('ab,abc->c', k2, win)
  return out


# ------------------------------------------------------------------------------------ Lanczos-2 kernel


@pytest.mark.parametrize('s', [2, 4])
def test_lanczos2_kernel_closed_form(s):
  k = resample.lanczos2_kernel1d(s)
  assert k.shape == (4 * s,)
  # Closed form of DFP_METHOD.md section 7 at offsets -(2s - 0.5) .. -0.5, 0.5 .. (2s - 0.5).
  x = np.concatenate([-(np.arange(2 * s)[::-1] + 0.5), np.arange(2 * s) + 0.5])
  ref = np.sinc(x / s) * np.sinc(x / (2 * s))
  ref /= ref.sum()
  np.testing.assert_allclose(k, ref, rtol=0, atol=1e-7)
  np.testing.assert_allclose(k, _np_lanczos2_1d(s), rtol=0, atol=1e-7)  # DIP's formula, same thing.
  np.testing.assert_allclose(k, k[::-1], atol=0)  # Symmetric.
  np.testing.assert_allclose(np.sum(k, dtype=np.float64), 1.0, atol=1e-6)
  # Lanczos-2 has negative lobes at the outer taps (|x| > s) and its peak at the centre.
  assert k[0] < 0 and k[-1] < 0
  assert np.argmax(k) in (2 * s - 1, 2 * s)


def test_lanczos2_kernel_factor1_and_errors():
  np.testing.assert_allclose(resample.lanczos2_kernel1d(1), _np_lanczos2_1d(1), atol=1e-7)
  for bad in (0, -2):
    with pytest.raises(ValueError):
      resample.lanczos2_kernel1d(bad)


# ------------------------------------------------------------------------------------ downsampling


@pytest.mark.parametrize('s', [2, 4])
def test_lanczos2_downsample_matches_numpy(s):
  h, w = 5, 3  # Output size; the input is (5s, 3s): non-square, odd output sides.
  x = _rand((s * h, s * w, 3), seed=s)
  out = np.asarray(resample.lanczos2_downsample(jnp.asarray(x), s))
  assert out.shape == (h, w, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, _np_lanczos2_downsample(x, s), rtol=0, atol=ATOL)


@pytest.mark.parametrize('s', [2, 4])
def test_lanczos2_downsample_constant(s):
  x = np.full((4 * s, 2 * s, 3), 0.37, np.float32)
  out = np.asarray(resample.lanczos2_downsample(jnp.asarray(x), s))
  assert out.shape == (4, 2, 3)
  np.testing.assert_allclose(out, 0.37, atol=ATOL)


def test_lanczos2_downsample_identity_leading_axes_and_errors():
  x = _rand((2, 3, 8, 12, 1), seed=3)
  np.testing.assert_array_equal(np.asarray(resample.lanczos2_downsample(jnp.asarray(x), 1)), x)
  out = np.asarray(resample.lanczos2_downsample(jnp.asarray(x), 2))
  assert out.shape == (2, 3, 4, 6, 1)
  for a in range(2):
    for b in range(3):
      np.testing.assert_allclose(out[a, b], _np_lanczos2_downsample(x[a, b], 2), rtol=0, atol=ATOL)
  with pytest.raises(ValueError, match='divisible'):
    resample.lanczos2_downsample(jnp.zeros((9, 8, 3)), 2)
  with pytest.raises(ValueError, match='divisible'):
    resample.lanczos2_downsample(jnp.zeros((8, 10, 3)), 4)
  with pytest.raises(ValueError, match='even factor, got 3'):
    resample.lanczos2_downsample(jnp.zeros((9, 9, 3)), 3)


@pytest.mark.parametrize('s', [2, 4])
def test_lanczos2_downsample_gradient_is_the_transpose_of_the_reference(s):
  """The downsampler is linear, so its vector-Jacobian product must be its transpose: for the float64
  NumPy reference D, <D x, y> = <x, vjp(y)> for any x, y (checked on a non-square image)."""
  x = _rand((6 * s, 4 * s, 2), seed=10 + s).astype(np.float64)
  y = _rand((6, 4, 2), seed=20 + s).astype(np.float64)
  _, vjp = jax.vjp(lambda v: resample.lanczos2_downsample(v, s), jnp.asarray(x, jnp.float32))
  (xt,) = vjp(jnp.asarray(y, jnp.float32))
  assert xt.shape == x.shape
  np.testing.assert_allclose(np.sum(x * np.asarray(xt, np.float64)),
                             np.sum(_np_lanczos2_downsample(x, s) * y), rtol=1e-5)
  # And each input pixel's gradient is the sum of the kernel weights it enters with: a constant
  # cotangent gives a gradient that sums to the number of output pixels (the kernel sums to 1).
  (ones,) = vjp(jnp.ones((6, 4, 2), jnp.float32))
  np.testing.assert_allclose(float(jnp.sum(ones)), 6 * 4 * 2, rtol=1e-5)


# ------------------------------------------------------------------------------------ upsampling


@pytest.mark.parametrize('s', [2, 4])
@pytest.mark.parametrize('channels', [3, 1])
def test_bicubic_upsample_matches_opencv(s, channels):
  h, w = 7, 9  # Odd sides.
  x = _rand((h, w, channels), seed=10 * s + channels)
  out = np.asarray(resample.bicubic_upsample(jnp.asarray(x), s))
  assert out.shape == (s * h, s * w, channels)
  ref = cv2.resize(x.astype(np.float64), (s * w, s * h), interpolation=cv2.INTER_CUBIC)
  ref = ref.reshape(s * h, s * w, channels)  # cv2 drops a single channel axis.
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_bicubic_upsample_identity_constant_and_leading_axes():
  x = _rand((2, 5, 7, 3), seed=4)
  np.testing.assert_array_equal(np.asarray(resample.bicubic_upsample(jnp.asarray(x), 1)), x)
  np.testing.assert_allclose(
      np.asarray(resample.bicubic_upsample(jnp.full((5, 7, 3), 0.6), 2)), 0.6, atol=1e-6)
  out = np.asarray(resample.bicubic_upsample(jnp.asarray(x), 2))
  assert out.shape == (2, 10, 14, 3)
  for a in range(2):
    ref = cv2.resize(x[a].astype(np.float64), (14, 10), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(out[a], ref, rtol=0, atol=1e-5)


def test_cubic_matrix_rows_sum_to_one():
  m = resample.cubic_matrix(7, 4)
  assert m.shape == (28, 7)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize('shape', [(5, 7, 3), (2, 6, 4, 1)])
def test_bilinear_up2_matches_jax_image_resize(shape):
  x = _rand(shape, seed=len(shape))
  out = np.asarray(resample.bilinear_up2(jnp.asarray(x)))
  new_shape = shape[:-3] + (2 * shape[-3], 2 * shape[-2], shape[-1])
  assert out.shape == new_shape
  ref = np.asarray(jax.image.resize(jnp.asarray(x), new_shape, 'bilinear'))
  np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)
  # And against an independent float64 half-pixel bilinear with clamped indices.
  def axis_weights(n):
    src = (np.arange(2 * n) + 0.5) / 2 - 0.5
    i0 = np.floor(src).astype(int)
    f = src - i0
    m = np.zeros((2 * n, n))
    np.add.at(m, (np.arange(2 * n), np.clip(i0, 0, n - 1)), 1 - f)
    np.add.at(m, (np.arange(2 * n), np.clip(i0 + 1, 0, n - 1)), f)
    return m
  my, mx = axis_weights(shape[-3]), axis_weights(shape[-2])
  ref64 = np.einsum('ih,jw,...hwc->...ijc', my, mx, x.astype(np.float64))
  np.testing.assert_allclose(out, ref64, rtol=0, atol=ATOL)


@pytest.mark.parametrize('shape', [(5, 7, 3), (2, 6, 4, 1)])
def test_nearest_up2_matches_repeat(shape):
  x = _rand(shape, seed=7)
  out = np.asarray(resample.nearest_up2(jnp.asarray(x)))
  ref = np.repeat(np.repeat(x, 2, axis=-3), 2, axis=-2)
  np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('s', [2, 4])
def test_area_downsample_numpy_jnp_and_opencv_agree_and_its_gradient_is_the_adjoint(s):
  rng = np.random.default_rng(s)
  x = rng.random((5 * s - 1, 4 * s - 1, 3)).astype(np.float32)  # Leftover rows and columns dropped.
  want = cv2.resize(x[:4 * s, :3 * s], (3, 4), interpolation=cv2.INTER_AREA)
  np.testing.assert_allclose(resample.area_downsample(x, s), want, atol=1e-6)
  got = resample.area_downsample(jnp.asarray(x), s)
  assert isinstance(got, jax.Array)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(resample.downsample(jnp.asarray(x), s, 'area')), want, atol=1e-6)
  # <D x, y> = <x, D^T y>: the vjp of the block mean spreads y / s^2 over each block.
  y = rng.random((4, 3, 3)).astype(np.float32)
  _, vjp = jax.vjp(lambda v: resample.area_downsample(v, s), jnp.asarray(x))
  lhs = float(np.sum(want * y))
  rhs = float(np.sum(np.asarray(vjp(jnp.asarray(y))[0]) * x))
  assert abs(lhs - rhs) < 1e-4 * abs(lhs)
