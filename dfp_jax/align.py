"""Registration of hand-held focus brackets: every input is brought onto the reference input's grid.

Host-side NumPy + OpenCV (it runs once per scene, before the optimisation). Each input is registered to
a reference input with a global similarity (default), affine or homography model and resampled onto
the reference's grid; a validity mask says where the resampled input covers the reference grid (the
fusion excludes it elsewhere: `fusion.fuse(valid=...)`). Light fields are not registered (their views
are structured).

Conventions:
  * Images are float32 [H, W, C] (or [H, W]) in [0, 1]; estimation runs on their luma.
  * A transform `W` is a 3 x 3 matrix that maps a pixel of the *reference* grid (x, y, 1) to the
    position in the *moving* frame that lands there (pixel centres at integers, as in OpenCV):
    `aligned(x) = moving(W x)`, i.e. `cv2.warpPerspective(moving, W, flags=WARP_INVERSE_MAP)`, the
    convention of `cv2.findTransformECC`. The identity means "already aligned".
  * A validity mask is True where `W x` falls inside the moving frame; where it is False the pixel was
    brought in from outside that frame (its value is an edge replica).

Method (chosen by measurement: docs/benchmarks.md "Registration"): on a pyramid of the luma capped at
`max_side` pixels, a translation from phase correlation at the coarsest level, then ECC
(`cv2.findTransformECC`, `gauss_size` smoothing of both frames) coarse to fine; for the similarity
model the affine result is projected on the nearest similarity after each level. ECC maximises a
normalised correlation, which defocus differences between the frames do not bias, whereas feature
detectors move with the blur (SIFT + RANSAC only restarts a failed ECC). With mode 'auto' an input is
resampled only when its estimated motion exceeds `threshold_px` somewhere on the frame.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import cv2
import numpy as np

from dfp_jax import config as config_lib
from dfp_jax import errors

MODELS = ('translation', 'similarity', 'affine', 'homography')
MODES = ('auto', 'on', 'off')

# Defaults chosen by measurement (docs/benchmarks.md "Registration").
DEFAULT_MODEL = 'similarity'
DEFAULT_THRESHOLD_PX = 0.25  # 'auto' warps an input when it moves more than this anywhere on the frame.
DEFAULT_MAX_SIDE = 1024      # Estimation never runs above this many pixels on the long side.
DEFAULT_MIN_SIDE = 96        # Coarsest pyramid level (long side), where phase correlation initialises.
DEFAULT_GAUSS_SIZE = 5       # ECC's smoothing of both frames at every level.
ECC_ITERATIONS, ECC_EPS = 100, 1e-6  # ECC's stopping criteria at every level.
MIN_CORRELATION = 0.7        # ECC correlation below this: no correlation, refused.
MIN_OVERLAP = 0.5            # Fraction of the reference grid an input must cover after the warp.
MIN_AUTO_SIDE = 64           # 'auto' takes smaller frames as aligned: too few pixels to estimate a motion.
FLAT_LEVEL = 2e-3            # Band-pass RMS (in [0, 1] units) at the coarse level below which a frame is flat.


class RegistrationError(errors.InputError):
  """An input cannot be registered to the reference; the message names it and says why."""

  def __init__(self, index: int, name: str, reason: str):
    self.index = index
    self.name = name
    self.reason = reason
    super().__init__(f'{name}: cannot be aligned to the reference input: {reason}; if the inputs are '
                     'registered already, run with --align=off')


@dataclasses.dataclass
class Diagnostics:
  """What `estimate_transform` found besides the matrix."""
  correlation: float = float('nan')   # ECC correlation at the finest level (1 = identical up to gain).
  phase_response: float = float('nan')  # Peak response of the initial phase correlation.
  levels: int = 0                     # Pyramid levels used.
  scale: float = 1.0                  # Finest estimation level's size over the full size.
  flat: bool = False                  # No texture: taken as already aligned (identity).
  fallback: bool = False              # ECC was restarted from a feature-based estimate.
  seconds: float = 0.0


# ----------------------------------------------------------------------------------- geometry


def scale_matrix(sx: float, sy: float) -> np.ndarray:
  """Maps full-size pixel coordinates to those of an image resized by (sx, sy) (pixel centres kept, as
  `cv2.resize` does): x' = (x + 0.5) sx - 0.5."""
  return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def conjugate(w: np.ndarray, s: np.ndarray) -> np.ndarray:
  """The transform `w` (full-size coordinates) expressed in the coordinates that `s` maps to."""
  return s @ w @ np.linalg.inv(s)


def centred_similarity(shape, shift=(0.0, 0.0), angle_deg: float = 0.0, magnification: float = 0.0):
  """Reference -> moving transform of a frame magnified by (1 + magnification), rotated by angle_deg
  about the image centre and then shifted by shift = (dx, dy) pixels."""
  h, w = shape[:2]
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  a = math.radians(angle_deg)
  s = 1.0 + magnification
  r = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  m = np.eye(3)
  m[:2, :2] = r
  m[:2, 2] = np.array([cx, cy]) - r @ np.array([cx, cy]) + np.asarray(shift, float)
  return m


def apply(w: np.ndarray, pts: np.ndarray) -> np.ndarray:
  """Applies a 3 x 3 transform to [..., 2] points."""
  p = pts @ w[:2, :2].T + w[:2, 2]
  if w[2, 0] != 0.0 or w[2, 1] != 0.0 or w[2, 2] != 1.0:
    d = pts @ w[2, :2] + w[2, 2]
    p = p / d[..., None]
  return p


def _grid(shape, n: int = 65) -> np.ndarray:
  h, w = shape[:2]
  ys, xs = np.meshgrid(np.linspace(0, h - 1, n), np.linspace(0, w - 1, n), indexing='ij')
  return np.stack([xs, ys], -1).reshape(-1, 2)


def _border(shape, n: int = 64) -> np.ndarray:
  h, w = shape[:2]
  t = np.linspace(0.0, 1.0, n)
  x, y = t * (w - 1), t * (h - 1)
  return np.concatenate([np.stack([x, 0 * x], -1), np.stack([x, 0 * x + h - 1], -1),
                         np.stack([0 * y, y], -1), np.stack([0 * y + w - 1, y], -1)])


def rms_difference(w1: np.ndarray, w2: np.ndarray, shape) -> float:
  """RMS over the image grid of the distance (px) between where w1 and w2 send each pixel."""
  g = _grid(shape)
  return float(np.sqrt(np.mean(np.sum((apply(w1, g) - apply(w2, g)) ** 2, -1))))


def max_displacement(w: np.ndarray, shape) -> float:
  """Largest distance (px) a pixel of the frame moves under w (on the frame's border, where it peaks
  for affine maps, plus an interior grid for homographies)."""
  p = np.concatenate([_border(shape), _grid(shape, 17)])
  return float(np.max(np.linalg.norm(apply(w, p) - p, axis=-1)))


def nearest_similarity(w: np.ndarray, shape) -> np.ndarray:
  """Least-squares similarity (scale, rotation, shift) to the map w over the image grid."""
  g = _grid(shape, 17)
  q = apply(w, g)
  c = g.mean(0)
  p = g - c
  a = np.zeros((2 * len(p), 4))
  a[0::2] = np.stack([p[:, 0], -p[:, 1], np.ones(len(p)), np.zeros(len(p))], -1)
  a[1::2] = np.stack([p[:, 1], p[:, 0], np.zeros(len(p)), np.ones(len(p))], -1)
  (sa, sb, tx, ty), *_ = np.linalg.lstsq(a, q.reshape(-1), rcond=None)
  m = np.array([[sa, -sb, 0.0], [sb, sa, 0.0], [0.0, 0.0, 1.0]])
  m[:2, 2] = np.array([tx, ty]) - m[:2, :2] @ c
  return m


def describe(w: np.ndarray, shape) -> dict:
  """Human-readable parameters of a transform: shift of the centre (px), rotation (deg), magnification
  (%) of its nearest similarity, and the largest displacement on the frame (px)."""
  s = nearest_similarity(w, shape)
  h, wd = shape[:2]
  c = np.array([(wd - 1) / 2.0, (h - 1) / 2.0])
  shift = apply(w, c[None])[0] - c
  return {
      'shift_px': [round(float(shift[0]), 4), round(float(shift[1]), 4)],
      'rotation_deg': round(math.degrees(math.atan2(s[1, 0], s[0, 0])), 5),
      'magnification_pct': round((math.hypot(s[0, 0], s[1, 0]) - 1.0) * 100.0, 5),
      'max_displacement_px': round(max_displacement(w, shape), 4),
      'matrix': np.round(w, 9).tolist(),
  }


# -------------------------------------------------------------------------------- image helpers


def to_luma(image: np.ndarray) -> np.ndarray:
  """[H, W] float32 luma of an [H, W], [H, W, 1] or [H, W, 3] image (BT.601 weights, no offset)."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    return image
  if image.shape[-1] == 1:
    return image[..., 0]
  return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _resize(image: np.ndarray, size_wh) -> np.ndarray:
  if (image.shape[1], image.shape[0]) == tuple(size_wh):
    return image
  return cv2.resize(image, tuple(size_wh), interpolation=cv2.INTER_AREA)


def _level_sizes(shape, max_side: int, min_side: int):
  """(w, h) of the pyramid levels, finest (capped at max_side on the long side) first."""
  h, w = shape[:2]
  f = min(1.0, max_side / max(h, w))
  sizes = []
  while True:
    size = (max(8, round(w * f)), max(8, round(h * f)))
    sizes.append(size)
    if max(size) <= min_side * 1.5:
      break
    f /= 2.0
  return sizes


def pyramid(gray: np.ndarray, max_side: int = DEFAULT_MAX_SIDE, min_side: int = DEFAULT_MIN_SIDE):
  """[(image, S)] finest first; S maps full-size coordinates to the level's."""
  h, w = gray.shape[:2]
  out = []
  prev = gray
  for size in _level_sizes(gray.shape, max_side, min_side):
    prev = _resize(prev, size)  # Area resize from the previous level (exact halving in the loop).
    out.append((prev, scale_matrix(size[0] / w, size[1] / h)))
  return out


def texture_level(gray_coarse: np.ndarray) -> float:
  """RMS of a band-pass (image minus its Gaussian blur, sigma 2) of a coarse level."""
  g = gray_coarse.astype(np.float32)
  return float(np.sqrt(np.mean((g - cv2.GaussianBlur(g, (0, 0), 2.0)) ** 2)))


def validity_mask(w: np.ndarray, moving_shape, out_shape, rows_per_chunk: int = 1024) -> np.ndarray:
  """[H, W] bool over the output grid: True where w sends the pixel inside the moving frame."""
  hm, wm = moving_shape[:2]
  h, wd = out_shape[:2]
  eps = 1e-6
  mask = np.empty((h, wd), bool)
  xs = np.arange(wd, dtype=np.float64)
  for y0 in range(0, h, rows_per_chunk):
    ys = np.arange(y0, min(h, y0 + rows_per_chunk), dtype=np.float64)[:, None]
    u = w[0, 0] * xs + w[0, 1] * ys + w[0, 2]
    v = w[1, 0] * xs + w[1, 1] * ys + w[1, 2]
    d = w[2, 0] * xs + w[2, 1] * ys + w[2, 2]
    if not np.all(d == 1.0):
      u, v = u / d, v / d
    mask[y0:y0 + len(ys)] = (u >= -eps) & (u <= wm - 1 + eps) & (v >= -eps) & (v <= hm - 1 + eps)
  return mask


def warp(image: np.ndarray, w: np.ndarray, out_shape, interpolation: int = cv2.INTER_CUBIC):
  """(aligned image on the out_shape grid, validity mask). Outside pixels are edge replicas."""
  h, wd = out_shape[:2]
  flags = interpolation | cv2.WARP_INVERSE_MAP
  img = np.ascontiguousarray(image, np.float32)
  if np.allclose(w[2], [0.0, 0.0, 1.0]):
    out = cv2.warpAffine(img, w[:2].astype(np.float64), (wd, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
  else:
    out = cv2.warpPerspective(img, w.astype(np.float64), (wd, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
  if out.ndim == 2 and img.ndim == 3:
    out = out[..., None]
  if interpolation in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
    np.clip(out, 0.0, 1.0, out=out)
  return out, validity_mask(w, image.shape, out_shape)


# -------------------------------------------------------------------------------- estimation


def _phase_init(ref: np.ndarray, mov: np.ndarray):
  """Translation (level pixels) of mov relative to ref, and the peak response."""
  win = cv2.createHanningWindow((ref.shape[1], ref.shape[0]), cv2.CV_32F)
  (dx, dy), response = cv2.phaseCorrelate(ref.astype(np.float32), mov.astype(np.float32), win)
  w = np.eye(3)
  w[0, 2], w[1, 2] = dx, dy
  return w, float(response)


def _ecc_level(ref, mov, w_level, model, gauss_size, iterations, eps):
  motion = {'translation': cv2.MOTION_TRANSLATION, 'similarity': cv2.MOTION_AFFINE,
            'affine': cv2.MOTION_AFFINE, 'homography': cv2.MOTION_HOMOGRAPHY}[model]
  init = (w_level if model == 'homography' else w_level[:2]).astype(np.float32)
  criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, eps)
  rho, out = cv2.findTransformECC(ref, mov, init, motion, criteria, None, gauss_size)
  w = np.eye(3)
  if model == 'homography':
    w[:] = out
  else:
    w[:2] = out
  return float(rho), w


def _ecc_pyramid(ref_pyr, mov_pyr, w, model, gauss_size, iterations, eps, shape):
  """ECC coarse to fine from the full-size transform w; returns (w, correlation at the finest level)."""
  rho = float('nan')
  for (r, s), (m, _) in zip(reversed(ref_pyr), reversed(mov_pyr)):
    rho, wl = _ecc_level(r, m, conjugate(w, s), model, gauss_size, iterations, eps)
    w = np.linalg.inv(s) @ wl @ s
    if model == 'similarity':
      w = nearest_similarity(w, shape)
  return w, rho


def features_transform(moving_gray, reference_gray, model='similarity', max_side=DEFAULT_MAX_SIDE,
                       ransac_px=1.5):
  """SIFT matching + RANSAC at a capped resolution; returns (W full-size, inlier count). The fallback
  start of ECC (detectors move with defocus blur, so it is not the estimate itself).

  Raises ValueError when fewer than 8 consistent matches are found."""
  sizes = _level_sizes(reference_gray.shape, max_side, max_side)
  size = sizes[0]
  h, w = reference_gray.shape[:2]
  s = scale_matrix(size[0] / w, size[1] / h)
  a = (np.clip(_resize(reference_gray, size), 0, 1) * 255).astype(np.uint8)
  b = (np.clip(_resize(moving_gray, size), 0, 1) * 255).astype(np.uint8)
  det, norm = cv2.SIFT_create(nfeatures=4000), cv2.NORM_L2
  ka, da = det.detectAndCompute(a, None)
  kb, db = det.detectAndCompute(b, None)
  if da is None or db is None or len(ka) < 8 or len(kb) < 8:
    raise ValueError('too few features')
  matches = cv2.BFMatcher(norm).knnMatch(da, db, k=2)
  good = [m[0] for m in matches if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
  if len(good) < 8:
    raise ValueError(f'too few matches ({len(good)})')
  pa = np.float32([ka[m.queryIdx].pt for m in good])
  pb = np.float32([kb[m.trainIdx].pt for m in good])
  wl = np.eye(3)
  if model in ('similarity', 'translation'):
    m, inl = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=ransac_px)
  elif model == 'affine':
    m, inl = cv2.estimateAffine2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=ransac_px)
  else:
    m, inl = cv2.findHomography(pa, pb, cv2.USAC_MAGSAC, ransac_px)
  if m is None or inl is None or int(inl.sum()) < 8:
    raise ValueError('no consistent matches')
  if m.shape[0] == 3:
    wl[:] = m
  else:
    wl[:2] = m
  return np.linalg.inv(s) @ wl @ s, int(inl.sum())


def estimate_transform(moving: np.ndarray, reference: np.ndarray, model: str = DEFAULT_MODEL, *,
                       max_side: int = DEFAULT_MAX_SIDE, min_side: int = DEFAULT_MIN_SIDE,
                       gauss_size: int = DEFAULT_GAUSS_SIZE, iterations: int = ECC_ITERATIONS,
                       eps: float = ECC_EPS):
  """Reference -> moving transform (3 x 3, full-size pixels) and `Diagnostics`.

  Pyramid ECC from a phase-correlation shift at the coarsest level; when ECC fails or correlates below
  MIN_CORRELATION it is run again from a SIFT + RANSAC start (phase correlation misses large shifts).

  Args:
    moving, reference: float32 images in [0, 1] ([H, W, C] or [H, W]); luma is used.
    model: 'translation', 'similarity' (default), 'affine' or 'homography'.
    max_side: cap (long side, pixels) of the finest estimation level (bounds the time on large images).
    min_side: long side of the coarsest level.
    gauss_size: ECC's Gaussian smoothing (odd kernel size) of both frames.

  Returns:
    (W, diagnostics). diagnostics.flat is True (and W the identity) when either frame has no texture.

  Raises:
    cv2.error (ECC did not converge) or ValueError (no feature matches); `register_stack` turns these
    into `RegistrationError`.
  """
  if model not in MODELS:
    raise ValueError(f'model must be one of {MODELS}, got {model!r}')
  t0 = time.perf_counter()
  diag = Diagnostics()
  ref_g, mov_g = to_luma(reference), to_luma(moving)
  if ref_g.shape != mov_g.shape:
    raise ValueError(f'frames differ in size: {mov_g.shape} vs {ref_g.shape}')
  ref_pyr = pyramid(ref_g, max_side, min_side)
  mov_pyr = pyramid(mov_g, max_side, min_side)
  diag.scale = float(ref_pyr[0][1][0, 0])
  if min(texture_level(ref_pyr[-1][0]), texture_level(mov_pyr[-1][0])) < FLAT_LEVEL:
    diag.flat = True
    diag.seconds = time.perf_counter() - t0
    return np.eye(3), diag
  coarse_ref, s = ref_pyr[-1]
  wl, diag.phase_response = _phase_init(coarse_ref, mov_pyr[-1][0])
  w = np.linalg.inv(s) @ wl @ s
  try:
    w, rho = _ecc_pyramid(ref_pyr, mov_pyr, w, model, gauss_size, iterations, eps, ref_g.shape)
  except cv2.error:
    rho = -1.0
  if rho < MIN_CORRELATION:
    diag.fallback = True
    w0, _ = features_transform(mov_g, ref_g, model, max_side)
    w, rho = _ecc_pyramid(ref_pyr, mov_pyr, w0, model, gauss_size, iterations, eps, ref_g.shape)
  diag.levels = len(ref_pyr)
  diag.correlation = rho
  diag.seconds = time.perf_counter() - t0
  return w, diag


def local_residual(aligned: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, *,
                   tile: int = 96, max_side: int = 768, gauss_size: int = DEFAULT_GAUSS_SIZE,
                   min_correlation: float = 0.8) -> tuple[float, float, int]:
  """Residual misregistration after alignment, in full-size px: (median, max, number of tiles).

  The frames (at up to max_side pixels) are cut into tiles of about `tile` pixels; in each tile that is
  fully valid and textured in both directions (structure tensor: smaller eigenvalue at least 1/8 of
  the larger, so that a lone straight edge, whose shift along itself is undetermined, is skipped), ECC
  finds the translation left between the reference and the aligned frame; tiles whose correlation
  stays below min_correlation (mostly: defocused in one frame) are skipped. (nan, nan, 0) when no tile
  qualifies."""
  ref_g, mov_g = to_luma(reference), to_luma(aligned)
  h, w = ref_g.shape
  size = _level_sizes(ref_g.shape, max_side, max_side)[0]
  f = size[0] / w
  r, m = _resize(ref_g, size), _resize(mov_g, size)
  valid = np.ones(r.shape, bool) if mask is None else _resize(mask.astype(np.float32), size) > 0.999
  gy, gx = np.gradient(cv2.GaussianBlur(r, (0, 0), 1.0))
  ny, nx = max(1, r.shape[0] // tile), max(1, r.shape[1] // tile)
  th, tw = r.shape[0] // ny, r.shape[1] // nx
  shifts = []
  for i in range(ny):
    for j in range(nx):
      sl = np.s_[i * th:(i + 1) * th, j * tw:(j + 1) * tw]
      if not valid[sl].all():
        continue
      jxx, jyy, jxy = float(np.mean(gx[sl] ** 2)), float(np.mean(gy[sl] ** 2)), float(np.mean(gx[sl] * gy[sl]))
      root = math.sqrt(max(0.0, (jxx - jyy) ** 2 / 4 + jxy ** 2))
      lmax, lmin = (jxx + jyy) / 2 + root, (jxx + jyy) / 2 - root
      if lmax < (FLAT_LEVEL / 2) ** 2 or lmin < lmax / 8:
        continue
      try:
        rho, wl = _ecc_level(np.ascontiguousarray(r[sl]), np.ascontiguousarray(m[sl]), np.eye(3), 'translation',
                             gauss_size, 50, 1e-5)
      except cv2.error:
        continue
      if rho >= min_correlation:
        shifts.append(math.hypot(wl[0, 2], wl[1, 2]) / f)
  if not shifts:
    return float('nan'), float('nan'), 0
  return float(np.median(shifts)), float(np.max(shifts)), len(shifts)


# ------------------------------------------------------------------------------------- stacks


@dataclasses.dataclass
class Registration:
  """A registered stack. Index i of every field is input i."""
  images: np.ndarray          # [N, H, W, C] float32 on the reference grid.
  masks: np.ndarray           # [N, H, W] bool: True where input i covers the pixel.
  transforms: np.ndarray      # [N, 3, 3] estimated reference -> input transforms (identity for the reference).
  warped: np.ndarray          # [N] bool: whether input i was resampled.
  displacement_px: np.ndarray  # [N] largest displacement of the estimated transform on the frame.
  residual_px: np.ndarray     # [N] median local misregistration left after alignment (NaN: not measured).
  residual_max_px: np.ndarray  # [N] largest local misregistration over the measured tiles.
  correlation: np.ndarray     # [N] ECC correlation at the finest level.
  flat: np.ndarray            # [N] bool: no texture, taken as aligned.
  reference: int
  seconds: float
  skipped: str | None = None  # Why nothing was estimated in 'auto' mode (frames too small), else None.

  def summary(self, names: Sequence[str] | None = None) -> dict:
    """JSON-ready description (for summary.json)."""
    n = len(self.transforms)
    names = list(names) if names is not None else [str(i) for i in range(n)]
    shape = self.images.shape[1:3]
    inputs = []
    for i in range(n):
      d = describe(self.transforms[i], shape)
      d.update(name=names[i], warped=bool(self.warped[i]), flat=bool(self.flat[i]),
               correlation=None if np.isnan(self.correlation[i]) else round(float(self.correlation[i]), 5),
               residual_px=None if np.isnan(self.residual_px[i]) else round(float(self.residual_px[i]), 4),
               residual_max_px=None if np.isnan(self.residual_max_px[i]) else round(float(self.residual_max_px[i]), 4),
               coverage=round(float(self.masks[i].mean()), 5))
      inputs.append(d)
    out = {'reference': self.reference, 'seconds': round(self.seconds, 3), 'inputs': inputs}
    if self.skipped:
      out['skipped'] = self.skipped
    return out


def _reference_index(reference, n: int) -> int:
  if reference == 'middle':
    return (n - 1) // 2
  try:
    i = int(reference)
  except ValueError:
    i = -1
  if not 0 <= i < n:
    raise errors.InputError(f'--align_reference={reference}: this scene has {n} inputs; give an input '
                            f'position from 0 to {n - 1}, or middle')
  return i


def register_stack(images: Sequence[np.ndarray], reference='0', *, model: str = DEFAULT_MODEL,
                   mode: str = 'auto', threshold_px: float = DEFAULT_THRESHOLD_PX, chain: bool = False,
                   names: Sequence[str] | None = None, interpolation: int = cv2.INTER_CUBIC,
                   min_correlation: float = MIN_CORRELATION, min_overlap: float = MIN_OVERLAP,
                   measure_residual: bool = True, **estimate_kwargs) -> Registration:
  """Registers every input to the reference input and resamples it onto the reference grid.

  Args:
    images: N >= 1 float32 images [H, W, C] in [0, 1], all of one size.
    reference: index of the reference input, or 'middle'.
    model: transform model (see `estimate_transform`).
    mode: 'off' (identity, nothing estimated), 'on' (warp every input), 'auto' (warp an input only when
      its estimated transform moves some pixel by more than threshold_px; frames with a side under
      MIN_AUTO_SIDE are taken as aligned, with `skipped` saying so).
    chain: estimate each input against its neighbour towards the reference and compose (for stacks whose
      ends differ too much in focus to match directly).
    names: input names for messages (default: their indices).
    min_correlation, min_overlap: below these an input is refused.

  Raises:
    RegistrationError: an input has too little overlap with, or no correlation to, the reference.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  t0 = time.perf_counter()
  n = len(images)
  names = list(names) if names is not None else [str(i) for i in range(n)]
  ref = _reference_index(reference, n)
  shape = images[ref].shape
  for i, im in enumerate(images):
    if im.shape[:2] != shape[:2]:
      raise RegistrationError(i, names[i], f'size {im.shape[:2]} differs from the reference {shape[:2]}')
  stack = [np.asarray(im, np.float32) if im.ndim == 3 else np.asarray(im, np.float32)[..., None] for im in images]
  transforms = np.tile(np.eye(3), (n, 1, 1))
  correlation = np.full(n, np.nan)
  flat = np.zeros(n, bool)
  skipped = None
  if mode == 'auto' and min(shape[:2]) < MIN_AUTO_SIDE:
    skipped = f'frames of {shape[0]}x{shape[1]} are too small to register (< {MIN_AUTO_SIDE} px a side)'
    mode = 'off'
  if mode != 'off':
    order = sorted(range(n), key=lambda i: abs(i - ref))  # Neighbours of the reference first.
    for i in order:
      if i == ref:
        continue
      target = (i - 1 if i > ref else i + 1) if chain else ref
      try:
        w, diag = estimate_transform(stack[i], stack[target], model, **estimate_kwargs)
      except (cv2.error, ValueError) as e:
        why = 'ECC did not converge' if isinstance(e, cv2.error) else str(e)
        raise RegistrationError(i, names[i], f'no correlation with the reference or too little overlap ({why})'
                                ) from None
      w = w @ transforms[target] if chain else w  # ref -> target -> input.
      flat[i] = diag.flat
      correlation[i] = diag.correlation
      if not diag.flat:
        if diag.correlation < min_correlation:
          raise RegistrationError(i, names[i], f'no correlation with the reference (ECC correlation '
                                  f'{diag.correlation:.2f} < {min_correlation})')
        overlap = float(validity_mask(w, shape, shape).mean())
        if overlap < min_overlap:
          raise RegistrationError(i, names[i], f'too little overlap with the reference ({overlap:.0%} of '
                                  f'its area < {min_overlap:.0%})')
      transforms[i] = w
  displacement = np.array([max_displacement(w, shape) for w in transforms])
  warped = np.zeros(n, bool)
  out_images, masks = [], []
  residual = np.full(n, np.nan)
  residual_max = np.full(n, np.nan)
  for i in range(n):
    do = mode == 'on' and i != ref and not flat[i] or mode == 'auto' and displacement[i] > threshold_px
    if do:
      im, m = warp(stack[i], transforms[i], shape, interpolation)
      warped[i] = True
    else:
      im, m = stack[i], np.ones(shape[:2], bool)
    out_images.append(im)
    masks.append(m)
    if measure_residual and i != ref and mode != 'off' and not flat[i]:
      residual[i], residual_max[i], _ = local_residual(im, stack[ref], m)
  return Registration(np.stack(out_images), np.stack(masks), transforms, warped, displacement, residual,
                      residual_max, correlation, flat, ref, time.perf_counter() - t0, skipped)


def _parse_reference(value):
  text = str(value).strip()
  if text != 'middle' and not text.isdigit():
    raise errors.InputError(f"--align_reference must be an input's position from 0, or 'middle', got {text!r}")
  return text


@dataclasses.dataclass(frozen=True)
class AlignConfig:
  """How a scene's inputs are registered (--align*: single-scene and batch jobs)."""
  mode: str = config_lib.option(
      'auto', "Registration of the inputs to a reference input (hand-held brackets, focus breathing): "
      "'auto' estimates every input's motion and resamples only those that move more than "
      f'{DEFAULT_THRESHOLD_PX} px somewhere on the frame; \'on\' resamples all; \'off\' takes them as aligned.',
      choices=MODES, flag='align')
  reference: str = config_lib.option(
      '0', "The input the others are registered to (the result has its grid and size): a position "
      "from 0, or 'middle'.", flag='align_reference', kind='string', parse=_parse_reference)
  model: str = config_lib.option(
      DEFAULT_MODEL, 'Transform model: similarity (shift, rotation, magnification), affine or homography.',
      choices=MODELS[1:], flag='align_model')
  chain: bool = config_lib.option(
      False, 'Register each input to its neighbour towards the reference and compose (for stacks whose '
      'ends differ too much in focus to match directly; errors add up along the chain).',
      flag='align_chain')

  def __post_init__(self):
    if self.mode not in MODES or self.model not in MODELS:
      raise errors.InputError(f'--align must be one of {MODES} and --align_model one of {MODELS[1:]}')
    _parse_reference(self.reference)


def align_inputs(images, config: AlignConfig, names=None) -> Registration:
  """`register_stack` with the settings of `config` (the jobs' entry point)."""
  return register_stack(list(images), config.reference, model=config.model, mode=config.mode,
                        chain=config.chain, names=names)
