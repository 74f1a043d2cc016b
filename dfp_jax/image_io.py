"""Image files: reading (OpenCV) and atomic writing of images and JSON.

* Reading: PNG, JPEG, BMP, TIFF (anything `cv2.imread` decodes), 8- or 16-bit (or float TIFF in
  [0, 1]), grey or colour; the alpha channel, if any, is dropped with a warning. An EXIF orientation
  tag (JPEG, TIFF) is applied, so images come out the way viewers show them. BGR -> RGB happens here
  and nowhere else. Values become float32 in [0, 1]; the bit depth is remembered so that 16-bit (and
  float) inputs give 16-bit outputs.
* Writing: PNG (or any format OpenCV writes) at 8 or 16 bits, grey stays grey, always written to a
  temporary name in the same folder and renamed, so no file is ever left half-written.
Result folders (staging, replacement, locks) are `output_folder`'s.

Every problem raises `InputError` with the file's path in the message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Sequence

from absl import logging
import cv2
import numpy as np

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


def _orientation_entry(data: bytes) -> tuple[int, int, str]:
  """(orientation 1-8, byte offset of its value in data or -1, byte order '<' / '>') of a JPEG's or
  TIFF's EXIF / IFD0 Orientation tag; (1, -1, '<') when there is none or it is malformed."""
  none = (1, -1, '<')

  def ifd0(base: int, tiff: bytes):
    if tiff[:4] not in (b'II*\x00', b'MM\x00*'):
      return none
    end = '<' if tiff[:2] == b'II' else '>'
    (offset,) = np.frombuffer(tiff[4:8], end + 'u4')
    if offset + 2 > len(tiff):
      return none
    (count,) = np.frombuffer(tiff[offset:offset + 2], end + 'u2')
    for i in range(int(count)):
      e = offset + 2 + 12 * i
      if e + 12 > len(tiff):
        break
      tag, typ = np.frombuffer(tiff[e:e + 4], end + 'u2')
      if tag == 0x0112 and typ == 3:  # Orientation, SHORT.
        (value,) = np.frombuffer(tiff[e + 8:e + 10], end + 'u2')
        return (int(value), base + e + 8, end) if 1 <= value <= 8 else none
    return none

  if data[:2] == b'\xff\xd8':  # JPEG: look for the APP1 'Exif' segment before the image data.
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
      marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], 'big')
      if marker == 0xE1 and data[i + 4:i + 10] == b'Exif\x00\x00':
        return ifd0(i + 10, data[i + 10:i + 2 + length])
      if marker in (0xDA, 0xD9):  # Start of scan / end of image: no EXIF before the pixels.
        break
      i += 2 + length
    return none
  return ifd0(0, data)  # IFD0 may follow the pixels (libtiff writes it last).


def _png_colour_type(data: np.ndarray) -> int | None:
  """The colour type of a PNG's IHDR (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA), else None."""
  if data.size > 25 and data[:8].tobytes() == b'\x89PNG\r\n\x1a\n' and data[12:16].tobytes() == b'IHDR':
    return int(data[25])
  return None


def exif_orientation(data: bytes) -> int:
  """The EXIF orientation tag (1-8) of a JPEG or TIFF file's bytes; 1 when there is none."""
  return _orientation_entry(memoryview(data))[0]


def decode_upright(data: np.ndarray, path: str) -> np.ndarray | None:
  """cv2.imdecode(IMREAD_UNCHANGED) of a file's bytes, turned upright by its EXIF orientation.

  Whether OpenCV's decoders apply the orientation themselves differs by format and version (OpenCV 5's
  TIFF decoder does, even with IMREAD_IGNORE_ORIENTATION; its JPEG decoder does not under
  IMREAD_UNCHANGED). So the tag is set to 1 in a copy of the bytes before decoding, which gives the
  stored pixels with every decoder, and the orientation is applied here, once."""
  orientation, at, end = _orientation_entry(memoryview(data))
  if orientation == 1:
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  stored = data.copy()
  stored[at:at + 2] = np.frombuffer(np.array([1], end + 'u2').tobytes(), np.uint8)
  im = cv2.imdecode(stored, cv2.IMREAD_UNCHANGED)
  if im is None:
    return None
  logging.info('%s: applying its EXIF orientation %d', path, orientation)
  return apply_orientation(im, orientation)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
  """Turns an image [H, W, ...] stored with EXIF `orientation` into the upright view (as viewers do)."""
  ops = {1: lambda x: x, 2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
         5: lambda x: np.swapaxes(x, 0, 1), 6: lambda x: np.swapaxes(x[::-1], 0, 1),
         7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1), 8: lambda x: np.swapaxes(x, 0, 1)[::-1]}
  return np.ascontiguousarray(ops[orientation](image))


def read_image(path: str) -> tuple[np.ndarray, ImageInfo]:
  """Reads an image file as float32 [H, W, C] in [0, 1] (C = 1 or 3, RGB order)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(f'{path}: file not found')
  if os.path.isdir(path):
    raise InputError(f'{path}: is a folder, not an image file')
  if not os.access(path, os.R_OK):
    raise InputError(f'{path}: file is not readable (permission denied)')
  data = np.fromfile(path, dtype=np.uint8)
  if data.size == 0:
    raise InputError(f'{path}: file is empty')
  im = decode_upright(data, path)
  if im is None:
    raise InputError(f'{path}: not an image OpenCV can decode (PNG, JPEG, BMP, TIFF, ...)')
  if data[:4].tobytes() in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):  # TIFF, BigTIFF.
    try:
      pages = cv2.imcount(path)
    except cv2.error:
      pages = 1
    if pages > 1:
      logging.warning('%s: a TIFF of %d pages; using the first', path, pages)
  if im.ndim == 2:
    im = im[..., None]
  had_alpha = False
  if im.shape[2] == 4:
    logging.warning('%s: dropping the alpha channel', path)
    im, had_alpha = im[..., :3], True
    if _png_colour_type(data) == 4:  # Grey + alpha, which OpenCV decodes as BGRA: grey it stays.
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


def load_inputs(paths: Sequence[str]) -> tuple[list[np.ndarray], list[ImageInfo]]:
  """Reads N >= 2 images of one scene and checks they fit together.

  Mixed grey and colour inputs: the grey ones are converted to colour (R = G = B) with a warning, so
  the scene fuses in colour. Different sizes are refused (the images must be registered).
  """
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
  images, infos = [], []
  for p in paths:
    im, info = read_image(p)
    images.append(im)
    infos.append(info)
  h, w = images[0].shape[:2]
  for im, info in zip(images[1:], infos[1:]):
    if im.shape[:2] != (h, w):
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
