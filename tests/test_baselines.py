"""Baselines: OpenCV's pyramid conventions, Laplacian-pyramid fusion, average and map fusion."""

import cv2
import numpy as np
import pytest
import jax.numpy as jnp

from dfp_jax import baselines

import synthetic  # pylint: disable=g-bad-import-order  (tests/ is on pytest's path)


@pytest.mark.parametrize('shape', [(16, 16), (17, 23), (32, 9), (5, 6)])
def test_pyr_down_and_up_match_opencv(shape):
  rng = np.random.default_rng(sum(shape))
  h, w = shape
  x = rng.random((h, w)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(baselines.pyr_down(jnp.asarray(x))), cv2.pyrDown(x), atol=1e-6)
  y = rng.random(((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(baselines.pyr_up(jnp.asarray(y), (h, w))),
                             cv2.pyrUp(y, dstsize=(w, h)), atol=1e-6)


def _reference_lp_fusion(images, levels):
  """Laplacian-pyramid fusion written with OpenCV (float64 NumPy selection)."""
  gauss = [[im.astype(np.float32)] for im in images]
  for g in gauss:
    for _ in range(levels):
      g.append(cv2.pyrDown(g[-1]))
  fused = []
  for lev in range(levels):
    laps = []
    for g in gauss:
      fine, coarse = g[lev], g[lev + 1]
      up = cv2.pyrUp(coarse, dstsize=(fine.shape[1], fine.shape[0]))
      laps.append(fine - up)
    laps = np.stack(laps)
    act = np.abs(laps @ np.array([0.299, 0.587, 0.114]))
    pick = np.argmax(act, axis=0)
    fused.append(np.take_along_axis(laps, pick[None, ..., None].repeat(3, -1), 0)[0])
  out = np.mean([g[-1] for g in gauss], axis=0)
  for d in reversed(fused):
    out = cv2.pyrUp(out.astype(np.float32), dstsize=(d.shape[1], d.shape[0])) + d
  return np.clip(out, 0, 1)


def _pair(h=64, w=72, seed=0):
  base, a, b = synthetic.left_right_pair(h, w, seed, 0.8, 9, 3.0)
  return base, np.stack([a, b])


def test_laplacian_pyramid_fusion_matches_opencv_reference():
  _, x = _pair()
  ours = np.asarray(baselines.laplacian_pyramid_fusion(jnp.asarray(x), levels=3))
  np.testing.assert_allclose(ours, _reference_lp_fusion(list(x), 3), atol=2e-5)


def test_laplacian_pyramid_fusion_recovers_sharp_halves_and_identities():
  sharp, x = _pair()
  fused = np.asarray(baselines.laplacian_pyramid_fusion(jnp.asarray(x)))
  avg = np.asarray(baselines.average_fusion(jnp.asarray(x)))
  err = lambda im: np.abs(im - sharp)[4:-4, 4:-4].mean()  # noqa: E731
  assert err(fused) < 0.5 * err(avg)  # Much closer to the all-sharp image than the average.
  # Identical inputs: perfect reconstruction (the pyramid is invertible).
  same = np.stack([sharp, sharp])
  np.testing.assert_allclose(np.asarray(baselines.laplacian_pyramid_fusion(jnp.asarray(same))),
                             np.clip(sharp, 0, 1), atol=2e-5)
  # Tiny images: no detail level, the average.
  small = x[:, :10, :10]
  np.testing.assert_allclose(np.asarray(baselines.laplacian_pyramid_fusion(jnp.asarray(small))),
                             small.mean(0), atol=1e-6)


def test_dip_superresolution_fits_its_input():
  from dfp_jax.config import FusionConfig
  from dfp_jax.models import NetConfig
  from dfp_jax import resample
  tiny = NetConfig((4, 8), (4, 8), (2, 2), kernel_size=3)
  cfg = FusionConfig(scale=2, iters=30, image_net=tiny, lr=1e-2, stop='fixed', chunk_size=10)
  _, x = _pair(16, 16)
  image = x[0]
  out, report = baselines.dip_superresolve(image, cfg)
  assert out.shape == (32, 32, 3) and report.steps == 30
  loss = report.history['total']
  assert loss[-1] < 0.5 * loss[0]  # The prior fits the image's downsampling.
  back = np.asarray(resample.lanczos2_downsample(jnp.asarray(out), 2))
  mse = np.mean((back - image) ** 2)
  assert mse < np.mean((image.mean() - image) ** 2)  # Better than a flat image.


def test_lanczos_upsampling_keeps_constants_and_interpolates_smooth_images():
  const = np.full((8, 10, 3), 0.4, np.float32)
  np.testing.assert_allclose(np.asarray(baselines.upsample(jnp.asarray(const), 2, 'lanczos')),
                             np.full((16, 20, 3), 0.4), atol=1e-5)
  yy, xx = np.mgrid[0:32, 0:32] / 32.0
  smooth = (0.5 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)).astype(np.float32)[..., None]
  low = cv2.resize(smooth, (16, 16), interpolation=cv2.INTER_AREA)[..., None]
  up = np.asarray(baselines.upsample(jnp.asarray(low), 2, 'lanczos'))
  ref = cv2.resize(low, (32, 32), interpolation=cv2.INTER_LANCZOS4)[..., None]
  assert np.abs(up - ref)[4:-4, 4:-4].max() < 0.02  # Lanczos-3 vs OpenCV's Lanczos-4 on a smooth image.
  with pytest.raises(ValueError, match='lanczos'):
    baselines.upsample(jnp.asarray(low), 2, 'sinc')
