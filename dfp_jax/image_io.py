"""Image files: headers (Pillow), pixels (OpenCV), and atomic writing of images and JSON.

* Headers: `read_header` gives a file's size, channels, EXIF orientation and page count without
  decoding its pixels, so sizes are checked (and memory estimated) before anything large is decoded.
  Anything that is not a regular file (a FIFO, a socket, a device) is refused before it is opened.
* Reading: PNG, JPEG, BMP, TIFF, WebP, PPM/PGM, 8- or 16-bit (or float TIFF in [0, 1]), grey or
  colour; the alpha channel, if any, is dropped with a warning. The EXIF orientation is applied, so
  images come out the way viewers show them. BGR -> RGB happens here and nowhere else. Values become float32 in [0, 1]; the bit depth is remembered so that 16-bit (and
  float) inputs give 16-bit outputs.
* Writing: PNG (or any format OpenCV writes) at 8 or 16 bits, grey stays grey, always written to a
  temporary name in the same folder and renamed, so no file is ever left half-written.
Result folders (staging, replacement, locks) are `output_folder`'s.

Every problem raises `InputError` with the file's path in the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import stat
import tempfile
from typing import Sequence

from absl import logging
import cv2
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from dfp_jax.errors import InputError

READ_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """What was read from one file."""
  path: str
  height: int
  width: int
  channels: int  # 1 (grey) or 3 (RGB) after dropping alpha.
  bit_depth: int  # 8 or 16 (32 for float TIFF).
  had_alpha: bool

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ImageHeader:
  """What a file's header says, read without decoding the pixels (Pillow)."""
  path: str
  height: int  # Upright: after the EXIF orientation.
  width: int
  channels: int  # 1 (grey) or 3 (colour), as `read_image` will give them (alpha dropped).
  format: str  # Pillow's name of the format: 'PNG', 'JPEG', 'TIFF', 'BMP', ...
  mode: str  # Pillow's mode ('L', 'LA', 'RGB', 'I;16', ...).
  orientation: int  # EXIF orientation 1-8 (1: stored upright).
  pages: int  # Frames of a multi-page file (`read_image` uses the first).


def check_readable(path: str) -> None:
  """Raises InputError unless `path` is an existing, readable, non-empty regular file. A FIFO, socket or
  device would block the reader or never end: such a path is refused before anything opens it."""
  if not os.path.exists(path):
    raise InputError(f'{path}: file not found')
  if os.path.isdir(path):
    raise InputError(f'{path}: is a folder, not an image file')
  mode = os.stat(path).st_mode
  if not stat.S_ISREG(mode):
    kind = ('a FIFO (named pipe)' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode)
            else 'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'not a regular file')
    raise InputError(f'{path}: is {kind}, not an image file; give a regular image file')
  if not os.access(path, os.R_OK):
    raise InputError(f'{path}: file is not readable (permission denied)')
  if os.path.getsize(path) == 0:
    raise InputError(f'{path}: file is empty')


_GREY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')
_ORIENTATION = 0x0112  # The EXIF / TIFF orientation tag.


def read_header(path: str) -> ImageHeader:
  """The size, channels, orientation and page count of an image file, from its header (no pixels are
  decoded, so any size is cheap to ask about).

  Pillow's decompression-bomb check (it refuses images above about 179 megapixels) is switched off for
  this call on purpose: what is too large is decided by the caller (`memory.check_memory` on the sizes
  returned here), before anything is decoded. Raises InputError for a file that is not an image.
  """
  path = os.fspath(path)
  check_readable(path)
  try:
    with _no_pixel_limit(), Image.open(path) as im:
      width, height = im.size
      orientation = _orientation(im)
      pages = int(getattr(im, 'n_frames', 1) or 1)
      fmt, mode = im.format or '', im.mode
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise InputError(f'{path}: not an image this tool can read (PNG, JPEG, BMP, TIFF, WebP, PPM/PGM): '
                     f'{str(e) or type(e).__name__}') from None
  if not 1 <= orientation <= 8:
    orientation = 1
  if orientation >= 5:  # Stored transposed.
    width, height = height, width
  return ImageHeader(path, height, width, 1 if mode in _GREY_MODES else 3, fmt, mode, orientation, pages)


def _orientation(im) -> int:
  """The EXIF orientation of an opened Pillow image, without decoding its pixels (Pillow's own
  `getexif` decodes a PNG to look for an eXIf chunk after the pixels; one before them is in `info`)."""
  if 'exif' in im.info:
    exif = Image.Exif()
    exif.load(im.info['exif'])
  elif im.format in ('JPEG', 'MPO', 'TIFF'):  # Read with the header.
    exif = im.getexif()
  else:
    return 1
  return int(exif.get(_ORIENTATION, 1) or 1)


@contextlib.contextmanager
def _no_pixel_limit():
  """Pillow's decompression-bomb limit lifted for a header read (restored after; see `read_header`)."""
  saved = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = saved


@functools.lru_cache(maxsize=None)
def opencv_applies_orientation(fmt: str) -> bool:
  """Whether this OpenCV's decoder of format `fmt` turns images upright by their EXIF orientation by
  itself under IMREAD_UNCHANGED (it differs by format and version: OpenCV 5's TIFF decoder does, its
  JPEG decoder does not). Found by decoding a 2 x 3 image written by Pillow with orientation 6."""
  fmt = 'JPEG' if fmt == 'MPO' else fmt  # A camera's multi-picture JPEG: OpenCV's JPEG decoder.
  buffer = io.BytesIO()
  image = Image.fromarray(np.zeros((2, 3), np.uint8))
  try:
    if fmt == 'TIFF':
      image.save(buffer, fmt, tiffinfo={_ORIENTATION: 6})
    else:
      exif = Image.Exif()
      exif[_ORIENTATION] = 6
      image.save(buffer, fmt, exif=exif.tobytes())
  except (OSError, ValueError, KeyError):  # Pillow cannot write it: OpenCV is asked as it is.
    return False
  decoded = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
  return decoded is not None and decoded.shape[:2] == (3, 2)


def _truncated(data: np.ndarray, fmt: str) -> bool:
  """A PNG without its closing IEND chunk, or a JPEG without an end-of-image marker near its end: the
  file was cut short (a JPEG's entropy-coded data never holds 0xFF 0xD9: 0xFF is stuffed there)."""
  if fmt == 'PNG':
    return b'IEND' not in data[-64:].tobytes()
  if fmt in ('JPEG', 'MPO'):
    return b'\xff\xd9' not in data[-65536:].tobytes()
  return False


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
  """Turns an image [H, W, ...] stored with EXIF `orientation` into the upright view (as viewers do)."""
  ops = {1: lambda x: x, 2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
         5: lambda x: np.swapaxes(x, 0, 1), 6: lambda x: np.swapaxes(x[::-1], 0, 1),
         7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1), 8: lambda x: np.swapaxes(x, 0, 1)[::-1]}
  return np.ascontiguousarray(ops[orientation](image))


def read_image(path: str, header: ImageHeader | None = None) -> tuple[np.ndarray, ImageInfo]:
  """Reads an image file as float32 [H, W, C] in [0, 1] (C = 1 or 3, RGB order), upright by its EXIF
  orientation. `header`: its `read_header`, when the caller has it already."""
  path = os.fspath(path)
  header = header or read_header(path)
  if header.pages > 1:
    logging.warning('%s: a %s of %d pages; using the first', path, header.format or 'file', header.pages)
  data = np.fromfile(path, dtype=np.uint8)
  im = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  if im is None or _truncated(data, header.format):
    if _truncated(data, header.format):
      raise InputError(f'{path}: the {header.format} file is truncated (it ends before its end marker); '
                       'copy it again from the camera or the original')
    raise InputError(f'{path}: a {header.format or "image"} file OpenCV cannot decode (damaged, or an '
                     'unsupported variant of the format)')
  if header.orientation != 1 and not opencv_applies_orientation(header.format):
    logging.info('%s: applying its EXIF orientation %d', path, header.orientation)
    im = apply_orientation(im, header.orientation)
  if im.ndim == 2:
    im = im[..., None]
  had_alpha = False
  if im.shape[2] == 4:
    logging.warning('%s: dropping the alpha channel', path)
    im, had_alpha = im[..., :3], True
    if header.mode in _GREY_MODES:  # Grey + alpha, which OpenCV decodes as BGRA: grey it stays.
      im = im[..., :1]
  elif im.shape[2] == 2:  # Grey + alpha.
    logging.warning('%s: dropping the alpha channel', path)
    im, had_alpha = im[..., :1], True
  if im.shape[2] not in (1, 3):
    raise InputError(f'{path}: unsupported channel count {im.shape[2]}')
  if im.dtype == np.uint8:
    depth, out = 8, im.astype(np.float32) / 255.0
  elif im.dtype == np.uint16:
    depth, out = 16, im.astype(np.float32) / 65535.0
  elif im.dtype in (np.float32, np.float64):
    depth, out = 32, im.astype(np.float32)
    bad = int(np.sum(~np.isfinite(out)))
    if bad:
      raise InputError(f'{path}: floating-point image must have finite values in [0, 1], got {bad} '
                       'NaN or infinite value(s)')
    if out.min() < 0 or out.max() > 1:
      raise InputError(f'{path}: floating-point image must have finite values in [0, 1], '
                       f'got [{out.min():.3g}, {out.max():.3g}]')
  else:
    raise InputError(f'{path}: unsupported pixel type {im.dtype} (use 8- or 16-bit images)')
  if out.shape[2] == 3:
    out = out[..., ::-1]
  out = np.ascontiguousarray(out)
  return out, ImageInfo(path, out.shape[0], out.shape[1], out.shape[2], depth, had_alpha)


def read_headers(paths: Sequence[str]) -> list[ImageHeader]:
  """The headers of N >= 2 images of one scene, checked to fit together before any is decoded: no
  empty path, no file given twice (also under another name, a link or a hard link), every file an
  image, all of one (upright) size (the images must be registered)."""
  empty = [i + 1 for i, p in enumerate(paths) if not os.fspath(p).strip()]
  if empty:
    raise InputError(f'input {empty[0]} of {len(paths)} is an empty path (two commas in a row, or a '
                     f'trailing comma, in --inputs?): {",".join(map(os.fspath, paths))}')
  if len(paths) < 2:
    raise InputError(f'need at least 2 input images, got {len(paths)}: {", ".join(paths) or "none"}')
  seen = {}
  for p in paths:
    if os.path.exists(p):  # The same file under another name, a symlink or a hard link.
      st = os.stat(p)
      key = (st.st_dev, st.st_ino)
    else:
      key = os.fspath(p)
    if key in seen:
      raise InputError(f'{p}: given twice (also as {seen[key]}); each input must be a different photo')
    seen[key] = p
  headers = [read_header(p) for p in paths]
  h, w = headers[0].height, headers[0].width
  for hd in headers[1:]:
    if (hd.height, hd.width) != (h, w):
      raise InputError(f'{hd.path}: size {hd.height}x{hd.width} (HxW) differs from {headers[0].path} '
                       f'({h}x{w}); inputs must be registered images of one size')
  return headers


def load_inputs(paths: Sequence[str], headers: Sequence[ImageHeader] | None = None
                ) -> tuple[list[np.ndarray], list[ImageInfo]]:
  """Reads N >= 2 images of one scene (`read_headers` checks them first, unless the caller did).

  Mixed grey and colour inputs: the grey ones are converted to colour (R = G = B) with a warning, so
  the scene fuses in colour. Different sizes are refused (the images must be registered).
  """
  headers = list(headers) if headers is not None else read_headers(paths)
  images, infos = [], []
  for p, header in zip(paths, headers):
    im, info = read_image(p, header)
    images.append(im)
    infos.append(info)
  h, w = images[0].shape[:2]
  for im, info in zip(images[1:], infos[1:]):
    if im.shape[:2] != (h, w):  # Only when a decoder disagrees with its file's header.
      raise InputError(f'{info.path}: size {im.shape[0]}x{im.shape[1]} (HxW) differs from '
                       f'{infos[0].path} ({h}x{w}); inputs must be registered images of one size')
  if len({im.shape[2] for im in images}) > 1:
    for i, info in enumerate(infos):
      if images[i].shape[2] == 1:
        logging.warning('%s is grey but other inputs are colour: converting it to colour (R=G=B)',
                        info.path)
        images[i] = np.repeat(images[i], 3, axis=2)
  for j in range(1, len(images)):
    for i in range(j):
      if images[i].shape == images[j].shape and np.array_equal(images[i], images[j]):
        logging.warning('%s and %s have identical pixels: nothing to fuse between them',
                        infos[i].path, infos[j].path)
  return images, infos


def to_integer_image(image: np.ndarray, bit_depth: int = 8) -> np.ndarray:
  """float [H, W, C] in [0, 1] (RGB) -> uint8/uint16 [H, W(, 3)] in OpenCV's BGR order."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if bit_depth not in (8, 16):
    raise ValueError(f'bit_depth must be 8 or 16, got {bit_depth}')
  top = 255.0 if bit_depth == 8 else 65535.0
  dtype = np.uint8 if bit_depth == 8 else np.uint16
  out = np.round(np.clip(image, 0.0, 1.0) * top).astype(dtype)
  if out.shape[2] == 3:
    out = out[..., ::-1]
  elif out.shape[2] == 1:
    out = out[..., 0]
  return np.ascontiguousarray(out)


def _atomic_write_bytes(path: str, data: bytes) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; give the file the usual permissions.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_image(path: str, image: np.ndarray, bit_depth: int = 8) -> None:
  """Writes float [H, W, C] RGB/grey in [0, 1] (or uint8 [H, W(, 3)] RGB) atomically."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    out = image[..., ::-1] if image.ndim == 3 and image.shape[2] == 3 else image
    out = np.ascontiguousarray(out)
  else:
    out = to_integer_image(image, bit_depth)
  ext = os.path.splitext(path)[1] or '.png'
  ok, buf = cv2.imencode(ext, out)
  if not ok:
    raise InputError(f'{path}: OpenCV could not encode an image of shape {out.shape} as {ext}')
  _atomic_write_bytes(path, buf.tobytes())


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (indented, keys in insertion order)."""
  _atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + '\n').encode())


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  return str(o)


def umask() -> int:
  """The process's file-creation mask."""
  mask = os.umask(0)
  os.umask(mask)
  return mask
