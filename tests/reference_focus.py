"""NumPy / OpenCV / SciPy reference of the DoubleReblur focus measure (DFP_METHOD.md section 4).

Written from the spec in the docstring of `dfp_jax/focus.py`, independently of its jnp code, and used
by `tests/test_focus.py` as the reference the jnp version is checked against:

  * kernel estimate in float64 with numpy.fft (regularised division, Gaussian low-pass window over
    np.fft.fftfreq, fftshift, centred (2r-1)^2 crop, abs, normalise to sum 1);
  * first reblur as a convolution with cv2.filter2D (flipped kernel, BORDER_REFLECT_101);
  * second reblur with cv2.GaussianBlur, sigma passed explicitly from OpenCV's size rule (OpenCV uses
    fixed tables, not the rule, when sigma = 0 and ksize <= 7);
  * threshold, closing with cv2.dilate / cv2.erode (square kernels, default border);
  * largest 8-connected region with cv2.connectedComponentsWithStats, holes filled with
    scipy.ndimage.binary_fill_holes (4-connected background reachability from the border);
  * the N > 2 argmax rule (per-input response against the mean of the others, cv2.blur box mean).

Everything takes and returns NumPy arrays; maps are boolean.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage


def opencv_sigma(ksize: int) -> float:
  """Sigma OpenCV derives from a Gaussian size (getGaussianKernel docs)."""
  return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def kernel_estimate(y_a, y_b, radius=5, wiener_eps=1e-2, lowpass_sigma=0.25) -> np.ndarray:
  """h with y_b ~ y_a (*) h, float64: Wiener-style division, low-pass window, centred crop."""
  y_a = np.asarray(y_a, np.float64)
  y_b = np.asarray(y_b, np.float64)
  rows, cols = y_a.shape
  spec_a = np.fft.fft2(y_a)
  spec_b = np.fft.fft2(y_b)
  power_a = np.abs(spec_a) ** 2
  h_spec = np.conj(spec_a) * spec_b / (power_a + wiener_eps * power_a.mean())
  fy, fx = np.meshgrid(np.fft.fftfreq(rows), np.fft.fftfreq(cols), indexing='ij')
  lowpass = np.exp(-(fy ** 2 + fx ** 2) / (2 * lowpass_sigma ** 2))
  spatial = np.fft.fftshift(np.fft.ifft2(h_spec * lowpass).real)
  # After fftshift the zero displacement sits at (rows // 2, cols // 2).
  half = radius - 1
  crop = spatial[rows // 2 - half:rows // 2 + half + 1, cols // 2 - half:cols // 2 + half + 1]
  crop = np.abs(crop)
  return crop / crop.sum()


def first_reblur(y, kernel) -> tuple[np.ndarray, np.ndarray]:
  """(y (*) kernel, |y - y (*) kernel|) with cv2.filter2D as a convolution."""
  y = np.asarray(y, np.float64)
  reblurred = cv2.filter2D(y, -1, cv2.flip(np.asarray(kernel, np.float64), -1),
                           borderType=cv2.BORDER_REFLECT_101)
  return reblurred, np.abs(y - reblurred)


def second_reblur(d1, kg: int) -> np.ndarray:
  """|d1 - G_kg(d1)| with OpenCV's Gaussian (sigma from the size rule, given explicitly)."""
  d1 = np.asarray(d1, np.float64)
  sigma = opencv_sigma(kg)
  return np.abs(d1 - cv2.GaussianBlur(d1, (kg, kg), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REFLECT_101))


def closing(mask, kd: int, ke: int) -> np.ndarray:
  """Dilate with a kd x kd square, then erode with a ke x ke square (OpenCV default borders)."""
  m = np.asarray(mask).astype(np.uint8)
  m = cv2.dilate(m, np.ones((kd, kd), np.uint8))
  m = cv2.erode(m, np.ones((ke, ke), np.uint8))
  return m > 0


def largest_component(mask) -> np.ndarray:
  """Largest 8-connected region of a boolean mask (empty mask -> empty). Ties (not expected on real
  maps) are broken as the spec of `dfp_jax.focus.largest_component` says: the region holding the later
  pixel in raster order wins."""
  mask = np.asarray(mask, bool)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
  if count <= 1:
    return np.zeros_like(mask)
  areas = stats[1:, cv2.CC_STAT_AREA]
  candidates = np.flatnonzero(areas == areas.max()) + 1
  if len(candidates) > 1:
    flat = labels.ravel()
    last_pixel = [np.flatnonzero(flat == c).max() for c in candidates]
    best = candidates[int(np.argmax(last_pixel))]
  else:
    best = candidates[0]
  return labels == best


def fill_holes(mask) -> np.ndarray:
  return ndimage.binary_fill_holes(np.asarray(mask, bool))


class Steps(NamedTuple):
  kernel: np.ndarray
  reblurred: np.ndarray
  d1: np.ndarray
  s: np.ndarray
  thresholded: np.ndarray
  closed: np.ndarray
  decision: np.ndarray
  margin: np.ndarray  # What step 4 compares with 0: s - t, or box(s_A) - box(s_B) for 'compare'.


def double_reblur_steps(y_a, y_b, kg=5, kd=3, ke=3, t=0.01, f=1, radius=5, wiener_eps=1e-2,
                        lowpass_sigma=0.25, rule='threshold') -> Steps:
  """The six DoubleReblur steps for lumas y_a, y_b; decision is True where A is in focus.

  rule 'threshold': s_A > t (the paper). rule 'compare': B's response s_B is computed the same way
  (kernel blurring B into A, reblur of B), and A wins where cv2.blur(s_A) >= cv2.blur(s_B) (kd x kd)."""
  kernel = kernel_estimate(y_a, y_b, radius, wiener_eps, lowpass_sigma)
  reblurred, d1 = first_reblur(y_a, kernel)
  s = second_reblur(d1, kg)
  if rule == 'compare':
    _, d1_b = first_reblur(y_b, kernel_estimate(y_b, y_a, radius, wiener_eps, lowpass_sigma))
    s_b = second_reblur(d1_b, kg)
    box = lambda x: cv2.blur(x, (kd, kd), borderType=cv2.BORDER_REFLECT_101)
    margin = box(s) - box(s_b)
    thresholded = margin >= 0
  else:
    margin = s - t
    thresholded = margin > 0
  closed = closing(thresholded, kd, ke)
  decision = fill_holes(largest_component(closed)) if f == 1 else closed
  return Steps(kernel, reblurred, d1, s, thresholded, closed, decision, margin)


def params_kwargs(params) -> dict:
  """Keyword arguments of `double_reblur_steps` from a dfp_jax DoubleReblurParams."""
  return dict(kg=params.kg, kd=params.kd, ke=params.ke, t=params.t, f=params.f, radius=params.radius,
              wiener_eps=params.wiener_eps, lowpass_sigma=params.lowpass_sigma, rule=params.rule)


def focus_measures(lumas, kg=5, kd=3, radius=5, wiener_eps=1e-2, lowpass_sigma=0.25, sigma=0.0) -> np.ndarray:
  """[N, H, W]: input i's second-reblur response against the mean of the other inputs, averaged over a
  Gaussian of `sigma` (cv2.GaussianBlur with its own size rule) or, with sigma 0, over a kd x kd box
  (cv2.blur); BORDER_REFLECT_101 either way."""
  lumas = np.asarray(lumas, np.float64)
  out = []
  for i in range(lumas.shape[0]):
    others = np.delete(lumas, i, axis=0).mean(axis=0)
    kernel = kernel_estimate(lumas[i], others, radius, wiener_eps, lowpass_sigma)
    _, d1 = first_reblur(lumas[i], kernel)
    s = second_reblur(d1, kg)
    if sigma > 0:
      out.append(cv2.GaussianBlur(s, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101))
    else:
      out.append(cv2.blur(s, (kd, kd), borderType=cv2.BORDER_REFLECT_101))
  return np.stack(out)


def decision_index(lumas, **kwargs) -> np.ndarray:
  """[H, W] index of the input in focus (N > 2 rule): argmax, ties to the lower index."""
  return np.argmax(focus_measures(lumas, **kwargs), axis=0)
