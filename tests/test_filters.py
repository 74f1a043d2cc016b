"""Tests of dfp_jax.filters against OpenCV on seeded random arrays (odd and even sizes).

OpenCV runs in float64 where it can (the reference); the jnp filters run in float32, so float results
are compared at atol 1e-5 (inputs in [0, 1], kernels of L1 norm <= a few). Morphology is exact.
"""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from dfp_jax import filters

SHAPES = [(17, 23), (16, 24)]  # odd and even
ATOL = 1e-5
BORDERS = {
    'reflect': cv2.BORDER_REFLECT_101,
    'constant': cv2.BORDER_CONSTANT,
    'edge': cv2.BORDER_REPLICATE,
    'symmetric': cv2.BORDER_REFLECT,
}


def _rand(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).random(shape).astype(dtype)


def _np(x):
  return np.asarray(x)


# ------------------------------------------------------------------------------------ Gaussian


@pytest.mark.parametrize('ksize', [1, 3, 5, 7, 9])
@pytest.mark.parametrize('sigma', [None, 1.5])
def test_gaussian_kernel1d_matches_opencv(ksize, sigma):
  k = filters.gaussian_kernel1d(ksize, sigma)
  assert k.dtype == np.float32 and k.shape == (ksize,)
  np.testing.assert_allclose(k.sum(), 1.0, atol=1e-6)
  explicit = filters.gaussian_sigma_from_size(ksize) if sigma is None else sigma
  np.testing.assert_allclose(k, cv2.getGaussianKernel(ksize, explicit, ktype=cv2.CV_64F)[:, 0], atol=1e-7)


def test_gaussian_sigma_rule_and_errors():
  # OpenCV's documented rule: 0.3 ((k - 1) / 2 - 1) + 0.8.
  assert filters.gaussian_sigma_from_size(3) == pytest.approx(0.8)
  assert filters.gaussian_sigma_from_size(5) == pytest.approx(1.1)
  assert filters.gaussian_sigma_from_size(9) == pytest.approx(1.7)
  # sigma <= 0 falls back to the rule.
  np.testing.assert_array_equal(filters.gaussian_kernel1d(5, 0.0), filters.gaussian_kernel1d(5))
  # OpenCV with sigma = 0 uses the same rule only above its fixed tables (ksize <= 9 in OpenCV 5:
  # binomial-like tables, e.g. [1, 4, 6, 4, 1] / 16 for 5; hence explicit sigmas in the comparisons).
  np.testing.assert_allclose(filters.gaussian_kernel1d(11), cv2.getGaussianKernel(11, 0, ktype=cv2.CV_64F)[:, 0],
                             atol=1e-7)
  for bad in (0, 2, 4, -3):
    with pytest.raises(ValueError):
      filters.gaussian_kernel1d(bad)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('ksize,sigma', [(1, None), (3, None), (5, None), (7, 2.0), (9, None)])
def test_gaussian_blur_matches_opencv(shape, ksize, sigma):
  x = _rand(shape, seed=ksize)
  explicit = filters.gaussian_sigma_from_size(ksize) if sigma is None else sigma
  expected = cv2.GaussianBlur(x.astype(np.float64), (ksize, ksize), sigmaX=explicit, sigmaY=explicit,
                              borderType=cv2.BORDER_REFLECT_101)
  np.testing.assert_allclose(_np(filters.gaussian_blur(jnp.asarray(x), ksize, sigma)), expected, atol=ATOL)


def test_gaussian_blur_leading_dims():
  x = _rand((2, 3) + SHAPES[0], seed=1)
  out = _np(filters.gaussian_blur(jnp.asarray(x), 5))
  assert out.shape == x.shape
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(out[i, j], _np(filters.gaussian_blur(jnp.asarray(x[i, j]), 5)), atol=1e-6)


# ------------------------------------------------------------------------------- correlations


KERNEL_SHAPES = [(3, 3), (5, 3), (1, 7), (9, 9)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('kshape', KERNEL_SHAPES)
def test_correlate_and_convolve_match_filter2d(shape, kshape):
  rng = np.random.default_rng(hash(kshape) % 1000)
  x = _rand(shape, seed=3)
  k = rng.standard_normal(kshape).astype(np.float32)  # asymmetric on purpose
  xj = jnp.asarray(x)
  x64, k64 = x.astype(np.float64), k.astype(np.float64)
  expected_corr = cv2.filter2D(x64, -1, k64, borderType=cv2.BORDER_REFLECT_101)
  expected_conv = cv2.filter2D(x64, -1, cv2.flip(k64, -1), borderType=cv2.BORDER_REFLECT_101)
  tol = ATOL * np.abs(k).sum()
  np.testing.assert_allclose(_np(filters.correlate2d(xj, k)), expected_corr, atol=tol)
  np.testing.assert_allclose(_np(filters.convolve2d(xj, k)), expected_conv, atol=tol)
  if kshape != (1, 7):  # the flip matters
    assert np.abs(expected_corr - expected_conv).max() > 100 * tol


@pytest.mark.parametrize('mode', sorted(BORDERS))
def test_correlate_border_modes(mode):
  x = _rand(SHAPES[1], seed=4)
  k = np.random.default_rng(5).standard_normal((5, 5)).astype(np.float32)
  expected = cv2.filter2D(x.astype(np.float64), -1, k.astype(np.float64), borderType=BORDERS[mode])
  np.testing.assert_allclose(_np(filters.correlate2d(jnp.asarray(x), k, mode)), expected,
                             atol=ATOL * np.abs(k).sum())


def test_correlate_known_answer_and_errors():
  x = np.zeros((5, 5), np.float32)
  x[2, 2] = 1.0
  k = np.arange(9, dtype=np.float32).reshape(3, 3)
  # Correlating a centred impulse gives the kernel flipped, convolving gives the kernel itself.
  np.testing.assert_array_equal(_np(filters.correlate2d(jnp.asarray(x), k))[1:4, 1:4], k[::-1, ::-1])
  np.testing.assert_array_equal(_np(filters.convolve2d(jnp.asarray(x), k))[1:4, 1:4], k)
  with pytest.raises(ValueError):
    filters.correlate2d(jnp.asarray(x), np.ones((2, 3), np.float32))


def test_correlate_traced_kernel_and_leading_dims():
  x = _rand((2, 16, 24), seed=6)
  k = _rand((5, 5), seed=7)
  out = _np(filters.correlate2d(jnp.asarray(x), jnp.asarray(k)))
  for i in range(2):
    expected = cv2.filter2D(x[i].astype(np.float64), -1, k.astype(np.float64), borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(out[i], expected, atol=ATOL * k.sum())


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('ksize', [1, 2, 3, 4, 5, 7])
def test_box_mean_matches_blur(shape, ksize):
  x = _rand(shape, seed=8)
  expected = cv2.blur(x.astype(np.float64), (ksize, ksize), borderType=cv2.BORDER_REFLECT_101)
  np.testing.assert_allclose(_np(filters.box_mean(jnp.asarray(x), ksize)), expected, atol=ATOL)


@pytest.mark.parametrize('shape', SHAPES)
def test_sobel_matches_opencv(shape):
  x = _rand(shape, seed=9)
  gx, gy = filters.sobel(jnp.asarray(x))
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(_np(gx), cv2.Sobel(x64, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101),
                             atol=4 * ATOL)
  np.testing.assert_allclose(_np(gy), cv2.Sobel(x64, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101),
                             atol=4 * ATOL)


@pytest.mark.parametrize('shape', SHAPES)
def test_laplacian_matches_opencv(shape):
  x = _rand(shape, seed=10)
  x64 = x.astype(np.float64)
  kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
  expected = cv2.filter2D(x64, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
  out = _np(filters.laplacian(jnp.asarray(x)))
  np.testing.assert_allclose(out, expected, atol=4 * ATOL)
  # cv2.Laplacian with ksize=1 is the same 4-neighbour stencil.
  np.testing.assert_allclose(out, cv2.Laplacian(x64, cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT_101),
                             atol=4 * ATOL)


# ---------------------------------------------------------------------------------- morphology


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('ksize', [1, 2, 3, 4, 5])
@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_dilate_erode_match_opencv(shape, ksize, dtype):
  rng = np.random.default_rng(ksize)
  if dtype == np.uint8:
    x = (rng.random(shape) < 0.15).astype(np.uint8) * rng.integers(1, 256, shape).astype(np.uint8)
  else:
    x = rng.random(shape).astype(np.float32)
  square = np.ones((ksize, ksize), np.uint8)
  got_d = _np(filters.dilate(jnp.asarray(x), ksize))
  got_e = _np(filters.erode(jnp.asarray(x), ksize))
  assert got_d.dtype == x.dtype and got_e.dtype == x.dtype
  np.testing.assert_array_equal(got_d, cv2.dilate(x, square))
  np.testing.assert_array_equal(got_e, cv2.erode(x, square))
  # The closing used by DoubleReblur.
  np.testing.assert_array_equal(_np(filters.erode(filters.dilate(jnp.asarray(x), ksize), 3)),
                                cv2.erode(cv2.dilate(x, square), np.ones((3, 3), np.uint8)))


def test_dilate_erode_binary_known_answer_and_border():
  x = np.zeros((7, 8), np.uint8)
  x[3, 4] = 1
  expected = np.zeros_like(x)
  expected[2:5, 3:6] = 1
  np.testing.assert_array_equal(_np(filters.dilate(jnp.asarray(x), 3)), expected)
  # Outside pixels never win: an all-ones image stays all ones under erosion (no zero border).
  np.testing.assert_array_equal(_np(filters.erode(jnp.ones((7, 8), jnp.uint8), 5)), 1)
  np.testing.assert_array_equal(_np(filters.dilate(jnp.zeros((7, 8), jnp.float32), 4)), 0.0)


def test_dilate_leading_dims():
  x = _rand((3, 16, 24), seed=11)
  out = _np(filters.dilate(jnp.asarray(x), 3))
  for i in range(3):
    np.testing.assert_array_equal(out[i], cv2.dilate(x[i], np.ones((3, 3), np.uint8)))


# ---------------------------------------------------------------------------------------- luma


@pytest.mark.parametrize('shape', [(17, 23, 3), (2, 16, 24, 3)])
def test_luma_is_studio_swing_bt601(shape):
  rgb = _rand(shape, seed=12)
  got = _np(filters.luma(jnp.asarray(rgb)))
  assert got.shape == shape[:-1]
  flat = rgb.reshape((-1,) + shape[-3:])
  y_full = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2YCrCb)[..., 0] for im in flat]).reshape(shape[:-1])
  np.testing.assert_allclose(got, 16 / 255 + 219 / 255 * y_full, atol=2e-3)
  # The exact published formula.
  np.testing.assert_allclose(got, rgb @ np.array([0.257, 0.504, 0.098]) + 0.0625, atol=1e-6)


def test_luma_known_values_grey_and_errors():
  black_white = np.array([[[0, 0, 0], [1, 1, 1]]], np.float32)
  np.testing.assert_allclose(_np(filters.luma(jnp.asarray(black_white))), [[16 / 255, 235 / 255]], atol=1e-3)
  grey = _rand((17, 23, 1), seed=13)
  np.testing.assert_array_equal(_np(filters.luma(jnp.asarray(grey))), grey[..., 0])
  with pytest.raises(ValueError):
    filters.luma(jnp.zeros((4, 4, 4)))


def test_luma_rejects_integer_images():
  with pytest.raises(TypeError):
    filters.luma(jnp.full((2, 2, 3), 255, jnp.uint8))
