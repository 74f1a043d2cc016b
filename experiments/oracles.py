"""Fusions of a focal stack by simple per-pixel rules, and ground-truth oracles (for `x1_ceiling.py`).

Flag-free, so that tests can import it. Every function takes a stack [N, H, W, C] of registered inputs
in [0, 1] (float32) and returns one image [H, W, C]. The `oracle_*` functions use the truth and are
bounds for analysis, never methods.
"""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np

from dfp_jax import filters


def select(stack: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Per-pixel selection: stack [N, H, W, C], index [H, W] -> [H, W, C]."""
  return np.take_along_axis(stack, index[None, ..., None], axis=0)[0]


def _blur(planes: np.ndarray, sigma: float) -> np.ndarray:
  return np.stack([cv2.GaussianBlur(np.ascontiguousarray(p, np.float32), (0, 0), sigma) for p in planes])


def feathered(stack: np.ndarray, maps: np.ndarray, sigma: float) -> np.ndarray:
  """The fusion by decision maps [N, H, W] smoothed by a Gaussian of sigma (renormalised to sum 1)."""
  soft = _blur(maps, sigma)
  soft /= soft.sum(0, keepdims=True)
  return np.einsum('nhw,nhwc->hwc', soft, stack)


def laplacian_selection(stack: np.ndarray, sigma: float) -> np.ndarray:
  """Per pixel, the input with the largest |4-neighbour Laplacian| of luma, smoothed by a Gaussian of
  sigma: the focus cue of DFP's joint-gradient loss (max |Lap| over the inputs) used as a rule."""
  lap = np.abs(np.asarray(filters.laplacian(filters.luma(jnp.asarray(stack)))))
  return select(stack, _blur(lap, sigma).argmax(0))


def oracle_pixel(stack: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Per pixel, the input with the smallest RGB squared error against the truth."""
  return select(stack, ((stack - gt[None]) ** 2).sum(-1).argmin(0))


def oracle_window(stack: np.ndarray, gt: np.ndarray, sigma: float) -> np.ndarray:
  """Per pixel, the input whose squared error against the truth, smoothed by a Gaussian of sigma, is
  smallest (selection that decides per region)."""
  return select(stack, _blur(((stack - gt[None]) ** 2).sum(-1), sigma).argmin(0))


def oracle_blend(stack: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Per pixel, the convex combination of the N inputs nearest the truth (squared error over C).

  Exact by enumeration of the simplex's faces: on each subset S of inputs the affine least-squares fit
  (weights summing to 1) is kept where its weights are all >= 0, and the best kept fit wins. The
  nearest point of the inputs' convex hull is a positive combination of at most C + 1 affinely
  independent inputs (Caratheodory), whose affine fit is unique, so subsets of up to C + 1 inputs
  suffice. Singletons are the inputs themselves: never below `oracle_pixel`.
  """
  n, h, w, c = stack.shape
  x = stack.reshape(n, h * w, c).astype(np.float64)
  g = gt.reshape(h * w, c).astype(np.float64)
  best = np.full(h * w, np.inf)
  out = np.zeros((h * w, c))
  for mask in range(1, 2 ** n):
    idx = [i for i in range(n) if mask >> i & 1]
    if len(idx) > c + 1:
      continue
    last = x[idx[-1]]
    if len(idx) == 1:
      wts, fit = np.ones((h * w, 1)), last
    else:
      d = np.stack([x[i] - last for i in idx[:-1]], axis=-1)  # [P, C, k - 1]
      a = np.einsum('pkc,pc->pk', np.linalg.pinv(d, rcond=1e-10), g - last)
      wts = np.concatenate([a, 1.0 - a.sum(-1, keepdims=True)], axis=-1)
      fit = last + np.einsum('pck,pk->pc', d, a)
    err = np.where(np.all(wts >= -1e-9, axis=-1), ((fit - g) ** 2).sum(-1), np.inf)
    better = err < best
    best = np.where(better, err, best)
    out[better] = fit[better]
  return out.reshape(h, w, c).astype(np.float32)
