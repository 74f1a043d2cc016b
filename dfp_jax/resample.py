"""Resampling: the fixed Lanczos-2 downsampler of the losses and bicubic / bilinear upsampling
(DFP_METHOD.md section 7).

* `lanczos2_kernel1d(s)`: deep-image-prior's "lanczos2" at phase 0.5: 4s taps at offsets
  +-(0.5, 1.5, ..., 2s - 0.5), k(x) = sinc(x / s) sinc(x / (2 s)), normalised to sum 1. The 2-D kernel is
  the outer product (separable), applied per channel as a stride-s correlation after replicate padding of
  (4s - s) / 2 on each side, so an (sH, sW) image maps to exactly (H, W); computed in polyphase form
  (sums of shifted slices, no convolution). s = 1 is the identity; odd s > 1 is refused.
* `bicubic_upsample`: OpenCV `INTER_CUBIC` (Keys cubic with a = -0.75, half-pixel centres, replicated
  border), as separable interpolation matrices; used for the network input z and the baselines.
* `bilinear_up2`: exact x2 bilinear upsampling with half-pixel centres (PyTorch
  `align_corners=False`, `jax.image.resize(..., 'bilinear')`) written with fixed 0.25/0.75 weights, the
  decoder's upsampling.

* `area_downsample`: block means (OpenCV `INTER_AREA` for integer factors), NumPy or jnp: how the
  benchmarks make low-resolution inputs, how the light-field loader downsamples views, and the losses'
  `degradation='area'` (`downsample` picks the losses' operator by name).

All functions take [H, W, C] images (or [..., H, W, C]) and are pure (jnp, or NumPy for NumPy input).
"""

from __future__ import annotations

import functools

import numpy as np
import jax.numpy as jnp
from jax import lax


@functools.lru_cache(maxsize=None)
def lanczos2_kernel1d(factor: int) -> np.ndarray:
  """1-D Lanczos-2 kernel of the downsampler for an integer factor >= 1: 4 factor taps, sum 1."""
  if factor < 1:
    raise ValueError(f'factor must be >= 1, got {factor}')
  offsets = np.arange(4 * factor, dtype=np.float64) - (2 * factor - 0.5)  # +-0.5, ..., +-(2s-0.5)
  x = offsets / factor
  k = np.sinc(x) * np.sinc(x / 2.0)
  return (k / k.sum()).astype(np.float32)


def _lanczos2_down_axis(x: jnp.ndarray, k: np.ndarray, factor: int, axis: int) -> jnp.ndarray:
  """One separable pass along `axis` (length s n): out[i] = sum_t k[t] xp[s i + t], t < 4s, with xp
  the input replicate-padded by 3s/2 on each side, computed in polyphase form: xp reshaped to
  [n + 3, s] along the axis, so xp[s i + t] = b[i + q, r] for t = q s + r, and the output is a sum of
  4s scaled slices of b. Every term is an elementwise operation, so XLA fuses the pass into one loop
  over the data (and its gradient into another), an order of magnitude cheaper on XLA:CPU than the
  same correlation as a depthwise stride-s convolution, whose gradient XLA:CPU computes slowly. Same
  sums in another order (max difference 2e-7)."""
  n = x.shape[axis] // factor
  pad = 3 * factor // 2
  widths = [(0, 0)] * x.ndim
  widths[axis] = (pad, pad)
  xp = jnp.pad(x, widths, mode='edge')
  shape = list(xp.shape)
  shape[axis:axis + 1] = [n + 3, factor]
  b = xp.reshape(shape)
  out = None
  for q in range(4):
    block = lax.slice_in_dim(b, q, q + n, axis=axis)
    for r in range(factor):
      term = float(k[q * factor + r]) * lax.index_in_dim(block, r, axis=axis + 1, keepdims=False)
      out = term if out is None else out + term
  return out


def lanczos2_downsample(image: jnp.ndarray, factor: int) -> jnp.ndarray:
  """Downsamples [..., sH, sW, C] by an integer factor (1 or even) to [..., H, W, C] with the
  Lanczos-2 kernel (separable: rows, then columns)."""
  if factor == 1:
    return image
  if factor < 1 or factor % 2:
    raise ValueError(f'the Lanczos-2 downsampler takes a factor of 1 or an even factor, got {factor}')
  hh, ww = image.shape[-3], image.shape[-2]
  if hh % factor or ww % factor:
    raise ValueError(f'image size {hh}x{ww} is not divisible by the factor {factor}')
  k = lanczos2_kernel1d(factor)
  nd = image.ndim
  return _lanczos2_down_axis(_lanczos2_down_axis(image, k, factor, nd - 3), k, factor, nd - 2)


@functools.lru_cache(maxsize=None)
def cubic_matrix(n_in: int, factor: int, a: float = -0.75) -> np.ndarray:
  """[n_in * factor, n_in] interpolation matrix of OpenCV's INTER_CUBIC (replicated border)."""
  n_out = n_in * factor
  m = np.zeros((n_out, n_in), np.float64)

  def w(t):
    t = abs(t)
    if t <= 1:
      return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
      return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0

  for i in range(n_out):
    src = (i + 0.5) / factor - 0.5
    i0 = int(np.floor(src))
    frac = src - i0
    for k in range(-1, 3):
      m[i, min(max(i0 + k, 0), n_in - 1)] += w(k - frac)
  return m.astype(np.float32)


def bicubic_upsample(image: jnp.ndarray, factor: int, a: float = -0.75) -> jnp.ndarray:
  """Upsamples [..., H, W, C] by an integer factor with OpenCV-style bicubic interpolation.

  Values are not clipped (bicubic overshoots a little at edges, as cv2.resize on float input does).
  """
  if factor == 1:
    return image
  h, w = image.shape[-3], image.shape[-2]
  my = jnp.asarray(cubic_matrix(h, factor, a))
  mx = jnp.asarray(cubic_matrix(w, factor, a))
  hp = lax.Precision.HIGHEST
  out = jnp.einsum('ih,...hwc->...iwc', my, image, precision=hp)
  return jnp.einsum('jw,...iwc->...ijc', mx, out, precision=hp)


def bilinear_up2(x: jnp.ndarray) -> jnp.ndarray:
  """x2 bilinear upsampling of [..., H, W, C] with half-pixel centres and clamped edges."""

  def up_axis(v, axis):
    n = v.shape[axis]
    prev = jnp.concatenate([lax.slice_in_dim(v, 0, 1, axis=axis),
                            lax.slice_in_dim(v, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([lax.slice_in_dim(v, 1, n, axis=axis),
                           lax.slice_in_dim(v, n - 1, n, axis=axis)], axis=axis)
    even = 0.75 * v + 0.25 * prev
    odd = 0.75 * v + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(v.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)

  nd = x.ndim
  return up_axis(up_axis(x, nd - 3), nd - 2)


def nearest_up2(x: jnp.ndarray) -> jnp.ndarray:
  """x2 nearest-neighbour upsampling of [..., H, W, C]."""
  nd = x.ndim
  return jnp.repeat(jnp.repeat(x, 2, axis=nd - 3), 2, axis=nd - 2)


def area_downsample(image, factor: int):
  """Mean over factor x factor blocks of an image [..., H, W, C] (OpenCV's `INTER_AREA` for an integer
  factor; tested); the last H % factor rows and W % factor columns are dropped first. A NumPy array
  gives NumPy (float32, accumulated in float64: the benchmarks' and the light-field loader's
  degradation); a jnp array gives jnp (differentiable: the losses' `degradation='area'`)."""
  if factor == 1:
    return image.astype(np.float32) if isinstance(image, np.ndarray) else image
  *lead, h, w, c = image.shape
  h2, w2 = h // factor, w // factor
  blocks = image[..., :h2 * factor, :w2 * factor, :].reshape(*lead, h2, factor, w2, factor, c)
  if isinstance(image, np.ndarray):
    return blocks.mean(axis=(-4, -2), dtype=np.float64).astype(np.float32)
  return jnp.mean(blocks, axis=(-4, -2))


# The degradation the losses model (the network's output, downsampled by it, is compared with the
# inputs): Lanczos-2 (deep image prior's and the papers') or the sensor-like block mean.
DEGRADATIONS = {'lanczos2': lanczos2_downsample, 'area': area_downsample}


def downsample(image, factor: int, kind: str = 'lanczos2'):
  """`image` [..., sH, sW, C] brought to [..., H, W, C] by the named degradation (DEGRADATIONS)."""
  return DEGRADATIONS[kind](image, factor)
