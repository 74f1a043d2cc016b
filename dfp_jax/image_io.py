"""Image and file I/O with OpenCV: the only library module that touches the disk.

* Reading: PNG, JPEG, BMP, TIFF (anything `cv2.imread` decodes), 8- or 16-bit (or float TIFF in
  [0, 1]), grey or colour; the alpha channel, if any, is dropped with a warning. An EXIF orientation
  tag (JPEG, TIFF) is applied, so images come out the way viewers show them. BGR -> RGB happens here
  and nowhere else. Values become float32 in [0, 1]; the bit depth is remembered so that 16-bit (and
  float) inputs give 16-bit outputs.
* Writing: PNG (or any format OpenCV writes) at 8 or 16 bits, grey stays grey, always written to a
  temporary name in the same folder and renamed, so no file is ever left half-written.
* `StagingDir`: a run writes all its outputs into a temporary sibling folder that replaces the output
  folder only when everything succeeded; an existing output folder is never overwritten halfway, and
  only an empty folder or a previous result of this tool (its summary.json lists every entry) is
  ever replaced: a folder holding anything else, the working folder or an input is refused.

Every problem raises `InputError` with the file's path in the message.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
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


def auto_bit_depth(infos: Sequence[ImageInfo]) -> int:
  """Output bit depth for `--output_bit_depth=auto`: 16 if any input has more than 8 bits, else 8."""
  return 16 if any(i.bit_depth > 8 for i in infos) else 8


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


def _file_in_path(folder: str) -> str | None:
  """The first existing ancestor of `folder` (itself included) when that is not a folder, else None."""
  p = os.path.abspath(folder)
  while not os.path.exists(p):
    up = os.path.dirname(p)
    if up == p:
      return None
    p = up
  return None if os.path.isdir(p) else p


def is_inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies inside it (symbolic links resolved)."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_replaceable(output_dir: str, protect: Sequence[str] = ()) -> None:
  """Raises InputError unless replacing `output_dir` by a new result would lose nothing of the user's.

  Replaceable: a folder that does not exist yet, an empty one, or a previous result of this tool,
  i.e. one whose summary.json (written by dfp_jax) lists every entry of the folder. Never: the working
  folder or a folder that holds it, or one that holds any of `protect` (the inputs).
  """
  shown = os.fspath(output_dir)
  if is_inside(os.getcwd(), output_dir):
    raise InputError(f'{shown}: is the working folder or holds it; refusing to replace it with the results '
                     '(choose a new --output_dir, e.g. outputs/run)')
  for p in protect:
    if is_inside(p, output_dir):
      raise InputError(f'{shown}: holds the input {p}; refusing to replace it with the results (choose '
                       'another --output_dir)')
  if not os.path.isdir(output_dir):
    return
  entries = sorted(os.listdir(output_dir))
  if not entries:
    return
  try:
    with open(os.path.join(output_dir, 'summary.json'), encoding='utf-8') as f:
      summary = json.load(f)
    files = summary['output']['files']
    if 'dfp_jax_version' not in summary and 'dfp_jax' not in summary.get('versions', {}):
      raise KeyError('dfp_jax_version')
  except (OSError, ValueError, KeyError, TypeError):
    raise InputError(f'{shown}: exists and is not a previous dfp_jax result (no summary.json of ours); '
                     f'refusing to replace it, which would delete its {len(entries)} '
                     f'entr{"y" if len(entries) == 1 else "ies"} (e.g. '
                     f'{entries[0]}): choose another --output_dir or move that folder away') from None
  ours = {os.path.normpath(x).split(os.sep)[0] for x in files} | {'summary.json'}
  extra = [e for e in entries if e not in ours]
  if extra:
    more = f' and {len(extra) - 3} more' if len(extra) > 3 else ''
    raise InputError(f'{shown}: a previous dfp_jax result, but it also holds {", ".join(extra[:3])}{more}, '
                     'which this tool did not write; refusing to replace it (move those away or choose '
                     'another --output_dir)')


def resolve_output_dir(output_dir: str) -> str:
  """The folder a run writes for `output_dir`: symbolic links resolved (a link to a folder: its target;
  'link/../out' is '<the link target's parent>/out', as the kernel reads it). Every check and the commit
  use this one path. A trailing slash does not hide a file of that name. A dangling link is refused."""
  raw = os.fspath(output_dir)  # Not abspath first: it would drop 'link/..' before the link is read.
  link = raw.rstrip(os.sep) or raw
  if os.path.islink(link) and not os.path.exists(link):
    raise InputError(f'{output_dir}: is a symbolic link to nothing ({os.readlink(link)}); remove it or '
                     'choose another --output_dir')
  return os.path.realpath(raw)


def check_output_dir(output_dir: str, protect: Sequence[str] = ()) -> None:
  """Raises InputError unless a run can write its results to `output_dir`: not a file, no file in the
  way of creating it, replaceable (`check_replaceable`), its nearest existing ancestor writable, and,
  if it exists, movable (`check_movable`: a mount point cannot be replaced). Entry points call it before
  any work (`StagingDir` checks again). Its one side effect: an existing folder is renamed to a sibling
  name and straight back, to probe that it can be moved."""
  path = resolve_output_dir(output_dir)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise InputError(f'{output_dir}: exists and is not a folder')
  parent = os.path.dirname(path)
  blocker = _file_in_path(parent)
  if blocker:
    raise InputError(f'{output_dir}: cannot create the output folder: {blocker} is a file, not a folder')
  check_replaceable(path, protect)
  existing = parent
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(f'{output_dir}: cannot write the output folder ({existing} is not writable)')
  check_movable(path, output_dir)


# Staging folders are named .<name>.tmp-<host>-<pid>-<random> (and .old- while the previous result is
# being replaced), and their run holds an exclusive flock on each while it lives, so that a later run can
# tell those left by a run that was killed (kill -9, power loss).
_STAGING_NAME = re.compile(r'\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d{1,10})-[A-Za-z0-9_]+')


def _lock_dir(path: str) -> int | None:
  """An fd of `path` holding an exclusive flock on it (None where the file system has no locks)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    return None
  return fd


def _unlock(fd: int | None) -> None:
  if fd is not None:
    os.close(fd)  # Closing the last fd releases the flock.


def _left_by_dead_run(path: str, host: str, pid: int) -> bool:
  """True only when all three say so: the folder was made on this host, its process is gone (in this
  pid namespace) and nobody holds its lock (which also covers a live run in another pid namespace,
  e.g. another container on the same host)."""
  if host != socket.gethostname():
    return False
  try:
    os.kill(pid, 0)
    return False  # Alive.
  except PermissionError:
    return False  # Alive, someone else's.
  except (ProcessLookupError, OverflowError):
    pass
  try:
    fd = _lock_dir(path)
  except OSError:
    return False
  if fd is None:  # Held by a live run, or the file system cannot tell: keep it.
    return False
  _unlock(fd)
  return True


def remove_stale_staging(output_dir: str) -> list:
  """Removes the staging folders of `output_dir` left by killed runs on this host (`_left_by_dead_run`);
  returns the paths it removed. Folders of live runs, of other hosts, or of the older unnamed kind are
  left alone. If the output folder is missing and a dead run left an `.old-` folder (killed between
  moving the previous result aside and moving the new one in), nothing is removed and a warning says
  where the previous result is: rename that folder back to keep it. Once the output folder exists
  again (a later run completed), such leftovers are removed."""
  output_dir = os.path.abspath(os.fspath(output_dir))
  parent, prefix = os.path.dirname(output_dir), '.' + os.path.basename(output_dir)
  try:
    names = os.listdir(parent)
  except OSError:
    return []
  stale = []
  for name in names:
    m = _STAGING_NAME.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
    path = os.path.join(parent, name)
    if m and os.path.isdir(path) and _left_by_dead_run(path, m['host'], int(m['pid'])):
      stale.append(path)
  if not os.path.exists(output_dir) and any('.old-' in os.path.basename(p) for p in stale):
    logging.warning('%s is missing and an interrupted run left %s: the previous result is probably in '
                    'the .old- folder (rename it back to keep it); nothing was removed', output_dir,
                    ', '.join(stale))
    return []
  removed = []
  for p in stale:
    shutil.rmtree(p, ignore_errors=True)
    if os.path.lexists(p):
      logging.warning('could not remove %s, left by an interrupted run', p)
    else:
      logging.warning('removed %s, left by an interrupted run', p)
      removed.append(p)
  return removed


def check_movable(path: str, name: str) -> None:
  """Refuses an existing output folder `path` (resolved) that cannot be renamed (a mount point, e.g. a
  container's volume, or an immutable folder): results are moved into place by renaming, so the run
  would otherwise fail only at its end. Probed by renaming the folder (empty or a previous result,
  `check_replaceable`) to a sibling name and straight back; `name` is the user's spelling."""
  if not os.path.isdir(path):
    return
  try:
    probe = tempfile.mkdtemp(prefix=_staging_prefix(path, 'old'), dir=os.path.dirname(path))
    os.rmdir(probe)  # A fresh name (as `commit` takes one).
    os.rename(path, probe)
  except OSError as e:
    raise InputError(f'{name}: cannot be replaced by a new result ({e.strerror or e}: a mount point such '
                     f'as a container volume, a read-only or locked folder); give a new folder inside it, '
                     f'e.g. --output_dir={os.path.join(name, "run1")}') from None
  try:
    os.rename(probe, path)
  except OSError as e:  # Only a run committing into the same folder in between could cause this.
    raise InputError(f'{name}: was moved to {probe} to probe it and could not be moved back '
                     f'({e.strerror or e}); move it back by hand') from None


def _staging_prefix(output_dir: str, kind: str) -> str:
  return f'.{os.path.basename(output_dir)}.{kind}-{socket.gethostname()}-{os.getpid()}-'


class StagingDir:
  """Writes a run's outputs into a temporary sibling folder, moved into place on success.

  Usage:
    with StagingDir(output_dir, protect=input_paths) as tmp:
      ... write files under tmp ...
    # Now output_dir holds exactly the new files; if an exception escaped, output_dir is unchanged
    # and the temporary folder is removed.

  An existing `output_dir` must be replaceable (`check_replaceable`): checked when the object is made,
  before any work, so a refused folder costs nothing.
  """

  def __init__(self, output_dir: str, protect: Sequence[str] = ()):
    """`protect`: paths (the inputs) that must not lie inside `output_dir`."""
    # A symlink to a folder: the results go to its target (the link itself is left as it is).
    self.output_dir = resolve_output_dir(output_dir)
    parent = os.path.dirname(self.output_dir)
    check_output_dir(output_dir, protect)  # Checks the same resolved path; probes that it can move.
    remove_stale_staging(self.output_dir)
    try:
      os.makedirs(parent, exist_ok=True)
      self.path = tempfile.mkdtemp(prefix=_staging_prefix(self.output_dir, 'tmp'), dir=parent)
      self._lock = _lock_dir(self.path)  # Held until the run ends: this folder is in use.
      os.chmod(self.path, 0o777 & ~_umask())
    except OSError as e:
      raise InputError(f'{output_dir}: cannot write the output folder ({e.strerror or e})') from None

  def __enter__(self) -> str:
    return self.path

  def __exit__(self, exc_type, exc, tb):
    try:
      if exc_type is not None:
        shutil.rmtree(self.path, ignore_errors=True)
        return False
      self.commit()
      return False
    finally:
      _unlock(self._lock)

  def _keep(self) -> str:
    """Renames the finished staging folder to .<name>.unplaced-..., which no later run removes as a
    stale staging folder; returns where the results are."""
    kept = tempfile.mkdtemp(prefix=_staging_prefix(self.output_dir, 'unplaced'),
                            dir=os.path.dirname(self.output_dir))
    try:
      os.rmdir(kept)
      os.rename(self.path, kept)
      return kept
    except OSError:
      return self.path

  def commit(self) -> None:
    old, old_lock = None, None
    if os.path.exists(self.output_dir):
      old = tempfile.mkdtemp(prefix=_staging_prefix(self.output_dir, 'old'),
                             dir=os.path.dirname(self.output_dir))
      os.rmdir(old)
      old_lock = _lock_dir(self.output_dir)  # The lock moves with the folder: .old- is in use.
      try:
        os.rename(self.output_dir, old)
      except OSError as e:
        _unlock(old_lock)
        raise InputError(f'{self.output_dir}: could not move the previous results aside '
                         f'({e.strerror or e}); the new results are in {self._keep()}') from None
      logging.warning('%s existed: replaced by the new results', self.output_dir)
    try:
      try:
        os.rename(self.path, self.output_dir)
      except OSError as e:
        if old is not None:
          os.rename(old, self.output_dir)  # Put the previous result back.
        raise InputError(f'{self.output_dir}: could not move the results into place '
                         f'({e.strerror or e}); they are in {self._keep()}') from None
      if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    finally:
      _unlock(old_lock)
