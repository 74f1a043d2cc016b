"""Tests of `dfp_jax.metrics`: scikit-image, NumPy/SciPy references, and closed forms.

References here are written from the published definitions (and, for the MFIFB metrics, from the
toolbox's MATLAB), in float64 NumPy/SciPy, independently of the jnp code. Images are 32 x 32 with fixed
seeds; the jnp metrics run in float32, so tolerances are float32-sized and stated per test.
"""

from __future__ import annotations

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy import signal
from skimage import metrics as skm

from dfp_jax import filters
from dfp_jax import metrics

# Compile time dominates these small tests on CPU (as in flax's imagenet tests).
jax.config.update('jax_disable_most_optimizations', True)

SIZE = 32
MATLAB_GREY = np.array([0.2989, 0.5870, 0.1140])


def _texture(seed: int, channels: int = 3, sigma: float = 1.5) -> np.ndarray:
  """Smooth random texture [SIZE, SIZE, channels] in [0.1, 0.9], float32."""
  rng = np.random.default_rng(seed)
  x = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE, channels)), (sigma, sigma, 0))
  x = (x - x.min()) / (x.max() - x.min())
  return (0.1 + 0.8 * x).astype(np.float32)


def _blur(image: np.ndarray, sigma: float = 1.5) -> np.ndarray:
  out = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
  return out.reshape(image.shape)


def _multifocus_scene(seed: int = 0):
  """(sharp, A, B): A has the left half sharp and the right half blurred, B the opposite."""
  sharp = _texture(seed, sigma=1.0)
  blurred = _blur(sharp, 2.0)
  left = (np.arange(SIZE) < SIZE // 2)[None, :, None]
  return sharp, np.where(left, sharp, blurred), np.where(left, blurred, sharp)


def _grey255_matlab(image: np.ndarray) -> np.ndarray:
  image = image.astype(np.float64)
  return 255.0 * (image[..., 0] if image.shape[-1] == 1 else image @ MATLAB_GREY)


def _luma64(image: np.ndarray) -> np.ndarray:
  return np.asarray(filters.luma(jnp.asarray(image)), np.float64)


def _entropy_np(counts: np.ndarray) -> float:
  p = counts[counts > 0].astype(np.float64) / counts.sum()
  return float(-(p * np.log2(p)).sum())


def _normalize1(x: np.ndarray) -> np.ndarray:
  lo, hi = x.min(), x.max()
  return np.round((x - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(x)


# --- NumPy ports of the MFIFB toolbox metrics (float64). ---


def _np_qabf(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
  """metricsQabf.m on grey 0-255 images (conv2 'same', atan, pi/2 where s_x = 0)."""
  h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)
  h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)

  def strength_angle(x):
    sx = signal.convolve2d(x, h3, mode='same')
    sy = signal.convolve2d(x, h1, mode='same')
    with np.errstate(divide='ignore', invalid='ignore'):
      ang = np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
    return np.hypot(sx, sy), ang

  g_f, a_f = strength_angle(f)
  num = den = 0.0
  for x in (a, b):
    g, ang = strength_angle(x)
    with np.errstate(divide='ignore', invalid='ignore'):
      ratio = np.where(g > g_f, g_f / g, np.where(g == g_f, 1.0, g / g_f))
    orient = 1 - np.abs(ang - a_f) / (np.pi / 2)
    q = 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))
    num += np.sum(q * g)
    den += np.sum(g)
  return num / den


def _np_qy(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
  """metricYang.m: 7 x 7 Gaussian (sigma 1.5) SSIM maps, 'valid', C1 = C2 = 2e-16.

  Windows where an image is flat get exactly zero (co)variances, as exact arithmetic gives (float64
  E[x^2] - mu^2 leaves rounding noise there, which C = 2e-16 does not absorb).
  """
  t = np.arange(7) - 3.0
  w = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 1.5 ** 2))
  w /= w.sum()
  c = 2e-16

  def corr(v):
    return signal.correlate2d(v, w, mode='valid')

  def flat(v):
    return (ndimage.maximum_filter(v, 7) == ndimage.minimum_filter(v, 7))[3:-3, 3:-3]

  def ssim_map(x, y):
    m1, m2 = corr(x), corr(y)
    s1, s2, s12 = corr(x * x) - m1 ** 2, corr(y * y) - m2 ** 2, corr(x * y) - m1 * m2
    fx, fy = flat(x), flat(y)
    s1, s2, s12 = np.where(fx, 0, s1), np.where(fy, 0, s2), np.where(fx | fy, 0, s12)
    return ((2 * m1 * m2 + c) * (2 * s12 + c)) / ((m1 ** 2 + m2 ** 2 + c) * (s1 + s2 + c)), s1, s2

  s_ab, v_a, v_b = ssim_map(a, b)
  s_af, _, _ = ssim_map(a, f)
  s_bf, _, _ = ssim_map(b, f)
  with np.errstate(invalid='ignore'):  # 0 / 0 where both sources are flat: dropped, as the toolbox.
    lam = v_a / (v_a + v_b)
  q = np.where(s_ab >= 0.75, lam * s_af + (1 - lam) * s_bf, np.maximum(s_af, s_bf))
  return float(np.nanmean(q))


def _np_qcb(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
  """metricChenBlum.m, literally: freqspace, fftshift, filter2 with 31 x 31 Gaussians."""
  a, b, f = (_normalize1(x) for x in (a, b, f))
  hh, ww = a.shape
  u = (np.arange(ww) - ww // 2) * (2.0 / ww) * (ww / 30.0)
  v = (np.arange(hh) - hh // 2) * (2.0 / hh) * (hh / 30.0)
  uu, vv = np.meshgrid(u, v)
  r = np.sqrt(uu ** 2 + vv ** 2)
  sd = np.exp(-(r / 15.3870) ** 2) - 0.7622 * np.exp(-(r / 1.3456) ** 2)
  t = np.arange(-15, 16.0)
  xx, yy = np.meshgrid(t, t)

  def gauss(sigma):
    return np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)

  def masked_contrast(im):
    csf = np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(im)) * sd))
    con = np.abs(signal.correlate2d(csf, gauss(2), mode='same') /
                 signal.correlate2d(csf, gauss(4), mode='same') - 1)
    return con ** 3 / (con ** 2 + 1e-4)

  ca, cb, cf = (masked_contrast(x) for x in (a, b, f))
  qa = np.where(ca < cf, ca / cf, cf / ca)
  qb = np.where(cb < cf, cb / cf, cf / cb)
  lam = ca ** 2 / (ca ** 2 + cb ** 2)
  return float(np.mean(lam * qa + (1 - lam) * qb))


def _np_nmi(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
  """Hossny NMI with the toolbox's min-max stretch, from np.histogram2d."""
  def mi(x, y):
    joint, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=256, range=[[-0.5, 255.5]] * 2)
    h_x, h_y = _entropy_np(joint.sum(1)), _entropy_np(joint.sum(0))
    return h_x + h_y - _entropy_np(joint), h_x, h_y

  a, b, f = (_normalize1(x) for x in (a, b, f))
  total = 0.0
  for s in (a, b):
    m, h_s, h_f = mi(s, f)
    total += 2 * m / (h_s + h_f)
  return total


class GroundTruthMetricsTest(chex.TestCase):
  """PSNR / SSIM against scikit-image."""

  def setUp(self):
    super().setUp()
    self.ref = _texture(1)
    rng = np.random.default_rng(2)
    noisy = self.ref + 0.05 * rng.standard_normal(self.ref.shape)
    self.img = np.clip(noisy, 0, 1).astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_psnr_matches_skimage(self):
    # float32 MSE vs skimage's float64: |dPSNR| < 1e-4 dB.
    got = self.variant(metrics.psnr)(self.img, self.ref)
    want = skm.peak_signal_noise_ratio(self.ref.astype(np.float64), self.img.astype(np.float64),
                                       data_range=1.0)
    np.testing.assert_allclose(got, want, atol=1e-4)
    got_y = self.variant(functools.partial(metrics.psnr, luma_only=True))(self.img, self.ref)
    want_y = skm.peak_signal_noise_ratio(_luma64(self.ref), _luma64(self.img), data_range=1.0)
    np.testing.assert_allclose(got_y, want_y, atol=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ('gaussian', 'gaussian', dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)),
      ('uniform', 'uniform', dict()))
  def test_ssim_matches_skimage(self, window, sk_kwargs):
    # float32 local moments vs skimage's float64: |dSSIM| < 2e-5.
    fn = self.variant(functools.partial(metrics.ssim, window=window))
    want = skm.structural_similarity(self.ref.astype(np.float64), self.img.astype(np.float64),
                                     data_range=1.0, channel_axis=-1, **sk_kwargs)
    np.testing.assert_allclose(fn(self.img, self.ref), want, atol=2e-5)
    self.assertLess(float(want), 0.99)  # The test pair is not trivially similar.

  def test_ssim_luma_matches_skimage(self):
    want = skm.structural_similarity(_luma64(self.ref), _luma64(self.img), data_range=1.0,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    got = metrics.gt_metrics(self.img, self.ref)
    np.testing.assert_allclose(got['SSIM_Y'], want, atol=2e-5)
    self.assertEqual(set(got), {'PSNR', 'SSIM', 'PSNR_Y', 'SSIM_Y'})

  def test_identical_images(self):
    got = metrics.gt_metrics(self.ref, self.ref)
    self.assertTrue(np.isposinf(got['PSNR']) and np.isposinf(got['PSNR_Y']))
    np.testing.assert_allclose([got['SSIM'], got['SSIM_Y']], 1.0, atol=1e-6)

  def test_psnr_known_noise(self):
    # A uniform offset of d gives MSE = d^2 exactly: PSNR = -20 log10(d).
    d = 0.05
    np.testing.assert_allclose(metrics.psnr(self.ref + d, self.ref), -20 * math.log10(d), atol=1e-3)


class PaperMetricsTest(chex.TestCase):
  """MG, EI, IE, MGA, ECO and their relative versions."""

  def test_ramp_closed_forms(self):
    # Grey ramp I(i, j) = s j on one channel (luma of a one-channel image is the image itself).
    s = 1.0 / 64.0
    ramp = np.tile(s * np.arange(SIZE, dtype=np.float32), (SIZE, 1))[..., None]
    g = 255.0 * s
    np.testing.assert_allclose(metrics.mean_gradient(ramp), g / math.sqrt(2), rtol=1e-5)
    # Sobel: 8 s inside; reflect-101 makes the first and last columns flat.
    np.testing.assert_allclose(metrics.edge_intensity(ramp), 8 * g * (SIZE - 2) / SIZE, rtol=1e-5)
    np.testing.assert_allclose(metrics.mean_grey(ramp), g * (SIZE - 1) / 2, rtol=1e-5)
    np.testing.assert_allclose(metrics.spatial_frequency(ramp), g * math.sqrt((SIZE - 1) / SIZE),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics.average_gradient(ramp),
                               g / math.sqrt(2) * SIZE * SIZE / (SIZE - 1) ** 2, rtol=1e-5)
    np.testing.assert_allclose(metrics.standard_deviation(ramp),
                               g * math.sqrt((SIZE ** 2 - 1) / 12.0), rtol=1e-5)

  def test_constant_image(self):
    c = np.float32(0.3)
    img = np.full((SIZE, SIZE, 3), c, np.float32)
    for fn in (metrics.mean_gradient, metrics.edge_intensity, metrics.edge_coherence,
               metrics.spatial_frequency, metrics.average_gradient, metrics.standard_deviation,
               metrics.entropy, metrics.information_entropy,
               functools.partial(metrics.information_entropy, mode='2d')):
      np.testing.assert_allclose(fn(img), 0.0, atol=1e-5)
    np.testing.assert_allclose(metrics.mean_grey(img), 255 * (0.859 * c + 0.0625), rtol=1e-5)

  def test_brightness_shift(self):
    # Adding d to every channel: MGA moves by 255 d (0.257 + 0.504 + 0.098 = 0.859 for RGB luma),
    # gradients and edge coherence do not move (the filters have zero mean).
    img = _texture(3)
    d = np.float32(0.05)
    for fn in (metrics.mean_gradient, metrics.edge_intensity, metrics.spatial_frequency,
               metrics.average_gradient, metrics.standard_deviation):
      np.testing.assert_allclose(fn(img + d), fn(img), rtol=2e-4)
    np.testing.assert_allclose(metrics.edge_coherence(img + d), metrics.edge_coherence(img),
                               rtol=1e-3)
    np.testing.assert_allclose(metrics.mean_grey(img + d) - metrics.mean_grey(img), 255 * 0.859 * d,
                               rtol=1e-4)
    r = metrics.paper_metrics(img + d, img, img)
    np.testing.assert_allclose(r['RMGA'], 255 * 0.859 * d, rtol=1e-4)
    np.testing.assert_allclose([r['RMG'], r['REI']], 0.0, atol=2e-3)

  def test_relative_metrics_vanish_for_identical(self):
    img = _texture(4)
    r = metrics.paper_metrics(img, img, img)
    self.assertEqual(set(r), {'MG', 'EI', 'IE', 'MGA', 'ECO', 'RMG', 'REI', 'RIE', 'RMGA', 'RECO'})
    for key in ('RMG', 'REI', 'RIE', 'RMGA', 'RECO'):
      np.testing.assert_allclose(r[key], 0.0, atol=1e-6, err_msg=key)
    # Symmetric in the two ground truths, and R_X is the distance to their mean.
    sharp, a, b = _multifocus_scene()
    r_ab, r_ba = metrics.paper_metrics(sharp, a, b), metrics.paper_metrics(sharp, b, a)
    chex.assert_trees_all_close(r_ab, r_ba, rtol=1e-5, atol=1e-6)
    mg = [float(metrics.mean_gradient(x)) for x in (sharp, a, b)]
    want = abs(mg[0] - (mg[1] + mg[2]) / 2)
    np.testing.assert_allclose(r_ab['RMG'], want, rtol=1e-5)
    self.assertGreater(float(r_ab['RMG']), 0.1)

  def test_blur_lowers_sharpness(self):
    img = _texture(5, sigma=1.0)
    soft = _blur(img)
    for fn in (metrics.mean_gradient, metrics.edge_intensity, metrics.spatial_frequency,
               metrics.average_gradient):
      self.assertLess(float(fn(soft)), 0.8 * float(fn(img)), msg=str(fn))

  def test_entropy_known_histogram(self):
    # Levels 10, 50, 200, 255 with probabilities 1/2, 1/4, 1/8, 1/8: 1.75 bits.
    counts = [512, 256, 128, 128]
    levels = np.repeat(np.array([10, 50, 200, 255], np.float32), counts)
    img = np.random.default_rng(6).permutation(levels).reshape(SIZE, SIZE, 1) / 255.0
    np.testing.assert_allclose(metrics.entropy(img), 1.75, atol=1e-5)
    np.testing.assert_allclose(metrics.information_entropy(img), 1.75, atol=1e-5)
    # RGB with R = G = B: rgb2gray weights sum to 0.9999, still on the same levels.
    np.testing.assert_allclose(metrics.entropy(np.repeat(img, 3, -1)), 1.75, atol=1e-5)

  def test_entropy_2d_matches_numpy(self):
    # Pairs (level, rounded 3x3 mean with BORDER_REFLECT_101) counted with np.histogram2d.
    rng = np.random.default_rng(7)
    levels = np.round(ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 1.0) * 400 - 100)
    levels = np.clip(levels, 0, 255)
    mean = np.round(cv2.blur(levels, (3, 3), borderType=cv2.BORDER_REFLECT_101))
    joint, _, _ = np.histogram2d(levels.ravel(), mean.ravel(), bins=256, range=[[-0.5, 255.5]] * 2)
    img = (levels / 255.0).astype(np.float32)[..., None]
    np.testing.assert_allclose(metrics.information_entropy(img, mode='2d'), _entropy_np(joint),
                               atol=1e-4)
    np.testing.assert_allclose(metrics.information_entropy(img), _entropy_np(np.bincount(
        levels.astype(int).ravel(), minlength=256)), atol=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_eco_matches_scipy(self):
    # Reference: complex Laguerre-Gauss filters from the formula, scipy correlate with 'mirror'
    # (= BORDER_REFLECT_101), float64; agreement to 1e-4 relative.
    img = _texture(8, sigma=1.0)
    y = np.asarray(filters.luma(jnp.asarray(img)), np.float64)
    t = np.arange(17) - 8.0
    xx, yy = np.meshgrid(t, t)
    z = (xx + 1j * yy) / 2.0  # r e^{i gamma} / sigma
    base = np.exp(-np.abs(z) ** 2 / 2) / (2 * np.sqrt(np.pi))
    k1 = -base * np.conj(z)  # (r / sigma) e^{-i gamma}
    k3 = -base * np.conj(z) ** 3 / 6
    y1, y3 = (ndimage.correlate(y, k.real, mode='mirror') +
              1j * ndimage.correlate(y, k.imag, mode='mirror') for k in (k1, k3))
    want = np.mean(-np.abs(y3) * np.abs(y1) * np.cos(np.angle(y3) - 3 * np.angle(y1)))
    got = self.variant(metrics.edge_coherence)(img)
    np.testing.assert_allclose(got, want, rtol=1e-4)

  def test_edge_coherence_of_a_straight_edge(self):
    # A straight step edge is coherent (ECO > 0) and blurring it lowers ECO; a flat image scores 0.
    edge = np.zeros((SIZE, SIZE, 1), np.float32)
    edge[:, SIZE // 2:] = 0.8
    eco = [float(metrics.edge_coherence(x)) for x in (edge, _blur(edge, 1.0), _blur(edge, 2.0))]
    self.assertGreater(eco[0], 0.0)
    self.assertGreater(eco[0], 1.2 * eco[1])
    self.assertGreater(eco[1], 1.2 * eco[2])
    self.assertLess(abs(float(metrics.edge_coherence(np.full_like(edge, 0.4)))), 1e-9)

  def test_reco_formula(self):
    sharp, a, b = _multifocus_scene(9)
    e = [float(metrics.edge_coherence(x)) for x in (sharp, a, b)]
    want = abs(2 - (e[0] + 1) / (e[1] + 1) - (e[0] + 1) / (e[2] + 1))
    # RECO is a small difference of ratios near 1: compare absolutely (float32 ratios, 1e-6).
    np.testing.assert_allclose(metrics.relative_edge_coherence(sharp, a, b), want, atol=1e-6)
    np.testing.assert_allclose(metrics.paper_metrics(sharp, a, b)['RECO'], want, atol=1e-6)
    self.assertGreater(want, 1e-5)


class FusionMetricsTest(chex.TestCase):
  """Qabf, NMI, Qy, Qcb, SF, AG, EN, SD."""

  def setUp(self):
    super().setUp()
    self.sharp, self.a, self.b = _multifocus_scene(10)
    self.grey = [_grey255_matlab(x) for x in (self.sharp, self.a, self.b)]

  def test_qabf_closed_form(self):
    # A: a bright rectangle on the left, B: the same rectangle on the right, both on black (no
    # zero-padding edges at the image border); F = A. Where A has edges, F reproduces them exactly:
    # Q = 0.9994 / (1 + e^-7.5) * 0.9879 / (1 + e^-4.4). Where B has edges F is flat: strength ratio
    # 0 gives Q <= 0.9994 / (1 + e^7.5) = 5.5e-4. Equal edge mass, so Qabf = Q_same / 2 (+ <= 3e-4).
    a = np.zeros((SIZE, SIZE, 1), np.float32)
    b = np.zeros_like(a)
    a[8:24, 4:12] = 0.6
    b[8:24, 20:28] = 0.6
    q_same = 0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4))
    self.assertTrue(0.0 <= float(metrics.qabf(a, a, b)) - q_same / 2 < 3e-4)
    np.testing.assert_allclose(metrics.qabf(a, a, a), q_same, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_qabf_matches_toolbox_port(self):
    fn = self.variant(metrics.qabf)
    for fused, grey_f in ((self.sharp, self.grey[0]), (self.a, self.grey[1])):
      want = _np_qabf(self.grey[1], self.grey[2], grey_f)
      np.testing.assert_allclose(fn(fused, self.a, self.b), want, atol=1e-5)

  def test_sharp_fusion_beats_blurred(self):
    soft = _blur(self.sharp)
    for fn in (metrics.qabf, metrics.qy, metrics.qcb):
      self.assertGreater(float(fn(self.sharp, self.a, self.b)),
                         float(fn(soft, self.a, self.b)) + 0.05, msg=str(fn))

  @chex.variants(with_jit=True, without_jit=True)
  def test_nmi_matches_numpy(self):
    # One-channel images on exact grey levels spanning 0..255, so that the min-max stretch is exact.
    rng = np.random.default_rng(11)
    a = np.round(ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 1.0) * 255)
    b = np.round(0.5 * a + 0.5 * rng.integers(0, 256, a.shape))
    a, b = ((x - x.min()) / (x.max() - x.min()) for x in (a, b))
    a, b = (np.round(x * 255) / 255 for x in (a, b))
    img_a, img_b = (x.astype(np.float32)[..., None] for x in (a, b))
    fn = self.variant(metrics.nmi)
    want = _np_nmi(255 * a, 255 * b, 255 * a)
    np.testing.assert_allclose(fn(img_a, img_a, img_b), want, atol=1e-5)
    # F = A: the A term is exactly 1.
    joint, _, _ = np.histogram2d(255 * a.ravel(), 255 * b.ravel(), bins=256,
                                 range=[[-0.5, 255.5]] * 2)
    h_a, h_b = _entropy_np(joint.sum(1)), _entropy_np(joint.sum(0))
    mi_ab = h_a + h_b - _entropy_np(joint)
    np.testing.assert_allclose(want, 1 + 2 * mi_ab / (h_a + h_b), atol=1e-9)
    self.assertGreater(mi_ab, 0.1)
    # A general fusion (RGB textures; references quantise the same float32 grey).
    got = metrics.nmi(self.sharp, self.a, self.b)
    grey32 = [np.asarray(metrics.rgb2gray(jnp.asarray(x)) * 255.0, np.float64) for x in
              (self.a, self.b, self.sharp)]
    np.testing.assert_allclose(got, _np_nmi(*grey32), atol=1e-4)

  def test_qy_matches_toolbox_port(self):
    for fused, grey_f in ((self.sharp, self.grey[0]), (_blur(self.sharp), None)):
      grey_f = _grey255_matlab(fused) if grey_f is None else grey_f
      np.testing.assert_allclose(metrics.qy(fused, self.a, self.b),
                                 _np_qy(self.grey[1], self.grey[2], grey_f), atol=2e-4)
    np.testing.assert_allclose(metrics.qy(self.a, self.a, self.a), 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.qy(self.sharp, self.a, self.b),
                               metrics.qy(self.sharp, self.b, self.a), atol=1e-6)

  def test_qy_drops_flat_windows(self):
    # Both sources flat on the left: those windows are undefined and dropped, not NaN.
    a, b = self.a.copy(), self.b.copy()
    a[:, :12] = 0.5
    b[:, :12] = 0.5
    got = float(metrics.qy(self.sharp, a, b))
    self.assertTrue(np.isfinite(got))
    want = _np_qy(*(_grey255_matlab(x) for x in (a, b, self.sharp)))
    np.testing.assert_allclose(got, want, atol=2e-4)

  def test_qcb_matches_toolbox_port(self):
    for fused in (self.sharp, _blur(self.sharp)):
      np.testing.assert_allclose(metrics.qcb(fused, self.a, self.b),
                                 _np_qcb(self.grey[1], self.grey[2], _grey255_matlab(fused)),
                                 atol=2e-4)
    np.testing.assert_allclose(metrics.qcb(self.a, self.a, self.a), 1.0, atol=1e-6)

  def test_n_source_forms(self):
    sources = jnp.stack([self.a, self.b])
    np.testing.assert_allclose(metrics.qabf_n(self.sharp, sources),
                               metrics.qabf(self.sharp, self.a, self.b), rtol=1e-6)
    three = jnp.stack([self.a, self.b, self.a])
    r = metrics.reference_free_metrics(self.sharp, three)
    self.assertEqual(set(r), {'Qabf', 'NMI', 'Qy', 'Qcb', 'SF', 'AG', 'EN', 'SD'})
    self.assertTrue(np.isnan(r['Qy']))
    for key in ('Qabf', 'NMI', 'Qcb'):
      self.assertTrue(np.isfinite(r[key]), key)
    # A repeated source: NMI adds its term again.
    np.testing.assert_allclose(
        r['NMI'] - metrics.nmi(self.sharp, self.a, self.b),
        metrics.nmi_n(self.sharp, jnp.stack([self.a, self.a])) / 2, rtol=1e-5)
    with self.assertRaises(ValueError):
      metrics.reference_free_metrics(self.sharp, self.a[None])


class VmapTest(chex.TestCase):
  """Metrics vmapped over a leading pair axis equal a loop over the pairs."""

  def test_vmap_equals_loop(self):
    def all_metrics(fused, sources):
      return {**metrics.reference_free_metrics(fused, sources),
              **metrics.paper_metrics(fused, sources[0], sources[1]),
              **metrics.gt_metrics(fused, sources[0])}

    # Tolerances: RMGA etc. are differences of means of about 100 grey levels, summed in a different
    # order when batched (float32 ulp at 128 is 8e-6): atol 2e-4.
    scenes = [_multifocus_scene(s) for s in (12, 13)]
    fused = np.stack([s[0] for s in scenes])  # [P, H, W, C]
    sources = np.stack([np.stack(s[1:]) for s in scenes])  # [P, 2, H, W, C]
    batched = jax.jit(jax.vmap(all_metrics))(fused, sources)
    single = jax.jit(all_metrics)
    for p in range(len(scenes)):
      chex.assert_trees_all_close(jax.tree.map(lambda x, p=p: x[p], batched),
                                  single(fused[p], sources[p]), rtol=1e-5, atol=2e-4)


if __name__ == '__main__':
  absltest.main()
