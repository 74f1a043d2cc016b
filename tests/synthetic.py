"""Small deterministic test scenes shared by several test files."""

import os

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


def write_light_field(folder, d_left=-1, d_right=1, seed=0, size=32, grid=5):
  """grid x grid uint8 views syn_RR_CC.png of a two-depth scene (left half at disparity d_left, right
  half at d_right; the centre view is the all-in-focus answer); returns the texture (uint8, RGB)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  tex = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
  tex = cv2.GaussianBlur(tex, (3, 3), 0.7)  # Some spatial correlation, still plenty of detail.
  left = (np.arange(size) < size // 2)[None, :, None]
  c0 = grid // 2
  for r in range(grid):
    for c in range(grid):
      dr, dc = r - c0, c - c0
      a = np.roll(tex, (-d_left * dr, -d_left * dc), axis=(0, 1))
      b = np.roll(tex, (-d_right * dr, -d_right * dc), axis=(0, 1))
      view = np.where(left, a, b)
      assert cv2.imwrite(os.path.join(folder, f'syn_{r:02d}_{c:02d}.png'), view[..., ::-1])
  return tex
