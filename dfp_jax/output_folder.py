"""Result folders: written in a staging folder and moved into place whole, nothing of the user's lost.

* `check_output_dir` (entry points call it before any work): the folder can be written, replaced and
  moved; only an empty folder or a previous result of this tool (its summary.json lists every entry) is
  ever replaced: a folder holding anything else, the working folder or an input is refused.
* `StagingDir`: a run writes all its outputs into a temporary sibling folder that replaces the output
  folder only when everything succeeded; an existing output folder is never overwritten halfway.
* Staging folders carry their host and pid in their name and are flock-ed by their run, so that
  `remove_stale_staging` removes only those left by killed runs (never a live run's).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Sequence

from absl import logging

from dfp_jax.errors import InputError
from dfp_jax.image_io import umask


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
  extra = _not_listed(output_dir, files)
  if extra:
    more = f' and {len(extra) - 3} more' if len(extra) > 3 else ''
    raise InputError(f'{shown}: a previous dfp_jax result, but it also holds {", ".join(extra[:3])}{more}, '
                     'which this tool did not write; refusing to replace it (move those away or choose '
                     'another --output_dir)')


def _not_listed(folder: str, files) -> list[str]:
  """Every entry below `folder` (recursively; links not followed) that is neither a file listed in
  `files` (summary.json's list of relative paths) nor a folder on the way to one."""
  listed = {os.path.normpath(str(x)) for x in files} | {'summary.json'}
  parents = {p for x in listed for p in _ancestors(os.path.dirname(x))}
  extra = []
  for root, dirs, names in os.walk(folder):
    rel = os.path.relpath(root, folder)
    keep = []
    for d in sorted(dirs):
      path = os.path.normpath(os.path.join(rel, d))
      if path in parents and not os.path.islink(os.path.join(root, d)):
        keep.append(d)
      elif path not in listed:  # A link to a folder may be listed as a file.
        extra.append(path + os.sep)
    dirs[:] = keep
    extra += [p for p in (os.path.normpath(os.path.join(rel, n)) for n in sorted(names)) if p not in listed]
  return extra


def _ancestors(path: str):
  """`path` and its parent folders ('a/b' -> 'a/b', 'a'); nothing for ''."""
  while path:
    yield path
    path = os.path.dirname(path)


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


def lock_path(path: str) -> int | None:
  """An fd of `path` (a folder or a file) holding an exclusive flock on it; None when another holds it
  or the file system has no locks."""
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    return None
  return fd


def unlock(fd: int | None) -> None:
  if fd is not None:
    os.close(fd)  # Closing the last fd releases the flock.


def left_by_dead_process(path: str, host: str, pid: int, missing_means_dead: bool = False) -> bool:
  """True only when all three say so: `path` (a staging folder, a liveness file) was made on this host,
  its process is gone (in this pid namespace) and nobody holds its lock (which also covers a live run
  in another pid namespace, e.g. another container on the same host). A `path` that no longer exists
  counts as unlocked with `missing_means_dead` (its process removed it on exit)."""
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
    fd = lock_path(path)
  except FileNotFoundError:
    return missing_means_dead
  except OSError:
    return False
  if fd is None:  # Held by a live run, or the file system cannot tell: keep it.
    return False
  unlock(fd)
  return True


def remove_stale_staging(output_dir: str) -> list:
  """Removes the staging folders of `output_dir` left by killed runs on this host (`left_by_dead_process`);
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
    if m and os.path.isdir(path) and left_by_dead_process(path, m['host'], int(m['pid'])):
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
      self._lock = lock_path(self.path)  # Held until the run ends: this folder is in use.
      os.chmod(self.path, 0o777 & ~umask())
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
      unlock(self._lock)

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
      old_lock = lock_path(self.output_dir)  # The lock moves with the folder: .old- is in use.
      try:
        os.rename(self.output_dir, old)
      except OSError as e:
        unlock(old_lock)
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
      unlock(old_lock)
