"""Small image filters in jnp shared by the focus measure, losses, metrics and light-field code.

Conventions used across `dfp_jax`:
  * An image is a float32 array of shape [H, W, C] with values in [0, 1]; C is 3 (RGB) or 1 (grey).
  * A single-channel map (luma, decision map, focus measure) is [H, W].
  * "reflect" padding is OpenCV's BORDER_REFLECT_101 (`jnp.pad(mode='reflect')`: the edge pixel is not
    repeated), the default border of `cv2.filter2D` and `cv2.GaussianBlur`.
  * Filters are correlations, as in `cv2.filter2D`; `convolve2d` flips the kernel first.

Everything here is pure and shape-static, so it jits and vmaps.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jax import lax

# BT.601 studio-swing luma with R, G, B in [0, 1], as the DFP authors' code computes it
# (DFP_METHOD.md section 4). Equals 16/255 + 219/255 * (0.299 R + 0.587 G + 0.114 B) up to the
# rounding of the published coefficients.
LUMA_WEIGHTS = (0.257, 0.504, 0.098)
LUMA_OFFSET = 0.0625

LAPLACIAN_4 = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], np.float32)


def luma(image: jnp.ndarray) -> jnp.ndarray:
  """Luma Y of an [..., H, W, C] image in [0, 1]; returns [..., H, W].

  RGB uses the BT.601 studio-swing weights of the DFP code (Y = 0.257 R + 0.504 G + 0.098 B + 0.0625).
  A single-channel image is already grey: it is returned as is (no offset), so that grey inputs fuse
  with the same focus decisions whatever their channel count.
  """
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise TypeError(f'luma expects a floating-point image in [0, 1], got dtype {image.dtype}')
  if image.shape[-1] == 1:
    return image[..., 0]
  if image.shape[-1] != 3:
    raise ValueError(f'luma expects 1 or 3 channels, got shape {image.shape}')
  w = jnp.asarray(LUMA_WEIGHTS, image.dtype)
  return jnp.tensordot(image, w, axes=[[-1], [0]]) + LUMA_OFFSET


def gaussian_sigma_from_size(ksize: int) -> float:
  """OpenCV's rule for the sigma of a ksize Gaussian when sigma is not given."""
  return 0.3 * ((ksize - 1) * 0.5 - 1.0) + 0.8


def gaussian_kernel1d(ksize: int, sigma: float | None = None) -> np.ndarray:
  """Normalised 1-D Gaussian of odd length `ksize` (float32, NumPy: a compile-time constant)."""
  if ksize < 1 or ksize % 2 == 0:
    raise ValueError(f'Gaussian kernel size must be odd and positive, got {ksize}')
  if sigma is None or sigma <= 0:
    sigma = gaussian_sigma_from_size(ksize)
  x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
  k = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return (k / k.sum()).astype(np.float32)


def _pad2d(x: jnp.ndarray, ph: tuple[int, int], pw: tuple[int, int], mode: str, cval: float = 0.0):
  """Pads the two trailing axes of x ([..., H, W])."""
  pads = [(0, 0)] * (x.ndim - 2) + [ph, pw]
  if mode == 'constant':
    return jnp.pad(x, pads, mode='constant', constant_values=cval)
  return jnp.pad(x, pads, mode=mode)


def correlate2d(x: jnp.ndarray, kernel, mode: str = 'reflect') -> jnp.ndarray:
  """'Same'-size 2-D correlation of x [..., H, W] with a small kernel [kh, kw] (cv2.filter2D).

  The kernel may be a traced array (e.g. an estimated blur kernel); its shape must be static.
  Anchor at the kernel centre (kh, kw odd).
  """
  kernel = jnp.asarray(kernel, x.dtype)
  kh, kw = kernel.shape
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f'kernel size must be odd, got {kernel.shape}')
  lead = x.shape[:-2]
  h, w = x.shape[-2:]
  xp = _pad2d(x, (kh // 2, kh // 2), (kw // 2, kw // 2), mode)
  xp = xp.reshape((-1, 1) + xp.shape[-2:])  # [B, 1, H+, W+]
  out = lax.conv_general_dilated(
      xp, kernel[None, None], window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NCHW', 'OIHW', 'NCHW'), precision=lax.Precision.HIGHEST)
  return out.reshape(lead + (h, w))


def convolve2d(x: jnp.ndarray, kernel, mode: str = 'reflect') -> jnp.ndarray:
  """'Same'-size 2-D convolution (kernel flipped, then correlated)."""
  kernel = jnp.asarray(kernel)
  return correlate2d(x, kernel[::-1, ::-1], mode)


def separable_correlate(x: jnp.ndarray, ky, kx, mode: str = 'reflect') -> jnp.ndarray:
  """Correlation of x [..., H, W] with the outer product ky kx^T, done as two 1-D passes."""
  ky = jnp.asarray(ky, x.dtype)
  kx = jnp.asarray(kx, x.dtype)
  y = correlate2d(x, ky[:, None], mode)
  return correlate2d(y, kx[None, :], mode)


def gaussian_blur(x: jnp.ndarray, ksize: int, sigma: float | None = None) -> jnp.ndarray:
  """cv2.GaussianBlur(x, (ksize, ksize), sigma) with BORDER_REFLECT_101, on [..., H, W].

  With sigma None or <= 0 the sigma follows OpenCV's size rule (note: OpenCV itself uses fixed
  tables for ksize <= 7 when sigma is 0; pass the sigma explicitly to cv2 to compare).
  """
  k = gaussian_kernel1d(ksize, sigma)
  return separable_correlate(x, k, k, 'reflect')


def box_mean(x: jnp.ndarray, ksize: int, mode: str = 'reflect') -> jnp.ndarray:
  """Mean over a ksize x ksize window (cv2.blur with BORDER_REFLECT_101), odd or even ksize.

  For an even ksize the window spans [i - ksize/2, i + ksize/2 - 1], OpenCV's default anchor.
  """
  if ksize < 1:
    raise ValueError(f'box size must be >= 1, got {ksize}')
  if ksize == 1:
    return x
  before, after = ksize // 2, (ksize - 1) // 2
  xp = _pad2d(x, (before, after), (before, after), mode)
  window = (1,) * (x.ndim - 2) + (ksize, ksize)
  total = lax.reduce_window(xp, jnp.asarray(0, x.dtype), lax.add, window, (1,) * x.ndim, 'VALID')
  return total / (ksize * ksize)


def laplacian(x: jnp.ndarray) -> jnp.ndarray:
  """4-neighbour Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of x [..., H, W], reflect border.

  `correlate2d(x, LAPLACIAN_4)` written as four shifted slices of the padded array (one fused loop,
  and one for its gradient), several times cheaper on XLA:CPU than a single-channel convolution where
  the joint-gradient loss takes it every step (docs/design.md "Runtime choices"). Same result
  up to float rounding."""
  xp = _pad2d(x, (1, 1), (1, 1), 'reflect')
  return (xp[..., :-2, 1:-1] + xp[..., 2:, 1:-1] + xp[..., 1:-1, :-2] + xp[..., 1:-1, 2:]) - 4.0 * x


def _window_reduce(x: jnp.ndarray, ksize: int, init, op, pad_value) -> jnp.ndarray:
  pads = [(0, 0)] * (x.ndim - 2) + [(ksize // 2, (ksize - 1) // 2)] * 2
  xp = jnp.pad(x, pads, mode='constant', constant_values=pad_value)
  window = (1,) * (x.ndim - 2) + (ksize, ksize)
  return lax.reduce_window(xp, jnp.asarray(init, x.dtype), op, window, (1,) * x.ndim, 'VALID')


def dilate(x: jnp.ndarray, ksize: int) -> jnp.ndarray:
  """Grey/binary dilation by a ksize x ksize square (cv2.dilate with its default border:
  pixels outside the image never win). Anchor at the centre, as OpenCV's default anchor."""
  if ksize <= 1:
    return x
  low = jnp.finfo(x.dtype).min if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
  return _window_reduce(x, ksize, low, lax.max, low)


def erode(x: jnp.ndarray, ksize: int) -> jnp.ndarray:
  """Grey/binary erosion by a ksize x ksize square (cv2.erode with its default border)."""
  if ksize <= 1:
    return x
  high = jnp.finfo(x.dtype).max if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).max
  return _window_reduce(x, ksize, high, lax.min, high)


def sobel(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Sobel derivatives (gx, gy) of x [..., H, W], as cv2.Sobel(ksize=3) with BORDER_REFLECT_101."""
  d = np.array([-1.0, 0.0, 1.0], np.float32)
  s = np.array([1.0, 2.0, 1.0], np.float32)
  gx = separable_correlate(x, s, d, 'reflect')
  gy = separable_correlate(x, d, s, 'reflect')
  return gx, gy
