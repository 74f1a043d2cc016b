"""Image quality metrics for multi-focus fusion and super-resolution (DFP_METHOD.md section 8).

Three families, all pure jnp functions of single images (jit-able, shape-static, and vmappable over a
leading pair axis with `jax.vmap`; no Python control flow on traced values, no printing, no I/O):

1. The DFP papers' metrics (long paper section 4.2, eqs. 24-28), on the 0-255 grey scale the papers
   report: mean gradient MG, edge intensity EI, information entropy IE, mean grey MGA, polar edge
   coherence ECO; and their relative versions against the two high-resolution sources ("ground truths"
   GT1, GT2 of the two inputs): R_X = |X(output) - (X(GT1) + X(GT2)) / 2| (RMG, REI, RIE, RMGA) and
   RECO. Grey is `filters.luma` (BT.601 studio-swing Y, as everywhere in `dfp_jax`) times 255.
   `paper_metrics` returns all ten.
2. Full-reference metrics against a ground truth: PSNR and SSIM (Wang et al. 2004), on RGB and on luma.
   `gt_metrics` returns them.
3. The no-reference multi-focus fusion metrics of the MFIFB benchmark (X. Zhang, "Multi-focus image
   fusion: a benchmark", arXiv:2005.01116, whose MATLAB code comes from Z. Liu's fusion-metric toolbox):
   Qabf, NMI, Qy, Qcb, SF, AG, EN, SD. Grey is MATLAB's `rgb2gray` (0.2989 R + 0.5870 G + 0.1140 B, no
   offset) times 255, as the toolbox's grey conversion; a one-channel image is used as is.
   `reference_free_metrics` returns all eight.

Readings chosen where the papers' extracted equations lost their symbols (each is repeated in the
function's docstring):

* MG (eq. 24a) is the classical mean gradient, mean over the (H-1) x (W-1) forward differences of
  sqrt((dx^2 + dy^2) / 2). The extraction keeps no symbol inside the sum. Table 1's REI / RMG ratios
  (10.9 and 8.2 for DFP, 8.7 to 8.8 for the eight decision-map BICUBIC x4 rows) exceed 8, the ratio
  of a Sobel magnitude to sqrt(dx^2 + dy^2) on smooth images (textures give less), while the 1/sqrt(2)
  of the classical definition raises that smooth-image ratio to 8 sqrt(2) = 11.3. Weak evidence, but
  the only one; without the 1/2 every MG and RMG is sqrt(2) larger.
* IE (eq. 26a): the text describes the 2-D entropy of (pixel, 3x3 neighbourhood mean) pairs, but the
  magnitudes of Table 1 (RIE 0.0222 at x2, 0.0376 at x4, 0.015 to 0.06 for the eight decision-map
  BICUBIC rows) are those of the 1-D grey-level entropy: bicubic-upsampled outputs differ from their
  sharp sources by 0.3 to 1.3 bits in 2-D entropy but by 0.002 to 0.1 bit in 1-D entropy (checked on
  the Lytro pairs and on a synthetic pair made from the HCI dino centre view). Default `mode='1d'`;
  `mode='2d'` gives the 2-D entropy. Both in bits (log2): the extraction's "lg" is read as log2.
* ECO / RECO (eq. 28): ECO is the polar edge coherence of Baroncini, Capodiferro, Di Claudio and
  Jacovitti (EUSIPCO 2009): from the responses y1, y3 of the order-1 and order-3 Laguerre-Gauss
  circular harmonic filters, the per-pixel coherence -|y3| |y1| cos(arg y3 - 3 arg y1), which is
  large and positive on sharp straight edges. RECO = |2 - (ECO(out) + C) / (ECO(GT1) + C)
  - (ECO(out) + C) / (ECO(GT2) + C)| with C = 1, and ECO is the pixel *mean* of that coherence on the
  [0, 1] grey scale. Only this scaling puts RECO in Table 1's range (0.001 to 0.15): with C = 1 it is,
  to first order, |ECO(GT1) + ECO(GT2) - 2 ECO(out)|, the same "relative" form as the other four. With
  the pixel sum or the 0-255 scale, C is negligible and RECO is a ratio test of order 1 whenever the two
  sources hold different amounts of sharp edges (every real multi-focus pair).

Where the MFIFB toolbox divides 0 by 0 (flat images), the functions here either follow the published
definition (Qabf: a gradient ratio of two equal strengths is 1) or a stated convention; see each
docstring. The toolbox's per-channel averaging of RGB images (VIFB/MEFB wrappers) is not reproduced:
every no-reference metric is computed once, on grey.
"""

from __future__ import annotations

import math

import numpy as np
import jax.numpy as jnp
from jax import lax

from dfp_jax import filters

# MATLAB rgb2gray weights (ITU-R BT.601 luma without offset), the MFIFB toolbox's grey conversion.
RGB2GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)

# Xydeas-Petrovic Qabf sigmoid constants, as in the MFIFB/VIFB toolbox (Gamma_g, k_g, D_g; Gamma_a,
# k_a, D_a); the strength weight exponent L is 1.
QABF_CONSTANTS = (0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8)

# Chen-Blum constants (Image Vis. Comput. 27 (2009) 1421-1432, as in Z. Liu's metricChenBlum.m):
# CSF (Mannos-Sakrison style difference of Gaussians) f0, f1, a; contrast sensitivity k, h, p, q, Z;
# the two Gaussians of the local contrast have sigma 2 and 4 on a 31 x 31 support.
QCB_CSF = (15.3870, 1.3456, 0.7622)
QCB_CONTRAST = (1.0, 1.0, 3.0, 2.0, 1e-4)

SSIM_K1, SSIM_K2 = 0.01, 0.03


# ----------------------------------------------------------------------------------------------------
# Grey conversions and histograms.


def _grey255(image: jnp.ndarray) -> jnp.ndarray:
  """Luma of [H, W, C] in [0, 1] on the 0-255 scale ([H, W]); the papers' metrics use it."""
  return filters.luma(image) * 255.0


def rgb2gray(image: jnp.ndarray) -> jnp.ndarray:
  """MATLAB `rgb2gray` of an [..., H, W, C] image in [0, 1]; returns [..., H, W] in [0, 1].

  0.2989 R + 0.5870 G + 0.1140 B (no offset). A one-channel image is returned as is.
  """
  if image.shape[-1] == 1:
    return image[..., 0]
  if image.shape[-1] != 3:
    raise ValueError(f'rgb2gray expects 1 or 3 channels, got shape {image.shape}')
  w = jnp.asarray(RGB2GRAY_WEIGHTS, image.dtype)
  return jnp.tensordot(image, w, axes=[[-1], [0]])


def _mfifb_grey255(image: jnp.ndarray) -> jnp.ndarray:
  return rgb2gray(image) * 255.0


def _quantise255(x255: jnp.ndarray) -> jnp.ndarray:
  """Nearest grey level 0..255 (int32). On 8-bit data this is the identity; rounding instead of the
  toolbox's floor keeps float32 values such as 36.99998 (= 37/255*255) on their level."""
  return jnp.clip(jnp.round(x255), 0, 255).astype(jnp.int32)


def _minmax_quantise255(x: jnp.ndarray) -> jnp.ndarray:
  """Z. Liu's `normalize1`: stretch to [0, 255] by the image's min and max, round. A constant image maps
  to 0 (the toolbox leaves all-zero images alone and divides 0 by 0 otherwise)."""
  lo, hi = jnp.min(x), jnp.max(x)
  span = hi - lo
  scale = jnp.where(span > 0, 255.0 / jnp.where(span > 0, span, 1.0), 0.0)
  return jnp.clip(jnp.round((x - lo) * scale), 0, 255).astype(jnp.int32)


def _entropy_bits(counts: jnp.ndarray) -> jnp.ndarray:
  """Shannon entropy (bits) of a histogram given by counts (any shape)."""
  p = counts.astype(jnp.float32) / jnp.sum(counts)
  return -jnp.sum(p * jnp.log2(jnp.where(p > 0, p, 1.0)))


def _histogram(levels: jnp.ndarray, num_bins: int) -> jnp.ndarray:
  return jnp.bincount(levels.reshape(-1), length=num_bins)


def _mutual_information(x: jnp.ndarray, y: jnp.ndarray):
  """MI, H(x), H(y) in bits of two int images with levels 0..255 (256 x 256 joint histogram)."""
  joint = _histogram(x * 256 + y, 256 * 256).reshape(256, 256)
  h_x = _entropy_bits(jnp.sum(joint, axis=1))
  h_y = _entropy_bits(jnp.sum(joint, axis=0))
  h_xy = _entropy_bits(joint)
  return h_x + h_y - h_xy, h_x, h_y


# ----------------------------------------------------------------------------------------------------
# 1. The DFP papers' metrics (long paper section 4.2).


def mean_gradient(image: jnp.ndarray) -> jnp.ndarray:
  """Mean gradient MG (DFP long paper eq. 24a), 0-255 luma scale; a scalar.

  MG = mean over the (H-1) x (W-1) forward differences dx = I(i, j+1) - I(i, j),
  dy = I(i+1, j) - I(i, j) of sqrt((dx^2 + dy^2) / 2), the classical "average gradient" formula. The
  extraction lost the symbols inside the sum; the 1/2 is chosen because the REI / RMG ratios of
  Table 1 exceed 8, the smooth-image EI / MG ratio without it (see the module docstring).

  Args:
    image: [H, W, C] in [0, 1]; RGB is reduced with `filters.luma`.

  Returns:
    float32 scalar, grey levels per pixel (a linear ramp of slope s grey levels per pixel scores
    s / sqrt(2)).
  """
  y = _grey255(image)
  dx = y[:-1, 1:] - y[:-1, :-1]
  dy = y[1:, :-1] - y[:-1, :-1]
  return jnp.mean(jnp.sqrt((dx * dx + dy * dy) / 2.0))


def edge_intensity(image: jnp.ndarray) -> jnp.ndarray:
  """Edge intensity EI (DFP long paper eq. 25a), 0-255 luma scale; a scalar.

  EI = mean of sqrt((I * s_x)^2 + (I * s_y)^2) with the 3 x 3 Sobel operators (`filters.sobel`, border
  BORDER_REFLECT_101). A ramp of slope s grey levels per pixel scores 8 s away from the border.

  Args:
    image: [H, W, C] in [0, 1]; RGB is reduced with `filters.luma`.
  """
  gx, gy = filters.sobel(_grey255(image))
  return jnp.mean(jnp.sqrt(gx * gx + gy * gy))


def information_entropy(image: jnp.ndarray, mode: str = '1d') -> jnp.ndarray:
  """Information entropy IE (DFP long paper eq. 26a), in bits; a scalar.

  The grey image (luma x 255) is rounded to the 256 levels 0..255.

  * `mode='1d'` (default): Shannon entropy of the grey-level histogram, -sum p log2 p. It is the
    default because it reproduces the magnitudes of the papers' Table 1 (RIE 0.0222 / 0.0376), which
    the 2-D entropy misses by an order of magnitude (module docstring).
  * `mode='2d'`: the 2-D entropy the paper's text describes, of the pairs (pixel level, level of the
    3 x 3 neighbourhood mean) (`filters.box_mean`, BORDER_REFLECT_101, rounded), on a 256 x 256
    histogram.

  Args:
    image: [H, W, C] in [0, 1]; RGB is reduced with `filters.luma`.
    mode: '1d' or '2d' (static).
  """
  y = _grey255(image)
  q = _quantise255(y)
  if mode == '1d':
    return _entropy_bits(_histogram(q, 256))
  if mode == '2d':
    m = _quantise255(filters.box_mean(y, 3))
    return _entropy_bits(_histogram(q * 256 + m, 256 * 256))
  raise ValueError(f"information_entropy mode must be '1d' or '2d', got {mode!r}")


def mean_grey(image: jnp.ndarray) -> jnp.ndarray:
  """Mean grey value MGA (DFP long paper eq. 27a): mean of luma x 255; a scalar in [0, 255].

  Note that `filters.luma` is studio-swing (black is 16, white 235 on this scale).
  """
  return jnp.mean(_grey255(image))


def _laguerre_gauss_kernels(size: int, sigma: float) -> tuple[np.ndarray, ...]:
  """Real and imaginary parts of the order-1 and order-3 Laguerre-Gauss circular harmonic filters
  L_n(r, g) = c_n (r / sigma)^n exp(-r^2 / (2 sigma^2)) exp(-i n g), c_1 = -1 / (sigma sqrt(pi)),
  c_3 = -1 / (6 sigma sqrt(pi)), sampled on the integer grid of a size x size window (NumPy
  constants). x grows with the column, y with the row; the orientation conventions do not change ECO.
  """
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  xx, yy = np.meshgrid(x, x)
  r = np.hypot(xx, yy) / sigma
  gamma = np.arctan2(yy, xx)
  base = np.exp(-r * r / 2.0) / (sigma * math.sqrt(math.pi))
  l1 = -base * r * np.exp(-1j * gamma)
  l3 = -base * r ** 3 * np.exp(-3j * gamma) / 6.0
  return tuple(k.astype(np.float32) for k in (l1.real, l1.imag, l3.real, l3.imag))


def polar_edge_coherence_map(image: jnp.ndarray, size: int = 17, sigma: float = 2.0) -> jnp.ndarray:
  """Per-pixel polar edge coherence -|y3| |y1| cos(arg y3 - 3 arg y1) on the [0, 1] grey scale, [H, W].

  y1, y3 are the responses of the order-1 and order-3 Laguerre-Gauss circular harmonic filters
  (Baroncini et al., EUSIPCO 2009; constants of `_laguerre_gauss_kernels`), correlated with
  BORDER_REFLECT_101. Computed as -Re(y3 conj(y1)^3) / |y1|^2, which is 0 where y1 = 0.

  Args:
    image: [H, W, C] in [0, 1]; RGB is reduced with `filters.luma`.
    size: odd filter support (static); 17 as in the public reference implementation.
    sigma: Gaussian scale of the filters in pixels (static); 2 likewise.
  """
  y = filters.luma(image)
  k1r, k1i, k3r, k3i = _laguerre_gauss_kernels(size, sigma)
  stack = jnp.stack([filters.correlate2d(y, k) for k in (k1r, k1i, k3r, k3i)])  # [4, H, W]
  a1, b1, a3, b3 = stack[0], stack[1], stack[2], stack[3]
  # conj(y1)^3 = (a1 - i b1)^3.
  wr = a1 * a1 * a1 - 3.0 * a1 * b1 * b1
  wi = b1 * b1 * b1 - 3.0 * a1 * a1 * b1
  num = a3 * wr - b3 * wi  # Re(y3 conj(y1)^3) = |y3| |y1|^3 cos(arg y3 - 3 arg y1).
  den = a1 * a1 + b1 * b1
  return -num / jnp.where(den > 0, den, 1.0) * (den > 0)


def edge_coherence(image: jnp.ndarray, size: int = 17, sigma: float = 2.0) -> jnp.ndarray:
  """Polar edge coherence ECO (Baroncini et al. 2009; DFP long paper eq. 28): a scalar.

  The pixel mean of `polar_edge_coherence_map`, on the [0, 1] grey scale (luma). Grows with the amount
  and sharpness of straight edges (blurring an edge lowers it); 0 for a flat image. Corners and
  isotropic texture contribute negative coherence, so a texture can score below 0. (The public reference implementation,
  aizvorski/video-quality `reco.py`, sums over pixels and samples its 17 x 17 filters at a spacing of
  17/16 pixel; the mean on [0, 1] is used here so that RECO with C = 1 has the papers' magnitudes,
  see `relative_edge_coherence`.)
  """
  return jnp.mean(polar_edge_coherence_map(image, size, sigma))


def relative_edge_coherence(output: jnp.ndarray, gt1: jnp.ndarray, gt2: jnp.ndarray,
                            c: float = 1.0) -> jnp.ndarray:
  """RECO (DFP long paper eq. 28); lower is better, 0 for output = gt1 = gt2.

  RECO = |2 - (ECO(out) + C) / (ECO(GT1) + C) - (ECO(out) + C) / (ECO(GT2) + C)| with ECO from
  `edge_coherence` ([0, 1] grey scale, pixel mean) and C = 1 (the constant of the reference
  implementation). This is the reading of the garbled equation (the papers' "2 - ratio - ratio",
  absolute value as for the other relative metrics, lower is better) that reproduces Table 1's range.

  Args:
    output: [H, W, C] high-resolution fusion output in [0, 1].
    gt1, gt2: the two high-resolution sources (foreground / background in focus), same shape.
    c: the regularising constant C.
  """
  return _reco(edge_coherence(output), edge_coherence(gt1), edge_coherence(gt2), c)


def _reco(e_out, e_gt1, e_gt2, c):
  return jnp.abs(2.0 - (e_out + c) / (e_gt1 + c) - (e_out + c) / (e_gt2 + c))


def relative(metric_out: jnp.ndarray, metric_gt1: jnp.ndarray, metric_gt2: jnp.ndarray) -> jnp.ndarray:
  """R_X = |X(output) - (X(GT1) + X(GT2)) / 2| (DFP long paper eqs. 24b-27b)."""
  return jnp.abs(metric_out - 0.5 * (metric_gt1 + metric_gt2))


def paper_metrics(output: jnp.ndarray, gt1: jnp.ndarray, gt2: jnp.ndarray, *, ie_mode: str = '1d',
                  eco_c: float = 1.0) -> dict[str, jnp.ndarray]:
  """The DFP papers' Table 1 metrics of a fusion/SR output against its two HR sources.

  Args:
    output: [H, W, C] in [0, 1], the MFISRF output at high resolution.
    gt1, gt2: [H, W, C] in [0, 1], the high-resolution versions of the two inputs.
    ie_mode: '1d' (default) or '2d', see `information_entropy`.
    eco_c: C of RECO.

  Returns:
    dict with keys 'MG', 'EI', 'IE', 'MGA', 'ECO' (of the output; MG, EI, MGA on the 0-255 luma
    scale, IE in bits, ECO on the [0, 1] scale) and 'RMG', 'REI', 'RIE', 'RMGA', 'RECO' (lower is
    better). Float32 scalars.
  """
  out = {}
  fns = {'MG': mean_gradient, 'EI': edge_intensity,
         'IE': lambda im: information_entropy(im, ie_mode), 'MGA': mean_grey}
  for name, fn in fns.items():
    vals = [fn(im) for im in (output, gt1, gt2)]
    out[name] = vals[0]
    out['R' + name] = relative(*vals)
  e_out, e1, e2 = (edge_coherence(im) for im in (output, gt1, gt2))
  out['ECO'] = e_out
  out['RECO'] = _reco(e_out, e1, e2, eco_c)
  return out


# ----------------------------------------------------------------------------------------------------
# 2. Full-reference metrics against a ground truth.


def _crop(x: jnp.ndarray, crop: int) -> jnp.ndarray:
  return x[crop:x.shape[0] - crop, crop:x.shape[1] - crop] if crop > 0 else x


def psnr(image: jnp.ndarray, reference: jnp.ndarray, *, luma_only: bool = False,
         crop: int = 0) -> jnp.ndarray:
  """Peak signal-to-noise ratio in dB with peak 1 (skimage `peak_signal_noise_ratio(data_range=1)`).

  10 log10(1 / MSE), the MSE over all pixels and channels; +inf for identical images.

  Args:
    image, reference: [H, W, C] in [0, 1].
    luma_only: compare `filters.luma` (BT.601 Y, the usual super-resolution convention) instead of
      all channels.
    crop: pixels removed at each border before comparing (static; SR papers often crop the scale).
  """
  if luma_only:
    image, reference = filters.luma(image), filters.luma(reference)
  d = _crop(image, crop).astype(jnp.float32) - _crop(reference, crop).astype(jnp.float32)
  return 10.0 * jnp.log10(1.0 / jnp.mean(d * d))


def _ssim_map(x: jnp.ndarray, y: jnp.ndarray, window: str) -> tuple[jnp.ndarray, int]:
  """SSIM map of [..., H, W] images with data range 1 and the border half-window to crop."""
  if window == 'gaussian':
    cov_norm, pad = 1.0, 5
  elif window == 'uniform':
    cov_norm, pad = 49.0 / 48.0, 3  # Sample covariance, as skimage's default.
  else:
    raise ValueError(f"SSIM window must be 'gaussian' or 'uniform', got {window!r}")

  def blur(v):
    return filters.gaussian_blur(v, 11, 1.5) if window == 'gaussian' else filters.box_mean(v, 7)

  ux, uy = blur(x), blur(y)
  vx = cov_norm * (blur(x * x) - ux * ux)
  vy = cov_norm * (blur(y * y) - uy * uy)
  vxy = cov_norm * (blur(x * y) - ux * uy)
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return s, pad


def ssim(image: jnp.ndarray, reference: jnp.ndarray, *, window: str = 'gaussian',
         luma_only: bool = False, crop: int = 0) -> jnp.ndarray:
  """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004), data range 1; a scalar <= 1.

  K1 = 0.01, K2 = 0.03. The SSIM map is averaged over the pixels whose window lies inside the image
  (a half-window is cropped at each border) and over channels. Matches scikit-image
  `structural_similarity(..., data_range=1, channel_axis=-1)` with:

  * `window='gaussian'` (default, Wang et al.'s reference setting): 11 x 11 Gaussian, sigma 1.5,
    population covariances; skimage `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`.
  * `window='uniform'`: 7 x 7 box with sample covariances (N / (N - 1)); skimage's defaults.

  Args:
    image, reference: [H, W, C] in [0, 1]; H, W >= 11 (gaussian) or 7 (uniform).
    window: 'gaussian' or 'uniform' (static).
    luma_only: compare `filters.luma` instead of the channels.
    crop: pixels removed at each border first (static).
  """
  image, reference = _crop(image, crop), _crop(reference, crop)
  if luma_only:
    x, y = filters.luma(image)[None], filters.luma(reference)[None]
  else:
    x, y = jnp.moveaxis(image, -1, 0), jnp.moveaxis(reference, -1, 0)  # [C, H, W]
  s, pad = _ssim_map(x.astype(jnp.float32), y.astype(jnp.float32), window)
  return jnp.mean(s[:, pad:s.shape[1] - pad, pad:s.shape[2] - pad])


def gt_metrics(output: jnp.ndarray, gt: jnp.ndarray, *, crop: int = 0) -> dict[str, jnp.ndarray]:
  """PSNR and SSIM of an output against its ground truth.

  Returns:
    dict with keys 'PSNR', 'SSIM' (RGB), 'PSNR_Y', 'SSIM_Y' (`filters.luma`); PSNR in dB with peak 1,
    SSIM with the Gaussian window of `ssim`.
  """
  return {'PSNR': psnr(output, gt, crop=crop), 'SSIM': ssim(output, gt, crop=crop),
          'PSNR_Y': psnr(output, gt, luma_only=True, crop=crop),
          'SSIM_Y': ssim(output, gt, luma_only=True, crop=crop)}


# ----------------------------------------------------------------------------------------------------
# 3. No-reference multi-focus fusion metrics (MFIFB).


def _as_sources(sources) -> jnp.ndarray:
  sources = jnp.asarray(sources)
  if sources.ndim != 4 or sources.shape[0] < 2:
    raise ValueError(f'sources must be stacked as [N >= 2, H, W, C], got shape {sources.shape}')
  return sources


def _sobel_zero(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Sobel responses with zero padding (MATLAB conv2 'same'); x [..., H, W]."""
  d = np.array([-1.0, 0.0, 1.0], np.float32)
  s = np.array([1.0, 2.0, 1.0], np.float32)
  return (filters.separable_correlate(x, s, d, 'constant'),
          filters.separable_correlate(x, d, s, 'constant'))


def _qabf_strength_orientation(x255: jnp.ndarray):
  gx, gy = _sobel_zero(x255)
  g = jnp.sqrt(gx * gx + gy * gy)
  # The toolbox's conv2 with [-1 0 1; -2 0 2; -1 0 1] gives -gx; atan(gy / -gx), pi/2 where it is 0.
  sx = -gx
  a = jnp.where(sx == 0, jnp.pi / 2, jnp.arctan(gy / jnp.where(sx == 0, 1.0, sx)))
  return g, a


def qabf_n(fused: jnp.ndarray, sources: jnp.ndarray) -> jnp.ndarray:
  """Qabf for N >= 2 sources stacked [N, H, W, C]: sum_n sum Q_nF g_n / sum_n sum g_n.

  The natural N-source form of Xydeas and Petrovic's weighted sum (see `qabf`); equal to `qabf` for
  N = 2.
  """
  sources = _as_sources(sources)
  tg, kg, dg, ta, ka, da = QABF_CONSTANTS
  g_f, a_f = _qabf_strength_orientation(_mfifb_grey255(fused))
  g_s, a_s = _qabf_strength_orientation(_mfifb_grey255(sources))  # [N, H, W]
  hi = jnp.maximum(g_s, g_f)
  ratio = jnp.where(hi > 0, jnp.minimum(g_s, g_f) / jnp.where(hi > 0, hi, 1.0), 1.0)
  orient = 1.0 - jnp.abs(a_s - a_f) / (jnp.pi / 2)
  q = tg / (1.0 + jnp.exp(kg * (ratio - dg))) * ta / (1.0 + jnp.exp(ka * (orient - da)))
  return jnp.sum(q * g_s) / jnp.sum(g_s)


def qabf(fused: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Gradient-based fusion quality Q^{AB/F} (Xydeas and Petrovic, Electron. Lett. 36 (2000) 308-309).

  On MATLAB `rgb2gray` grey x 255, as the MFIFB/VIFB toolbox: Sobel strength g and orientation
  alpha = atan(s_y / s_x) (pi/2 where s_x = 0) with zero padding (conv2 'same'); per source X the
  strength ratio G = min(g_X, g_F) / max(g_X, g_F) and orientation agreement
  A = 1 - |alpha_X - alpha_F| / (pi/2); Q_XF = Gamma_g / (1 + exp(k_g (G - D_g))) *
  Gamma_a / (1 + exp(k_a (A - D_a))) with (Gamma_g, k_g, D_g, Gamma_a, k_a, D_a) =
  (0.9994, -15, 0.5, 0.9879, -22, 0.8); Qabf = sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B) (L = 1).

  G is 1 where both strengths are equal (the published definition; the toolbox's equality branch
  returns g_F instead, which only matters on pixels of equal strength). NaN when both sources are flat.

  Args:
    fused, a, b: [H, W, C] in [0, 1], same shape.

  Returns:
    float32 scalar in [0, 0.9748], higher is better; the maximum
    0.9994 / (1 + e^-7.5) * 0.9879 / (1 + e^-4.4) = 0.9748 is reached where F reproduces the
    sources' edges exactly (F = A = B).
  """
  return qabf_n(fused, jnp.stack([a, b]))


def nmi_n(fused: jnp.ndarray, sources: jnp.ndarray) -> jnp.ndarray:
  """NMI for N >= 2 stacked sources: sum_n 2 MI(S_n, F) / (H(S_n) + H(F)); `nmi` for N = 2."""
  sources = _as_sources(sources)
  f = _minmax_quantise255(_mfifb_grey255(fused))
  total = 0.0
  for n in range(sources.shape[0]):
    mi, h_s, h_f = _mutual_information(_minmax_quantise255(_mfifb_grey255(sources[n])), f)
    total = total + 2.0 * mi / (h_s + h_f)
  return total


def nmi(fused: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Normalised mutual information (Hossny, Nahavandi, Creighton, Electron. Lett. 44 (2008) 1066).

  NMI = 2 [MI(A, F) / (H(A) + H(F)) + MI(B, F) / (H(B) + H(F))], entropies in bits from 256-bin
  (joint) histograms. As the MFIFB toolbox (Z. Liu's metricMI): `rgb2gray` grey, each image stretched
  to 0..255 by its own min and max and rounded (a constant image maps to 0). Range [0, 2]; F = A
  gives 1 + 2 MI(A, B) / (H(A) + H(B)).

  Args:
    fused, a, b: [H, W, C] in [0, 1], same shape.
  """
  return nmi_n(fused, jnp.stack([a, b]))


def _local_moments(x: jnp.ndarray, y: jnp.ndarray, w: np.ndarray):
  """Weighted local means, variances and covariance of x, y [H, W] over a k x k window, 'valid' output.

  Computed from each window's deviations from its centre pixel (shifted-data variance), so that a flat
  window has exactly zero variance: the Qy toolbox divides 0 by 0 there and drops the pixel.
  """
  k = w.shape[0]
  xy = jnp.stack([x, y])[:, None]  # [2, 1, H, W]
  patches = lax.conv_general_dilated_patches(
      xy, (k, k), (1, 1), 'VALID', precision=lax.Precision.HIGHEST)  # [2, k*k, h, wd]
  centre = patches[:, (k * k) // 2][:, None]
  d = patches - centre
  wv = jnp.asarray(w.reshape(-1), x.dtype)[None, :, None, None]
  m = jnp.sum(wv * d, axis=1)  # [2, h, wd]
  mu = centre[:, 0] + m
  var = jnp.sum(wv * d * d, axis=1) - m * m
  cov = jnp.sum(wv[0] * d[0] * d[1], axis=0) - m[0] * m[1]
  return mu[0], mu[1], jnp.maximum(var[0], 0.0), jnp.maximum(var[1], 0.0), cov


def _qy_ssim(x, y, w, c=2e-16):
  mx, my, vx, vy, cxy = _local_moments(x, y, w)
  s = ((2 * mx * my + c) * (2 * cxy + c)) / ((mx * mx + my * my + c) * (vx + vy + c))
  return s, vx, vy


def qy(fused: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Yang et al.'s SSIM-based fusion metric Q_Y (Inf. Fusion 9 (2008) 156-160); two sources only.

  As Z. Liu's metricYang.m (MFIFB): on `rgb2gray` grey x 255, local SSIM maps with a 7 x 7 Gaussian
  window (sigma 1.5, normalised), 'valid' positions only, C1 = C2 = 2e-16; with
  lambda = s_A^2 / (s_A^2 + s_B^2) (local variances of A and B),
  Q = lambda SSIM(A, F) + (1 - lambda) SSIM(B, F) where SSIM(A, B) >= 0.75, else
  max(SSIM(A, F), SSIM(B, F)); Q_Y is the mean of Q over the windows where it is defined (the toolbox
  drops the NaNs of windows where both sources are flat). NaN if both sources are flat everywhere.

  Args:
    fused, a, b: [H, W, C] in [0, 1], same shape, H, W >= 7.

  Returns:
    float32 scalar <= 1; 1 when F = A = B.
  """
  k = filters.gaussian_kernel1d(7, 1.5).astype(np.float64)
  w = np.outer(k, k)
  w = (w / w.sum()).astype(np.float32)
  fa, fb, ff = (_mfifb_grey255(v) for v in (a, b, fused))
  s_ab, va, vb = _qy_ssim(fa, fb, w)
  s_af, _, _ = _qy_ssim(fa, ff, w)
  s_bf, _, _ = _qy_ssim(fb, ff, w)
  vsum = va + vb
  defined = vsum > 0
  lam = va / jnp.where(defined, vsum, 1.0)
  q = jnp.where(s_ab >= 0.75, lam * s_af + (1.0 - lam) * s_bf, jnp.maximum(s_af, s_bf))
  return jnp.sum(jnp.where(defined, q, 0.0)) / jnp.sum(defined)


def _freqspace(n: int) -> np.ndarray:
  """MATLAB freqspace(n) frequencies in FFT (unshifted) order: fftfreq(n) * 2."""
  return np.fft.fftfreq(n) * 2.0


def _qcb_masked_contrast(x255: jnp.ndarray) -> jnp.ndarray:
  """Chen-Blum masked local contrast C' = k C^p / (h C^q + Z) of a [..., H, W] image on 0..255."""
  f0, f1, a_csf = QCB_CSF
  k, h, p, q, z = QCB_CONTRAST
  hh, ww = x255.shape[-2:]
  u = _freqspace(ww)[None, :] * (ww / 30.0)
  v = _freqspace(hh)[:, None] * (hh / 30.0)
  r = np.sqrt(u * u + v * v)
  sd = (np.exp(-(r / f0) ** 2) - a_csf * np.exp(-(r / f1) ** 2)).astype(np.float32)
  filtered = jnp.fft.ifft2(jnp.fft.fft2(x255) * sd)  # Complex: the even-size CSF is not symmetric.
  xr, xi = jnp.real(filtered), jnp.imag(filtered)
  t = np.arange(-15, 16, dtype=np.float64)

  def gauss(v, sigma):  # filter2 with the unnormalised 31 x 31 Gaussian, zero padding.
    g = np.exp(-t * t / (2 * sigma * sigma)) / math.sqrt(2 * math.pi * sigma * sigma)
    return filters.separable_correlate(v, g.astype(np.float32), g.astype(np.float32), 'constant')

  n1r, n1i, n2r, n2i = gauss(xr, 2.0), gauss(xi, 2.0), gauss(xr, 4.0), gauss(xi, 4.0)
  den = n2r * n2r + n2i * n2i
  ok = den > 0
  # Complex ratio (n1 / n2) - 1, then its modulus (the toolbox's abs of a complex contrast).
  ratio_r = (n1r * n2r + n1i * n2i) / jnp.where(ok, den, 1.0) - 1.0
  ratio_i = (n1i * n2r - n1r * n2i) / jnp.where(ok, den, 1.0)
  c = jnp.where(ok, jnp.sqrt(ratio_r * ratio_r + ratio_i * ratio_i), 0.0)
  return k * c ** p / (h * c ** q + z)


def qcb_n(fused: jnp.ndarray, sources: jnp.ndarray) -> jnp.ndarray:
  """Chen-Blum metric for N >= 2 stacked sources: saliency lambda_n = C'_n^2 / sum_k C'_k^2,
  Q = mean(sum_n lambda_n Q_nF); `qcb` for N = 2."""
  sources = _as_sources(sources)
  cf = _qcb_masked_contrast(_minmax_quantise255(_mfifb_grey255(fused)).astype(jnp.float32))
  grey = jnp.stack([_minmax_quantise255(_mfifb_grey255(s)) for s in sources]).astype(jnp.float32)
  cs = _qcb_masked_contrast(grey)  # [N, H, W]
  lo, hi = jnp.minimum(cs, cf), jnp.maximum(cs, cf)
  pres = jnp.where(hi > 0, lo / jnp.where(hi > 0, hi, 1.0), 1.0)  # Q_nF.
  sal = cs * cs
  tot = jnp.sum(sal, axis=0)
  lam = jnp.where(tot > 0, sal / jnp.where(tot > 0, tot, 1.0), 1.0 / sources.shape[0])
  return jnp.mean(jnp.sum(lam * pres, axis=0))


def qcb(fused: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Chen-Blum human-perception fusion metric Q_CB (Image Vis. Comput. 27 (2009) 1421-1432).

  As Z. Liu's metricChenBlum.m (MFIFB): `rgb2gray` grey stretched to 0..255 and rounded (normalize1);
  contrast sensitivity filtering in the frequency domain with
  S(r) = exp(-(r / 15.3870)^2) - 0.7622 exp(-(r / 1.3456)^2), r the radial frequency of MATLAB
  `freqspace` scaled by (W / 30, H / 30); local contrast C = |G_2 * I / G_4 * I - 1| with unnormalised
  31 x 31 Gaussians of sigma 2 and 4 (zero padding); masked contrast C' = C^3 / (C^2 + 1e-4);
  preservation Q_XF = min(C'_X, C'_F) / max(C'_X, C'_F); saliency lambda_A = C'_A^2 / (C'_A^2 + C'_B^2);
  Q_CB = mean(lambda_A Q_AF + lambda_B Q_BF).

  Where the toolbox divides 0 by 0 this takes: contrast 0 where the sigma-4 response is 0,
  Q_XF = 1 where both contrasts are 0, lambda = 1/2 where both source contrasts are 0.

  Args:
    fused, a, b: [H, W, C] in [0, 1], same shape.

  Returns:
    float32 scalar in [0, 1]; 1 when F = A = B.
  """
  return qcb_n(fused, jnp.stack([a, b]))


def spatial_frequency(image: jnp.ndarray) -> jnp.ndarray:
  """Spatial frequency SF (Eskicioglu and Fisher 1995; MFIFB), `rgb2gray` grey x 255.

  SF = sqrt(RF + CF), RF = sum of squared horizontal neighbour differences / (H W), CF likewise
  vertically (both divided by H W, as the toolbox). A ramp of slope s per pixel along x scores
  s sqrt((W - 1) / W).
  """
  x = _mfifb_grey255(image)
  hw = x.shape[0] * x.shape[1]
  rf = jnp.sum(jnp.square(x[:, 1:] - x[:, :-1])) / hw
  cf = jnp.sum(jnp.square(x[1:, :] - x[:-1, :])) / hw
  return jnp.sqrt(rf + cf)


def _matlab_gradient(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """MATLAB/NumPy `gradient` with unit spacing: central differences inside, one-sided at the ends."""
  return jnp.gradient(x, axis=axis)


def average_gradient(image: jnp.ndarray) -> jnp.ndarray:
  """Average gradient AG (MFIFB; Cui et al., Opt. Commun. 341 (2015) 199-209), `rgb2gray` grey x 255.

  AG = sum over all H x W pixels of sqrt((gx^2 + gy^2) / 2) / ((H - 1)(W - 1)), gx, gy from MATLAB
  `gradient` (central differences inside, one-sided at the borders), as the toolbox computes it.
  """
  x = _mfifb_grey255(image)
  gx, gy = _matlab_gradient(x, 1), _matlab_gradient(x, 0)
  return jnp.sum(jnp.sqrt((gx * gx + gy * gy) / 2.0)) / ((x.shape[0] - 1) * (x.shape[1] - 1))


def entropy(image: jnp.ndarray) -> jnp.ndarray:
  """Entropy EN (bits) of the 256-level grey histogram (MFIFB), `rgb2gray` grey x 255 rounded."""
  return _entropy_bits(_histogram(_quantise255(_mfifb_grey255(image)), 256))


def standard_deviation(image: jnp.ndarray) -> jnp.ndarray:
  """Standard deviation SD (MFIFB): population std of the `rgb2gray` grey x 255 image."""
  x = _mfifb_grey255(image)
  x = x - x[0, 0]  # Shift first (exact for a flat image; the std is shift invariant).
  return jnp.sqrt(jnp.mean(jnp.square(x - jnp.mean(x))))


def reference_free_metrics(fused: jnp.ndarray, sources: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """The MFIFB no-reference metrics of a fused image.

  Args:
    fused: [H, W, C] in [0, 1].
    sources: [N, H, W, C] in [0, 1], N >= 2 stacked source images.

  Returns:
    dict with keys 'Qabf', 'NMI', 'Qy', 'Qcb' (fusion quality against the sources; for N > 2 Qabf, NMI
    and Qcb use their N-source forms `qabf_n`, `nmi_n`, `qcb_n`, and Qy, defined for two sources
    only, is NaN) and 'SF', 'AG', 'EN', 'SD' (of the fused image alone). Float32 scalars.
  """
  sources = _as_sources(sources)
  if sources.shape[0] == 2:
    q_y = qy(fused, sources[0], sources[1])
  else:
    q_y = jnp.asarray(jnp.nan, jnp.float32)
  return {'Qabf': qabf_n(fused, sources), 'NMI': nmi_n(fused, sources), 'Qy': q_y,
          'Qcb': qcb_n(fused, sources), 'SF': spatial_frequency(fused),
          'AG': average_gradient(fused), 'EN': entropy(fused), 'SD': standard_deviation(fused)}
