"""Small deterministic test scenes shared by several test files."""

import cv2
import numpy as np


def left_right_pair(h: int, w: int, seed: int, texture_sigma: float, blur_ksize: int, blur_sigma: float):
  """A random texture (Gaussian-smoothed with `texture_sigma`) and a left/right multi-focus pair of it:
  A sharp on the left half, B sharp on the right, the other half blurred. Returns (sharp, a, b), float32."""
  rng = np.random.default_rng(seed)
  base = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (3, 3), texture_sigma)
  blur = cv2.GaussianBlur(base, (blur_ksize, blur_ksize), blur_sigma)
  a, b = base.copy(), base.copy()
  a[:, w // 2:] = blur[:, w // 2:]
  b[:, :w // 2] = blur[:, :w // 2]
  return base, a, b
