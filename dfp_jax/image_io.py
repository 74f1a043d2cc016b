"""Image and file I/O with OpenCV: the only library module that touches the disk.

* Reading: PNG, JPEG, BMP, TIFF (anything `cv2.imread` decodes), 8- or 16-bit, grey or colour; the
  alpha channel, if any, is dropped with a warning. BGR -> RGB happens here and nowhere else. Values
  become float32 in [0, 1]; the bit depth is remembered so that 16-bit inputs give 16-bit outputs.
* Writing: PNG (or any format OpenCV writes) at 8 or 16 bits, grey stays grey, always written to a
  temporary name in the same folder and renamed, so no file is ever left half-written.
* `StagingDir`: a run writes all its outputs into a temporary sibling folder that replaces the output
  folder only when everything succeeded; an existing output folder is never overwritten halfway.

Every problem raises `InputError` with the file's path in the message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
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
  im = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  if im is None:
    raise InputError(f'{path}: not an image OpenCV can decode (PNG, JPEG, BMP, TIFF, ...)')
  if im.ndim == 2:
    im = im[..., None]
  had_alpha = False
  if im.shape[2] == 4:
    logging.warning('%s: dropping the alpha channel', path)
    im, had_alpha = im[..., :3], True
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
    if not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1:
      raise InputError(f'{path}: floating-point image must have finite values in [0, 1], '
                       f'got [{np.nanmin(out):.3g}, {np.nanmax(out):.3g}]')
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
  if len(paths) < 2:
    raise InputError(f'need at least 2 input images, got {len(paths)}: {", ".join(paths) or "none"}')
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
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions.
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


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


class StagingDir:
  """Writes a run's outputs into a temporary sibling folder, moved into place on success.

  Usage:
    with StagingDir(output_dir) as tmp:
      ... write files under tmp ...
    # Now output_dir holds exactly the new files; if an exception escaped, output_dir is unchanged
    # and the temporary folder is removed.
  """

  def __init__(self, output_dir: str):
    self.output_dir = os.path.abspath(os.fspath(output_dir))
    parent = os.path.dirname(self.output_dir)
    if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
      raise InputError(f'{output_dir}: exists and is not a folder')
    try:
      os.makedirs(parent, exist_ok=True)
      self.path = tempfile.mkdtemp(prefix='.' + os.path.basename(self.output_dir) + '.tmp-', dir=parent)
      os.chmod(self.path, 0o777 & ~_umask())
    except OSError as e:
      raise InputError(f'{output_dir}: cannot write the output folder ({e.strerror or e})') from None

  def __enter__(self) -> str:
    return self.path

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self.path, ignore_errors=True)
      return False
    self.commit()
    return False

  def commit(self) -> None:
    old = None
    if os.path.exists(self.output_dir):
      old = tempfile.mkdtemp(prefix='.' + os.path.basename(self.output_dir) + '.old-',
                             dir=os.path.dirname(self.output_dir))
      os.rmdir(old)
      os.rename(self.output_dir, old)
      logging.warning('%s existed: replaced by the new results', self.output_dir)
    os.rename(self.path, self.output_dir)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
