"""Light-field front end: load sub-aperture views, refocus, choose focal planes, index maps.

The all-in-focus application of DFP: a light field is refocused by shift-and-add into a focal stack
of N slices, each sharp at one depth, and the slices are fused. This module covers everything
before the fusion, plus a colour rendering of the fused result's decision (index) map.

Conventions (see also `filters.py`):
  * An image is float32 [H, W, C] in [0, 1]; a light field holds V views as [V, H, W, C].
  * A view sits at integer grid position (row, col) on the camera array: row grows downwards, col to
    the right. Offsets are taken from the centre (reference) view (r0, c0):
    (dr, dc) = (r - r0, c - c0).
  * Disparity sign: a scene point seen at pixel p = (y, x) of the centre view is seen at
    p - d * (dr, dc) in view (row, col). Refocusing at `disparity=a` shifts every view by
    +a * (dr, dc) pixels (content moves that way) and averages, so the point is sharp exactly when
    a = d. With a camera array whose col grows to the right this is the usual stereo sign: points in
    front of the zero-disparity plane have d > 0, points behind it d < 0.
  * Disparities are in pixels per view step.

Sections:
  1. `LightField` and the loader `load_light_field` (the only code here that touches the disk; views
     are read with `image_io.read_image`).
  2. Sub-pixel shifts (`shift_image`) and shift-and-add refocusing (`refocus`, `focal_stack`).
  3. Focus sweep and automatic choice of focal planes (`focus_sweep`, `select_planes`,
     `choose_focal_planes`).
  4. The pipeline as calls: `LightFieldConfig` (crop, downsampling, planes, aperture, sweep; the
     light-field job's flags), `make_focal_stack` (planes -> refocused slices) and `fuse_light_field`
     (the slices fused by `fusion.fuse`).

The array functions of sections 2-3 are pure jnp with static shapes (jit-able, vmappable). The
exceptions work on concrete values: `choose_focal_planes` and the section 4 calls (drivers calling
jitted parts), `required_pad`, `estimate_memory` / `check_memory` (of the refocusing stage) and
`disparity_sweep`. Index-map pictures are `viz`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from typing import NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import config as config_lib
from dfp_jax import errors
from dfp_jax import filters
from dfp_jax import focus
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import resample

HCI_GRID = 9  # HCI views are a 9 x 9 grid: input_Cam###.png with ### = 9 * row + col.
HCI_CENTER = (4, 4)  # input_Cam040.png.
VIEWS_JSON = 'views.json'  # Optional per-folder description of the views (any naming).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm')
DEFAULT_PAD = 16  # Reflect margin (pixels) of the Fourier shift; see `shift_image`.
MAX_GRID_SPAN = 64  # Views farther apart than this (in grid steps) are a views.json mistake.

_HCI_RE = re.compile(r'^input_Cam(\d{3})\.[A-Za-z]+$')
_LYTRO_RE = re.compile(r'^(.+?)_(\d+)_(\d+)\.[A-Za-z]+$')


# ------------------------------------------------------------------------------------------------
# Errors.


class LightFieldError(errors.InputError):
  """Base of the loader's errors: an `InputError` (a `ValueError`) naming the file and problem."""


class NoViewsError(LightFieldError):
  """The folder has no file that can be recognised as a view."""


class UnreadableViewError(LightFieldError):
  """A view file is missing, truncated or in a format OpenCV cannot decode."""


class ViewShapeError(LightFieldError):
  """Views differ in size or channel count."""


class MissingCenterViewError(LightFieldError):
  """The centre (reference) view is not among the views, or cannot be determined."""


class MixedNamingError(LightFieldError):
  """A folder mixes naming schemes (HCI and Lytro), or Lytro views of several scenes."""


class DuplicateViewError(LightFieldError):
  """Two files claim the same (row, col) grid position."""


class ViewsJsonError(LightFieldError):
  """`views.json` is malformed."""


class InvalidCropError(LightFieldError):
  """The crop window or downsampling factor does not fit the views."""


# ------------------------------------------------------------------------------------------------
# 1. The light field and its loader.


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=['views', 'rows', 'cols'], meta_fields=['center', 'names', 'bit_depth'])
@dataclasses.dataclass(frozen=True)
class LightField:
  """Sub-aperture views of a light field with their grid positions (a pytree).

  `views`, `rows` and `cols` are pytree leaves (they can be traced, vmapped, put on a device);
  `center` and `names` are static metadata (hashable, part of the treedef).
  """
  views: jnp.ndarray  # [V, H, W, C] float32 in [0, 1], ordered by (row, col).
  rows: jnp.ndarray  # [V] int32 grid row of each view (grows downwards).
  cols: jnp.ndarray  # [V] int32 grid column of each view (grows to the right).
  center: tuple[int, int]  # (row, col) of the reference view; always one of the views.
  names: tuple[str, ...]  # [V] file name of each view ('' for views made in memory).
  bit_depth: int = 8  # Largest bit depth of the view files (8, 16, or 32 for float files).

  @property
  def num_views(self) -> int:
    return self.views.shape[0]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one view."""
    return tuple(self.views.shape[1:])

  @property
  def center_index(self) -> jnp.ndarray:
    """Index of the centre view in `views` (an int32 scalar)."""
    return center_index(self.rows, self.cols, self.center)

  @property
  def center_view(self) -> jnp.ndarray:
    """The centre view, [H, W, C]."""
    return self.views[self.center_index]


def make_light_field(views, rows, cols, center: tuple[int, int],
                     names: Sequence[str] | None = None, bit_depth: int = 8) -> LightField:
  """Builds a `LightField` from arrays, checking shapes and that the centre view exists.

  Args:
    views: [V, H, W, C] float images in [0, 1] (converted to float32).
    rows: [V] integer grid rows.
    cols: [V] integer grid columns.
    center: (row, col) of the reference view.
    names: optional [V] names; defaults to empty strings.

  Returns:
    The `LightField`.
  """
  views = jnp.asarray(views, jnp.float32)
  rows_np = np.asarray(rows, np.int32)
  cols_np = np.asarray(cols, np.int32)
  if views.ndim != 4:
    raise ViewShapeError(f'views must be [V, H, W, C], got shape {views.shape}')
  v = views.shape[0]
  if rows_np.shape != (v,) or cols_np.shape != (v,):
    raise ViewShapeError(
        f'rows/cols must have shape ({v},), got {rows_np.shape} and {cols_np.shape}')
  center = (int(center[0]), int(center[1]))
  if not np.any((rows_np == center[0]) & (cols_np == center[1])):
    raise MissingCenterViewError(f'centre view {center} is not among the {v} views')
  names = tuple(names) if names is not None else ('',) * v
  if len(names) != v:
    raise ViewShapeError(f'{len(names)} names for {v} views')
  return LightField(views, jnp.asarray(rows_np), jnp.asarray(cols_np), center, names, int(bit_depth))


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _parse_views_json(folder: str):
  """Returns ([(file, row, col)], center or None) from folder/views.json."""
  path = os.path.join(folder, VIEWS_JSON)
  try:
    with open(path, 'r', encoding='utf-8') as f:
      spec = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ViewsJsonError(f'{path}: cannot be parsed as JSON ({e})') from e
  if not isinstance(spec, dict) or not isinstance(spec.get('views'), list):
    raise ViewsJsonError(f'{path}: expected an object with a list "views"')
  entries = []
  for i, item in enumerate(spec['views']):
    if (not isinstance(item, dict) or not isinstance(item.get('file'), str)
        or not _is_int(item.get('row')) or not _is_int(item.get('col'))):
      raise ViewsJsonError(
          f'{path}: views[{i}] must be {{"file": str, "row": int, "col": int}}, got {item!r}')
    entries.append((item['file'], int(item['row']), int(item['col'])))
  center = spec.get('center')
  if center is not None:
    if not (isinstance(center, (list, tuple)) and len(center) == 2 and all(map(_is_int, center))):
      raise ViewsJsonError(f'{path}: "center" must be [row, col] integers, got {center!r}')
    center = (int(center[0]), int(center[1]))
  for axis, name in ((1, 'row'), (2, 'col')):
    values = [e[axis] for e in entries]
    if values and max(values) - min(values) > MAX_GRID_SPAN:
      far = max(values, key=lambda v: abs(v - min(values)))
      raise ViewsJsonError(f'{path}: the views\' {name}s span {min(values)} to {max(values)}, more than '
                           f'{MAX_GRID_SPAN} view steps (e.g. {name} {far}); "row" and "col" are grid '
                           'positions of the camera array (0, 1, 2, ...), not pixels')
  return entries, center


def _scan_folder(folder: str):
  """Finds the views of a folder by naming scheme.

  Returns:
    (entries [(file, row, col)], default center or None, scheme name).
  """
  if os.path.isfile(os.path.join(folder, VIEWS_JSON)):
    entries, center = _parse_views_json(folder)
    if not entries:
      raise NoViewsError(f'{folder}: {VIEWS_JSON} lists no views')
    if center is None:
      # The view nearest the mean grid position (ties: smallest row, then col).
      mr = np.mean([e[1] for e in entries])
      mc = np.mean([e[2] for e in entries])
      center = min(((r - mr) ** 2 + (c - mc) ** 2, r, c) for _, r, c in entries)[1:]
    return entries, center, 'views.json'

  files = sorted(f for f in os.listdir(folder)
                 if not f.startswith('.') and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
  hci, lytro, other = [], [], []
  for f in files:
    m = _HCI_RE.match(f)
    if m:
      idx = int(m.group(1))
      hci.append((f, idx // HCI_GRID, idx % HCI_GRID))
      continue
    m = _LYTRO_RE.match(f)
    if m:
      lytro.append((f, int(m.group(2)), int(m.group(3)), m.group(1)))
    else:
      other.append(f)
  if hci and lytro:
    raise MixedNamingError(
        f'{folder}: mixes HCI names ({hci[0][0]}, ...) and <scene>_RR_CC names '
        f'({lytro[0][0]}, ...); keep one scheme per folder or list the views in {VIEWS_JSON}')
  if not hci and not lytro:
    raise NoViewsError(
        f'{folder}: no light-field views found (expected input_Cam###.png, <scene>_RR_CC.png '
        f'or a {VIEWS_JSON}); image files seen: {other[:5]}')
  if other:
    logging.info('%s: ignoring %d image files that match no view naming: %s', folder, len(other),
                 other[:5])
  if hci:
    return hci, HCI_CENTER, 'hci'
  scenes = sorted({e[3] for e in lytro})
  if len(scenes) > 1:
    raise MixedNamingError(
        f'{folder}: <scene>_RR_CC views of several scenes {scenes}; use one folder per scene')
  entries = [e[:3] for e in lytro]
  rows = [e[1] for e in entries]
  cols = [e[2] for e in entries]
  if (min(rows) + max(rows)) % 2 or (min(cols) + max(cols)) % 2:
    raise MissingCenterViewError(
        f'{folder}: rows {min(rows)}..{max(rows)} / cols {min(cols)}..{max(cols)} have no middle '
        f'view (a stray file named like a view widens the grid); give the centre in {VIEWS_JSON}, or '
        'call load_light_field(..., center=(row, col))')
  center = ((min(rows) + max(rows)) // 2, (min(cols) + max(cols)) // 2)
  grid = (max(rows) - min(rows) + 1) * (max(cols) - min(cols) + 1)
  if len(entries) != grid:
    logging.warning('%s: %d views fill %d places of the rows %d..%d / cols %d..%d grid; the centre view '
                    '(the reference) is taken at (%d, %d); list the views in %s if that is wrong',
                    folder, len(entries), grid, min(rows), max(rows), min(cols), max(cols), *center,
                    VIEWS_JSON)
  return entries, center, 'lytro'


def load_light_field(folder: str, *, crop: tuple[int, int, int, int] | None = None,
                     downsample: int = 1, center: tuple[int, int] | None = None,
                     before_decoding=None) -> LightField:
  """Loads the sub-aperture views in `folder` into a `LightField`.

  Naming schemes, tried in this order:
    1. `views.json` in the folder (any file names):
       `{"views": [{"file": "x.png", "row": 0, "col": 1}, ...], "center": [r, c]}`; files are
       relative to the folder; `center` is optional and defaults to the view nearest the mean
       (row, col) (ties: smallest row, then col). Other files in the folder are ignored.
    2. HCI: `input_Cam###.png`, row = ### // 9, col = ### % 9, centre (4, 4) = input_Cam040.png.
       Any subset of the 81 views (e.g. a cross and the diagonals) is fine if the centre is present.
    3. Decoded Lytro: `<scene>_RR_CC.png` (RR = row, CC = column, any number of digits), one scene
       per folder; the centre is the middle of the row and column ranges, which must exist.
  Image files matching no scheme are ignored (logged); HCI and Lytro names in one folder are an
  error.

  Processing order: read, crop, downsample. `crop=(y, x, h, w)` is in the views' own pixel
  coordinates. `downsample=s` averages s x s blocks (cv2.INTER_AREA for an integer factor); if the
  (cropped) size is not a multiple of s, the last H % s rows and W % s columns are dropped first, so
  the output is (H // s, W // s).

  Args:
    folder: directory holding the views.
    crop: optional (y, x, h, w) window, validated against the view size.
    downsample: integer factor s >= 1.
    center: optional (row, col) overriding the scheme's centre; must be one of the views.
    before_decoding: optional check called with (number of views, (H', W', C) processed view size,
      largest |row or col offset| from the centre) once the names and the first view's header are
      read, before any view is decoded (e.g. a memory check that raises).

  Returns:
    A `LightField` with views [V, H', W', C] float32 in [0, 1] sorted by (row, col); C = 1 for grey
    files, 3 otherwise (alpha dropped).

  Raises:
    NoViewsError, UnreadableViewError, ViewShapeError, MissingCenterViewError, MixedNamingError,
    DuplicateViewError, ViewsJsonError, InvalidCropError (all `LightFieldError`, which is an
    `errors.InputError` and so a `ValueError`).
  """
  if not os.path.isdir(folder):
    raise NoViewsError(f'{folder}: not a directory')
  entries, default_center, scheme = _scan_folder(folder)
  center = default_center if center is None else (int(center[0]), int(center[1]))
  entries = sorted(entries, key=lambda e: (e[1], e[2]))
  positions = {}
  for f, r, c in entries:
    if (r, c) in positions:
      raise DuplicateViewError(
          f'{folder}: {positions[(r, c)]} and {f} are both view (row {r}, col {c})')
    positions[(r, c)] = f
  if center not in positions:
    raise MissingCenterViewError(
        f'{folder}: centre view (row {center[0]}, col {center[1]}) is missing ({scheme} naming, '
        f'{len(entries)} views)')
  if not _is_int(downsample) or downsample < 1:
    raise InvalidCropError(f'{folder}: downsample must be an integer >= 1, got {downsample!r}')
  if before_decoding is not None:
    try:
      header = image_io.read_header(os.path.join(folder, entries[0][0]))
    except errors.InputError as e:
      raise UnreadableViewError(str(e)) from None
    h, w = (crop[2], crop[3]) if crop is not None and len(crop) == 4 else (header.height, header.width)
    reach = max(max(abs(r - center[0]), abs(c - center[1])) for _, r, c in entries)
    before_decoding(len(entries), (h // downsample, w // downsample, header.channels), reach)

  views, first_shape, depths = [], None, []
  for f, _, _ in entries:
    path = os.path.join(folder, f)
    image, depth = _read_view(path)
    depths.append(depth)
    if first_shape is None:
      first_shape = image.shape
      if crop is not None:
        if len(crop) != 4 or not all(map(_is_int, crop)):
          raise InvalidCropError(f'{folder}: crop must be 4 integers (y, x, h, w), got {crop!r}')
        y, x, h, w = crop
        if y < 0 or x < 0 or h < 1 or w < 1 or y + h > image.shape[0] or x + w > image.shape[1]:
          raise InvalidCropError(
              f'{folder}: crop (y={y}, x={x}, h={h}, w={w}) does not fit views of size '
              f'{image.shape[0]} x {image.shape[1]} ({f})')
      ch, cw = (crop[2], crop[3]) if crop is not None else image.shape[:2]
      if ch < downsample or cw < downsample:
        raise InvalidCropError(
            f'{folder}: downsample {downsample} is larger than the view size {ch} x {cw}')
    elif image.shape[:2] != first_shape[:2]:
      raise ViewShapeError(
          f'{folder}: {f} has shape {image.shape} but {entries[0][0]} has {first_shape}')
    if crop is not None:
      y, x, h, w = crop
      image = image[y:y + h, x:x + w]
    if downsample > 1:
      image = resample.area_downsample(image, downsample)
    views.append(image)
  if len({v.shape[2] for v in views}) > 1:  # The rule of image_io.load_inputs: grey becomes colour.
    grey = [e[0] for e, v in zip(entries, views) if v.shape[2] == 1]
    logging.warning('%s: %d grey view(s) among colour ones (e.g. %s): converting them to colour (R=G=B)',
                    folder, len(grey), grey[0])
    views = [np.repeat(v, 3, axis=2) if v.shape[2] == 1 else v for v in views]
  # Debug level: callers log what they go on to do with the views once their own checks pass (the CLI's
  # "light field ..." line), so a user's error is not preceded by a line that reads like progress.
  logging.debug('%s: %d views (%s naming), centre %s, view size %s', folder, len(views), scheme,
                center, views[0].shape)
  return make_light_field(np.stack(views), [e[1] for e in entries], [e[2] for e in entries],
                          center, [e[0] for e in entries], bit_depth=max(depths))


def _read_view(path: str) -> tuple[np.ndarray, int]:
  """One view through the package's image reader (`image_io.read_image`: EXIF orientation, alpha,
  16-bit and float files handled as for --inputs); (float32 [H, W, C] in [0, 1], bit depth)."""
  try:
    image, info = image_io.read_image(path)
  except errors.InputError as e:
    raise UnreadableViewError(str(e)) from None
  return image, info.bit_depth


# ------------------------------------------------------------------------------------------------
# 2. Sub-pixel shifts and shift-and-add refocusing.
#
# Shift method: Fourier (phase ramp) by default. A sub-pixel bilinear shift is a low-pass filter
# whose strength depends on the fractional part of the shift (none at 0, [0.5, 0.5] at 0.5), so
# bilinear refocusing softens the in-focus plane and, worse for plane selection, biases the focus
# sweep towards disparities whose shifts happen to be integers. The
# Fourier shift is exact for band-limited content and has no such bias. Its weakness is the
# periodic boundary (wrap-around and ringing at the image border), handled by reflect-padding each
# view by `pad` pixels (BORDER_REFLECT_101, like the filters) before the FFT: shifts up to `pad`
# pixels bring in reflected content, and the remaining seam of the periodic extension is `pad`
# pixels away from the image. The padded size is the smallest odd 7-smooth number >= H + 2 * pad
# (extra rows/cols reflect-padded at the end), so there is no Nyquist bin and the shifted image is
# exactly real. Bilinear (same reflect boundary, any shift size) is kept as `method='bilinear'`
# for comparison and for views too large for FFTs.
#
# Refocusing in the Fourier domain: shift-and-add is linear, so the sum over views is taken on the
# spectra (one rFFT per view, computed once per light field, then one inverse FFT per slice).


def center_index(rows, cols, center) -> jnp.ndarray:
  """Index (int32 scalar) of the view at grid position `center`; 0 if absent (loaders forbid it)."""
  hit = (jnp.asarray(rows) == center[0]) & (jnp.asarray(cols) == center[1])
  return jnp.argmax(hit).astype(jnp.int32)


def view_offsets(rows, cols, center) -> jnp.ndarray:
  """Grid offsets (r - r0, c - c0) of every view from the centre, [V, 2] float32."""
  rows = jnp.asarray(rows, jnp.float32)
  cols = jnp.asarray(cols, jnp.float32)
  return jnp.stack([rows - jnp.asarray(center[0], jnp.float32),
                    cols - jnp.asarray(center[1], jnp.float32)], axis=-1)


def aperture_weights(offsets: jnp.ndarray, aperture) -> jnp.ndarray:
  """1 for views inside the synthetic aperture, else 0: [V] float32 from offsets [V, 2].

  The aperture is a disc: Euclidean distance from the centre view <= `aperture` (in view steps),
  like the round pupil of a real lens (isotropic bokeh). `aperture=0` keeps the centre view only;
  `aperture=inf` keeps all views. The centre view is always inside.
  """
  dist = jnp.sqrt(jnp.sum(offsets * offsets, axis=-1))
  return (dist <= jnp.asarray(aperture, jnp.float32) + 1e-6).astype(jnp.float32)


def _smooth_odd(n: int) -> int:
  """Smallest odd n' >= n with prime factors in {3, 5, 7}: a fast FFT size with no Nyquist bin."""
  m = n if n % 2 else n + 1
  while True:
    k = m
    for p in (3, 5, 7):
      while k % p == 0:
        k //= p
    if k == 1:
      return m
    m += 2


def _fourier_pad(x: jnp.ndarray, pad: int) -> jnp.ndarray:
  """Reflect-pads [..., H, W, C] to the odd smooth FFT size (pad before, pad + extra after)."""
  h, w = x.shape[-3], x.shape[-2]
  hp, wp = _smooth_odd(h + 2 * pad), _smooth_odd(w + 2 * pad)
  pads = [(0, 0)] * (x.ndim - 3) + [(pad, hp - h - pad), (pad, wp - w - pad), (0, 0)]
  return jnp.pad(x, pads, mode='reflect')


def _phase(freqs: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
  """exp(-2 pi i f s) for shifts [...] and frequencies [F]: [..., F] complex64."""
  angle = -2.0 * jnp.pi * shift[..., None] * freqs
  return jax.lax.complex(jnp.cos(angle), jnp.sin(angle))


def _reflect_index(i: jnp.ndarray, n: int) -> jnp.ndarray:
  """Maps integer indices into [0, n) by reflection without edge repeat (BORDER_REFLECT_101)."""
  if n == 1:
    return jnp.zeros_like(i)
  period = 2 * (n - 1)
  i = jnp.mod(i, period)
  return jnp.where(i > n - 1, period - i, i)


def _shift_bilinear(image: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
  """out(p) = image(p - shift) by bilinear interpolation, reflect-101 boundary. image [H, W, C]."""
  h, w = image.shape[0], image.shape[1]
  sy = jnp.arange(h, dtype=jnp.float32) - shift[0]
  sx = jnp.arange(w, dtype=jnp.float32) - shift[1]
  y0, x0 = jnp.floor(sy), jnp.floor(sx)
  fy, fx = (sy - y0)[:, None, None], (sx - x0)[None, :, None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  ya, yb = _reflect_index(y0, h), _reflect_index(y0 + 1, h)
  xa, xb = _reflect_index(x0, w), _reflect_index(x0 + 1, w)
  top = image[ya]  # [H, W, C] rows gathered
  bot = image[yb]
  row = (1.0 - fy) * top + fy * bot
  return (1.0 - fx) * row[:, xa] + fx * row[:, xb]


def shift_image(image: jnp.ndarray, shift, *, method: str = 'fourier', pad: int = DEFAULT_PAD):
  """Translates an image by a sub-pixel amount: out(y, x) = image(y - dy, x - dx).

  Args:
    image: [H, W, C] float.
    shift: (dy, dx) in pixels (may be traced); content moves down / right for positive values.
    method: 'fourier' (phase ramp on the reflect-padded image; exact for band-limited content,
      reflected content for |shift| <= pad) or 'bilinear' (reflect-101 boundary at any shift).
    pad: reflect margin of the Fourier method (static).

  Returns:
    [H, W, C] float32.
  """
  image = jnp.asarray(image, jnp.float32)
  shift = jnp.asarray(shift, jnp.float32)
  if method == 'bilinear':
    return _shift_bilinear(image, shift)
  if method != 'fourier':
    raise ValueError(f"unknown shift method {method!r}; use 'fourier' or 'bilinear'")
  h, w = image.shape[0], image.shape[1]
  padded = _fourier_pad(image, pad)
  hp, wp = padded.shape[0], padded.shape[1]
  spec = jnp.fft.rfft2(padded, axes=(0, 1))
  fy = jnp.fft.fftfreq(hp).astype(jnp.float32)
  fx = jnp.fft.rfftfreq(wp).astype(jnp.float32)
  spec = spec * _phase(fy, shift[0])[:, None, None] * _phase(fx, shift[1])[None, :, None]
  out = jnp.fft.irfft2(spec, s=(hp, wp), axes=(0, 1))
  return out[pad:pad + h, pad:pad + w]


def _views_spectrum(views: jnp.ndarray, pad: int) -> jnp.ndarray:
  """rFFT of the reflect-padded views: [V, H, W, C] -> [V, Hp, Wp // 2 + 1, C] complex64."""
  return jnp.fft.rfft2(_fourier_pad(views, pad), axes=(1, 2))


def _refocus_from_spectrum(spec, offsets, weights, disparity, image_hw, pad):
  """One refocused image from the views' spectra; shifts +disparity * offsets, weighted mean."""
  h, w = image_hw
  hp = spec.shape[1]
  wp = _smooth_odd(w + 2 * pad)
  fy = jnp.fft.fftfreq(hp).astype(jnp.float32)
  fx = jnp.fft.rfftfreq(wp).astype(jnp.float32)
  shifts = jnp.asarray(disparity, jnp.float32) * offsets  # [V, 2]
  py = _phase(fy, shifts[:, 0]) * weights[:, None].astype(jnp.complex64)  # [V, Hp]
  px = _phase(fx, shifts[:, 1])  # [V, Wf]
  summed = jnp.einsum('vy,vx,vyxc->yxc', py, px, spec)
  out = jnp.fft.irfft2(summed, s=(hp, wp), axes=(0, 1))[pad:pad + h, pad:pad + w]
  return out / jnp.sum(weights)


def refocus(views, rows, cols, center, disparity, aperture=jnp.inf, *, method: str = 'fourier',
            pad: int = DEFAULT_PAD) -> jnp.ndarray:
  """Shift-and-add refocusing at one disparity.

  View (r, c) is shifted by +disparity * (r - r0, c - c0) pixels (see the module docstring: a point
  with disparity d is sharp at disparity=d) and the views inside the synthetic aperture are averaged
  with equal weights.

  Args:
    views: [V, H, W, C] float32 views.
    rows, cols: [V] integer grid positions.
    center: (r0, c0) of the reference view (ints or int scalars; may be traced).
    disparity: scalar, pixels per view step (may be traced).
    aperture: radius in view steps, Euclidean distance from the centre view (may be traced);
      0 = centre view only, inf (default) = all views.
    method: 'fourier' (default) or 'bilinear'; see `shift_image` and the section comment.
    pad: reflect margin in pixels of the Fourier method (static); keep it >= the largest shift,
      |disparity| * max |offset|, for exact reflect boundary handling.

  Returns:
    [H, W, C] float32 refocused image.
  """
  views = jnp.asarray(views, jnp.float32)
  offsets = view_offsets(rows, cols, center)
  weights = aperture_weights(offsets, aperture)
  if method == 'fourier':
    spec = _views_spectrum(views, pad)
    return _refocus_from_spectrum(spec, offsets, weights, disparity, views.shape[1:3], pad)
  if method == 'bilinear':
    shifted = jax.vmap(_shift_bilinear)(views, jnp.asarray(disparity, jnp.float32) * offsets)
    return jnp.tensordot(weights, shifted, axes=1) / jnp.sum(weights)
  raise ValueError(f"unknown shift method {method!r}; use 'fourier' or 'bilinear'")


def _stack(views, rows, cols, center, disparities, aperture, method, pad, batch_size, post=None):
  """post(refocused [H, W, C]) for every disparity, stacked on a new leading axis [N, ...].

  vmapped over the disparities when batch_size is None, else lax.map in batches (bounded memory).
  With the Fourier method the views' spectra are computed once for all slices.
  """
  views = jnp.asarray(views, jnp.float32)
  disparities = jnp.asarray(disparities, jnp.float32)
  offsets = view_offsets(rows, cols, center)
  weights = aperture_weights(offsets, aperture)
  if method == 'fourier':
    spec = _views_spectrum(views, pad)
    one = lambda d: _refocus_from_spectrum(spec, offsets, weights, d, views.shape[1:3], pad)
  elif method == 'bilinear':
    def one(d):
      shifted = jax.vmap(_shift_bilinear)(views, d * offsets)
      return jnp.tensordot(weights, shifted, axes=1) / jnp.sum(weights)
  else:
    raise ValueError(f"unknown shift method {method!r}; use 'fourier' or 'bilinear'")
  fn = one if post is None else (lambda d: post(one(d)))
  if batch_size is None:
    return jax.vmap(fn)(disparities)
  return jax.lax.map(fn, disparities, batch_size=batch_size)


def focal_stack(lf: LightField, disparities, aperture=jnp.inf, *, method: str = 'fourier',
                pad: int = DEFAULT_PAD) -> jnp.ndarray:
  """Refocuses `lf` at every disparity in one vmapped call.

  Args:
    lf: the light field.
    disparities: [N] disparities (pixels per view step).
    aperture: synthetic aperture radius in view steps (Euclidean), as in `refocus`.
    method, pad: as in `refocus` (static).

  Returns:
    [N, H, W, C] float32 focal stack, slice n refocused at disparities[n].
  """
  return _stack(lf.views, lf.rows, lf.cols, lf.center, disparities, aperture, method, pad, None)


def required_pad(lf: LightField, max_abs_disparity: float, margin: int = 8) -> int:
  """Fourier `pad` covering the largest shift of `lf` at |disparity| <= max_abs_disparity, + margin.

  Needs concrete (untraced) rows/cols.
  """
  off = np.asarray(view_offsets(lf.rows, lf.cols, lf.center))
  largest = float(np.max(np.abs(off))) * abs(float(max_abs_disparity)) if off.size else 0.0
  return int(math.ceil(largest)) + int(margin)


def estimate_memory(num_views: int, height: int, width: int, channels: int, pad: int) -> int:
  """Peak process memory (bytes) of the light-field stage (focus sweep + focal stack, Fourier shifts).

  5 float32 copies of the reflect-padded views (the padded views, their complex spectrum = two, and
  the per-slice temporaries) plus ~300 MiB for the runtime; checked against the peak RSS of sweep and
  stack on the HCI views (docs/history.md "Memory of the refocusing stage").
  """
  hp, wp = height + 2 * pad, width + 2 * pad
  return int(5 * num_views * hp * wp * channels * 4 + 300 * 2 ** 20)


def check_memory(num_views: int, image_shape, max_offset: float, max_abs_disparity: float,
                 available: int | None, name: str = 'light field', headroom: float = 0.9) -> int:
  """The light-field stage's `estimate_memory` for refocusing `num_views` views of `image_shape`
  (H, W, C), the farthest `max_offset` view steps from the centre, at |disparity| <= max_abs_disparity;
  raises MemoryBudgetError if it exceeds `headroom` x `available` bytes (None: no check)."""
  h, w, c = image_shape
  pad = int(math.ceil(abs(max_offset) * abs(float(max_abs_disparity)))) + 8  # As `required_pad`.
  need = estimate_memory(num_views, h, w, c, pad)
  if available is not None and need > headroom * available:
    raise errors.MemoryBudgetError(
        f'{name}: the light-field stage ({num_views} views of {h}x{w}x{c}) needs about '
        f'{errors.format_bytes(need)} but only {errors.format_bytes(available)} is available; process a region '
        '(--crop=y,x,h,w) or downsample the views (--lf_downsample)')
  return need


# ------------------------------------------------------------------------------------------------
# 3. Choosing focal planes.
#
# Rule. The focus of pixel p in an image is F(p) = box_mean(laplacian(luma)^2, window) at p (local
# energy of the Laplacian over a window x window region). Sweeping S disparities gives F_s(p). Each
# pixel's relative focus at slice s is q_s(p) = (F_s(p) + eps) / (max_s' F_s'(p) + eps) in (0, 1],
# and its confidence is w(p) = 1 - (min_s F_s(p) + eps) / (max_s F_s(p) + eps) in [0, 1) (0 where
# refocusing changes nothing: flat or noise-only regions). A set P of N planes covers p to degree
# cov_P(p) = max_{s in P} q_s(p). P maximises sum_p w(p) cov_P(p) (a weighted facility-location
# objective): greedy selection (each step adds the sweep value with the largest gain, no repeats),
# then `refine_passes` rounds of coordinate ascent (each plane in turn is replaced by the sweep
# value that maximises the objective given the others), which never decreases the objective. The
# chosen planes are sweep values, so they are as accurate as the sweep step. The returned coverage
# map is cov_P: each pixel's focus in its best chosen slice over its focus in the best swept slice.


def disparity_sweep(max_disparity: float = 2.0, num: int = 33,
                    min_disparity: float | None = None) -> np.ndarray:
  """Evenly spaced disparities from min_disparity (default -max_disparity) to max_disparity, [num].

  The default (-2 .. 2 px per view step, 33 values, step 0.125) covers HCI scenes and Lytro Illum
  views; narrow it for Lytro (|d| < ~1) to get a finer step for the same cost.
  """
  lo = -max_disparity if min_disparity is None else min_disparity
  if num < 1 or max_disparity < lo:
    raise ValueError(f'bad sweep: [{lo}, {max_disparity}] with {num} values')
  return np.linspace(lo, max_disparity, num, dtype=np.float64).astype(np.float32)


def focus_measure(image: jnp.ndarray, window: int = 9) -> jnp.ndarray:
  """Local Laplacian energy of luma, [H, W, C] -> [H, W]: box_mean(laplacian(luma(x))^2, window).

  For a grey image (C = 1) the luma is the image itself (see `filters.luma`).
  """
  return focus.laplacian_energy(filters.luma(image), 'box', window)


def focus_sweep(lf: LightField, disparities, aperture=jnp.inf, *, window: int = 9,
                method: str = 'fourier', pad: int = DEFAULT_PAD,
                batch_size: int = 4) -> jnp.ndarray:
  """Focus measure of the refocused light field at each disparity, [S, H, W].

  Refocusing is done on the luma of the views (refocus is an affine-preserving weighted mean, so
  this equals the luma of the refocused colour image), `batch_size` slices at a time to bound
  memory.
  """
  views_y = filters.luma(lf.views)[..., None]  # [V, H, W, 1]
  disparities = jnp.asarray(disparities, jnp.float32)
  return _stack(views_y, lf.rows, lf.cols, lf.center, disparities, aperture, method, pad,
                min(batch_size, disparities.shape[0]), lambda s: focus_measure(s, window))


_focus_sweep_jit = jax.jit(focus_sweep, static_argnames=('window', 'method', 'pad', 'batch_size'))


def _relative_focus(focus: jnp.ndarray, eps: float):
  """q [S, H, W] and confidence w [H, W] of the module's rule from sweep focus [S, H, W]."""
  fmax = jnp.max(focus, axis=0)
  fmin = jnp.min(focus, axis=0)
  q = (focus + eps) / (fmax + eps)
  w = 1.0 - (fmin + eps) / (fmax + eps)
  return q, w


def select_planes(focus: jnp.ndarray, num_planes: int, *, eps: float = 1e-6,
                  refine_passes: int = 2) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Chooses `num_planes` of the S swept slices by weighted max-coverage (see the section comment).

  Args:
    focus: [S, H, W] focus of each swept slice (e.g. from `focus_sweep`).
    num_planes: N <= S (static).
    eps: focus floor (units of squared luma Laplacian) that makes flat regions count as covered.
    refine_passes: rounds of coordinate ascent after the greedy start (static).

  Returns:
    (indices [N] int32 into the sweep, ascending; coverage [H, W] in [0, 1]; confidence [H, W]).
  """
  s = focus.shape[0]
  if not 1 <= num_planes <= s:
    raise ValueError(f'num_planes must be in [1, {s}], got {num_planes}')
  q, w = _relative_focus(focus, eps)
  qw = q * w  # Gains are sums of w * max(cov, q).

  def gains(covered):  # [S] objective after adding each candidate to a set covering `covered`.
    return jnp.sum(jnp.maximum(covered[None] * w, qw), axis=(1, 2))

  chosen = []
  covered = jnp.zeros(focus.shape[1:], focus.dtype)
  for _ in range(num_planes):
    g = gains(covered)
    for c in chosen:
      g = g.at[c].set(-jnp.inf)
    best = jnp.argmax(g)
    chosen.append(best)
    covered = jnp.maximum(covered, q[best])
  for _ in range(refine_passes):
    for j in range(num_planes):
      others = [c for k, c in enumerate(chosen) if k != j]
      covered = jnp.zeros(focus.shape[1:], focus.dtype)
      for c in others:
        covered = jnp.maximum(covered, q[c])
      g = gains(covered)
      for c in others:
        g = g.at[c].set(-jnp.inf)
      chosen[j] = jnp.argmax(g)
  indices = jnp.sort(jnp.stack(chosen).astype(jnp.int32))
  coverage = jnp.max(q[indices], axis=0)
  return indices, coverage, w


_select_planes_jit = jax.jit(select_planes, static_argnames=('num_planes', 'refine_passes'))


class FocalPlanes(NamedTuple):
  """Result of `choose_focal_planes`."""
  disparities: jnp.ndarray  # [N] chosen disparities, ascending.
  coverage: jnp.ndarray  # [H, W] focus in the best chosen slice / focus in the best swept slice.
  slice_index: jnp.ndarray  # [H, W] int32 index into `disparities` of each pixel's sharpest slice.
  sweep: jnp.ndarray  # [S] swept disparities.
  best_disparity: jnp.ndarray  # [H, W] swept disparity of maximal focus (a coarse depth map).
  confidence: jnp.ndarray  # [H, W] in [0, 1): how much focus varies over the sweep.


def choose_focal_planes(lf: LightField, num_planes: int | None = None, *, disparities=None,
                        max_disparity: float = 2.0, num_sweep: int = 33, sweep=None,
                        aperture=jnp.inf, window: int = 9, method: str = 'fourier',
                        pad: int | None = None, eps: float = 1e-6,
                        refine_passes: int = 2) -> FocalPlanes:
  """Focal planes for an all-in-focus focal stack, from a user list or chosen automatically.

  Sweeps `sweep` (default `disparity_sweep(max_disparity, num_sweep)`) and measures focus per pixel.
  With `disparities` given, those planes are used as they are; otherwise `num_planes` sweep values
  are chosen by the weighted max-coverage rule of the section comment. In both cases the coverage
  compares each pixel's focus in its best chosen slice with its best focus over the sweep and the
  chosen planes (so it stays in [0, 1] for user planes off the sweep grid).

  Args:
    lf: the light field (concrete arrays; this driver is not meant to be jitted, its parts are).
    num_planes: N for automatic selection.
    disparities: optional user list [N]; overrides automatic selection.
    max_disparity, num_sweep: the default sweep, [-max_disparity, max_disparity] in num_sweep steps.
    sweep: optional explicit sweep [S].
    aperture: synthetic aperture radius in view steps (Euclidean).
    window: focus-measure window (pixels).
    method: shift method, 'fourier' or 'bilinear'.
    pad: Fourier reflect margin; default `required_pad(lf, largest |disparity|)`.
    eps, refine_passes: see `select_planes`.

  Returns:
    `FocalPlanes`.
  """
  if disparities is None and num_planes is None:
    raise ValueError('give num_planes (automatic choice) or disparities (user list)')
  if sweep is None:
    sweep = disparity_sweep(max_disparity, num_sweep)
  sweep = np.asarray(sweep, np.float32).reshape(-1)
  user = None if disparities is None else np.asarray(disparities, np.float32).reshape(-1)
  if pad is None:
    largest = float(np.max(np.abs(sweep)))
    if user is not None and user.size:
      largest = max(largest, float(np.max(np.abs(user))))
    pad = required_pad(lf, largest)
  if user is None:
    # [S, H, W]
    focus = _focus_sweep_jit(lf, sweep, aperture, window=window, method=method, pad=pad)
    indices, _, confidence = _select_planes_jit(
        focus, num_planes=num_planes, eps=eps, refine_passes=refine_passes)
    chosen = jnp.asarray(sweep)[indices]
    chosen_focus = focus[indices]
    all_focus = focus
  else:
    user = np.sort(user)
    both = np.concatenate([sweep, user])  # One pass over the sweep and the user's planes.
    all_focus = _focus_sweep_jit(lf, both, aperture, window=window, method=method, pad=pad)
    focus, chosen_focus = all_focus[:sweep.size], all_focus[sweep.size:]
    chosen = jnp.asarray(user)
    _, confidence = _relative_focus(focus, eps)
  best_disparity = jnp.asarray(sweep)[jnp.argmax(focus, axis=0)]
  fmax = jnp.max(all_focus, axis=0)
  coverage = jnp.max((chosen_focus + eps) / (fmax + eps), axis=0)
  slice_index = jnp.argmax(chosen_focus, axis=0).astype(jnp.int32)
  return FocalPlanes(chosen, coverage, slice_index, jnp.asarray(sweep), best_disparity, confidence)


# ------------------------------------------------------------------------------------------------
# 4. The pipeline as calls: light field -> focal stack -> fusion.

SHIFT_METHOD = 'fourier'  # See the section 2 comment.
MAX_SWEEP = 257  # Each swept plane is a refocused image of the whole view: bounded work.


def _parse_crop(values):
  if not values:
    return None
  try:
    crop = tuple(int(v) for v in values)
  except (TypeError, ValueError):
    crop = None
  if crop is None or len(crop) != 4:
    raise errors.InputError(f'--crop must be four integers y,x,h,w, got {",".join(map(str, values))}')
  return crop


def _parse_planes(values):
  if not values:
    return None
  try:
    return tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise errors.InputError(f'--planes must be comma-separated numbers (disparities), got '
                            f'{",".join(map(str, values))}') from None


def _parse_sweep(values):
  values = list(values)
  try:
    if len(values) != 3:
      raise ValueError
    return (float(values[0]), float(values[1]), int(values[2]))
  except (TypeError, ValueError):
    raise errors.InputError(f'--sweep must be min,max,count (e.g. -2,2,33), got '
                            f'{",".join(map(str, values))}') from None


@dataclasses.dataclass(frozen=True)
class LightFieldConfig:
  """How a light field becomes the focal stack that DFP fuses (the light-field job's flags)."""
  crop: tuple | None = config_lib.option(
      None, "y,x,h,w: process only this region of the views (their own pixel coordinates, before "
      '--lf_downsample).', kind='list', parse=_parse_crop)
  downsample: int = config_lib.option(
      1, 'Area-average every view by this factor first; with --scale equal to it, the output has the '
      'original resolution and is scored against the original centre view.', flag='lf_downsample')
  num_planes: int = config_lib.option(
      2, "Focal planes N of the stack, chosen automatically to cover the scene's depth (ignored with "
      '--planes).')
  planes: tuple | None = config_lib.option(
      None, 'Focal planes as comma-separated disparities (pixels per view step, after --lf_downsample); '
      'overrides the automatic choice.', kind='list', parse=_parse_planes)
  aperture: float = config_lib.option(
      math.inf, 'Synthetic aperture radius in view steps (Euclidean distance from the centre view); inf '
      '= all views, 0 = centre view only.')
  sweep: tuple = config_lib.option(
      (-2.0, 2.0, 33), 'min,max,count: disparities swept to measure focus (automatic planes, coverage).',
      kind='list', parse=_parse_sweep)

  def __post_init__(self):
    if self.crop is not None:
      y, x, h, w = self.crop
      if y < 0 or x < 0 or h < 1 or w < 1:
        raise errors.InputError(f'--crop={y},{x},{h},{w}: y and x must be >= 0, h and w >= 1')
    if self.downsample < 1:
      raise errors.InputError(f'--lf_downsample must be an integer >= 1, got {self.downsample}')
    if not self.aperture >= 0:
      raise errors.InputError(f'--aperture must be >= 0 (view steps; inf = all views), got {self.aperture}')
    lo, hi, num = self.sweep
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and 2 <= num <= MAX_SWEEP):
      raise errors.InputError(f'--sweep={lo:g},{hi:g},{num}: need finite min < max and 2 <= count <= '
                              f'{MAX_SWEEP}')
    if self.planes is not None:
      text = ','.join(f'{d:g}' for d in self.planes)
      if not all(math.isfinite(d) for d in self.planes):
        raise errors.InputError(f'--planes must be finite numbers, got {text}')
      if len(set(self.planes)) != len(self.planes):
        raise errors.InputError(f'--planes has repeated values: {text}')
      if len(self.planes) < 2:
        raise errors.InputError(f'--planes needs at least 2 disparities for a focal stack to fuse, got {text}')
    elif not 2 <= self.num_planes <= num:
      raise errors.InputError(f'--num_planes must be between 2 and the {num} swept disparities '
                              f'(--sweep), got {self.num_planes}')

  def sweep_values(self) -> np.ndarray:
    """The swept disparities [count], float32."""
    return disparity_sweep(self.sweep[1], self.sweep[2], min_disparity=self.sweep[0])

  def user_planes(self) -> np.ndarray | None:
    """--planes sorted ascending as float32, or None for the automatic choice."""
    return None if self.planes is None else np.sort(np.asarray(self.planes, np.float32))


class FocalStack(NamedTuple):
  """What `make_focal_stack` returns (NumPy arrays)."""
  slices: np.ndarray  # [N, H, W, C] refocused images in [0, 1], in plane order.
  planes: np.ndarray  # [N] disparities, ascending (pixels per view step).
  how: str  # 'auto' (chosen from the sweep) or 'user'.
  coverage: np.ndarray  # [H, W] focus in the best chosen slice / best focus over the sweep.
  slice_index: np.ndarray  # [H, W] each pixel's sharpest slice (int32).
  sweep: np.ndarray  # [S] swept disparities.
  pad: int  # Fourier reflect margin used.
  aperture_views: int  # Views inside the synthetic aperture.


def aperture_reach(lf: LightField, aperture: float) -> tuple[int, float]:
  """(views inside the aperture, largest |offset| among them in view steps)."""
  offsets = np.asarray(view_offsets(lf.rows, lf.cols, lf.center))
  weights = np.asarray(aperture_weights(jnp.asarray(offsets), aperture))
  n = int(np.sum(weights))
  return n, (float(np.max(np.abs(offsets[weights > 0]))) if n else 0.0)


def check_disparities(lf: LightField, config: LightFieldConfig) -> None:
  """Refuses (InputError) a sweep or planes whose shift of the outermost views in the aperture is as
  large as the views themselves."""
  h, w, _ = lf.image_shape
  _, reach = aperture_reach(lf, config.aperture)
  flag, values = (('--sweep', config.sweep_values()) if config.planes is None
                  else ('--planes', config.user_planes()))
  far = float(np.max(np.abs(values)))
  if reach > 0 and far * reach >= min(h, w):
    raise errors.InputError(
        f'{flag}: disparity {far:g} shifts the outermost views in the aperture ({reach:g} view steps) by '
        f'{far * reach:.0f} px, as much as the {h}x{w} processed views; use |disparity| < '
        f'{min(h, w) / reach:.3g} (pixels per view step)')


def largest_disparity(config: LightFieldConfig) -> float:
  """The largest |disparity| the light-field stage refocuses at (the sweep, and the user's planes)."""
  values = config.sweep_values()
  if config.planes is not None:
    values = np.concatenate([values, config.user_planes()])
  return float(np.max(np.abs(values)))


def make_focal_stack(lf: LightField, config: LightFieldConfig = LightFieldConfig()) -> FocalStack:
  """Chooses the focal planes (`config.planes`, or `config.num_planes` automatically from the sweep)
  and refocuses `lf` at them by shift-and-add over the synthetic aperture (`config.aperture`).

  `config.crop` and `config.downsample` are the loader's (`load_light_field`); here they are unused.
  """
  check_disparities(lf, config)
  user = config.user_planes()
  fp = choose_focal_planes(lf, None if user is not None else config.num_planes, disparities=user,
                           sweep=config.sweep_values(), aperture=config.aperture, method=SHIFT_METHOD)
  planes = np.asarray(fp.disparities, np.float32)
  pad = required_pad(lf, float(np.max(np.abs(planes))))
  stack = focal_stack(lf, jnp.asarray(planes), config.aperture, method=SHIFT_METHOD, pad=pad)
  return FocalStack(np.clip(np.asarray(stack), 0.0, 1.0), planes, 'user' if user is not None else 'auto',
                    np.asarray(fp.coverage), np.asarray(fp.slice_index), np.asarray(fp.sweep), pad,
                    aperture_reach(lf, config.aperture)[0])


def slice_names(source: str, planes) -> list[str]:
  """Names of the slices in messages: '<source> refocused at d=+0.500'."""
  return [f'{source} refocused at d={d:+.3f}' for d in planes]


def fuse_light_field(lf: LightField, config, lf_config: LightFieldConfig = LightFieldConfig(), key=None,
                     progress=None, source: str = 'light field'):
  """Light field -> focal stack (`make_focal_stack`) -> DFP (`fusion.fuse` with FusionConfig `config`).

  Returns (FusionResult, FocalStack). `progress` as for `fusion.fuse` (default: its logger); `source`
  names the light field in error messages.
  """
  stack = make_focal_stack(lf, lf_config)
  kwargs = {} if progress is None else {'progress': progress}
  result = fusion.fuse(list(stack.slices), config=config, key=key,
                       names=slice_names(source, stack.planes), **kwargs)
  return result, stack
