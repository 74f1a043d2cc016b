"""The batch manifest, OUTPUT_DIR/manifest.json: one entry per scene, and the work queue of every process
that shares the output folder.

  {"scenes": {scene: {"status": "pending" | "running" | "done" | "failed",
                      "files": {path: sha256 hex}, "error": message or null, "seconds": wall time,
                      "inputs": {path: sha256}, "config_sha256": ..., "host": ..., "pid": ...,
                      "claim": {"host", "pid", "token", "heartbeat", "since"} while running,
                      "finished": unix time}},
   "config": {...}, "updated": ...}

`files` paths are relative to OUTPUT_DIR. Every change is a read-modify-write under an exclusive flock of
OUTPUT_DIR/manifest.json.lock, written atomically (`image_io.write_json`). A process claims scenes by
marking them 'running' with its host, pid, a random token and a heartbeat time (`Owner`), refreshed
while it works; a claim whose process is gone is taken over (`claim_is_dead`: on the same host as soon
as its pid is gone and its liveness lock is free, from another host once its heartbeat is older than
`STALE_AFTER_S`).

A damaged manifest is never silently overwritten: a file that is not a manifest is renamed aside
(manifest.json.damaged-<time>) and a new one started; entries that are not objects are dropped after a
copy of the file is kept aside the same way. Either way a warning names the kept copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import secrets
import shutil
import socket
import time

from absl import logging

from dfp_jax import errors
from dfp_jax import image_io
from dfp_jax import output_folder

try:
  import fcntl  # POSIX only; without it the manifest lock is a no-op.
except ImportError:  # pragma: no cover
  fcntl = None

MANIFEST = 'manifest.json'
LIVENESS_DIR = '.dfp_jax_processes'  # OUTPUT_DIR/<this>/<host>-<pid>-<token>.lock, flock-ed while alive.
RESERVED = (MANIFEST, MANIFEST + '.lock', LIVENESS_DIR)  # Names no scene's output folder may have.
HEARTBEAT_S = 30.0  # How often a process refreshes its claims' heartbeat.
STALE_AFTER_S = 600.0  # A claim from another host whose heartbeat is older than this is taken over.


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _path(output_dir: str) -> str:
  return os.path.join(output_dir, MANIFEST)


@contextlib.contextmanager
def locked(output_dir: str):
  """An exclusive flock of OUTPUT_DIR/manifest.json.lock for the duration of the block."""
  path = _path(output_dir) + '.lock'
  if os.path.isdir(path):
    raise errors.InputError(f'{path}: is a folder; the batch needs this name for its lock file (move the '
                            'folder away)')
  if fcntl is None:
    yield
    return
  try:
    f = open(path, 'a')  # pylint: disable=consider-using-with
  except OSError as e:
    raise errors.InputError(f'{path}: cannot open the manifest lock ({e.strerror or e})') from None
  with f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _keep_aside(path: str, move: bool) -> str:
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')
  kept = f'{path}.damaged-{stamp}'
  (os.replace if move else shutil.copy2)(path, kept)
  return kept


def read(output_dir: str) -> dict:
  """The manifest of `output_dir` ({'scenes': {}} when there is none). Call it under `locked` when
  the result will be written back (a damaged file is moved aside here)."""
  path = _path(output_dir)
  if os.path.isdir(path):
    raise errors.InputError(f'{path}: is a folder; the batch needs this name for its manifest (move the '
                            'folder away)')
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except FileNotFoundError:
    return {'scenes': {}}
  except (OSError, ValueError) as e:
    data, why = None, f'unreadable ({e})'
  else:
    why = 'not a manifest (no "scenes" object)'
  if not (isinstance(data, dict) and isinstance(data.get('scenes'), dict)):
    kept = _keep_aside(path, move=True)
    logging.warning('%s: %s; kept as %s, starting a new manifest', path, why, kept)
    return {'scenes': {}}
  bad = [k for k, v in data['scenes'].items() if not isinstance(v, dict)]
  if bad:
    kept = _keep_aside(path, move=False)
    logging.warning('%s: the entries of %s are not objects; they are dropped (those scenes are redone), '
                    'the file as it was is kept as %s', path, ', '.join(map(str, bad[:3])), kept)
    for k in bad:
      del data['scenes'][k]
  return data


def update(output_dir: str, updates: dict, extra: dict | None = None) -> dict:
  """Merges {scene: entry} (and top-level `extra`) into the manifest on disk: read-modify-write under
  the lock, atomic."""
  os.makedirs(output_dir, exist_ok=True)
  with locked(output_dir):
    data = read(output_dir)
    data['scenes'].update(updates)
    data.update(extra or {})
    return write(output_dir, data)


def write(output_dir: str, data: dict) -> dict:
  """Writes the whole manifest atomically (the caller holds `locked`)."""
  data['updated'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
  image_io.write_json(_path(output_dir), data)
  return data


def verified_done(output_dir: str, entry: dict | None, inputs_sha: dict, config_sha: str) -> bool:
  """True if the manifest entry says done and every recorded file still has its checksum."""
  if not entry or entry.get('status') != 'done' or not isinstance(entry.get('files'), dict) \
      or not entry['files']:
    return False
  if entry.get('inputs') != inputs_sha or entry.get('config_sha256') != config_sha:
    return False
  for rel, digest in entry['files'].items():
    path = os.path.join(output_dir, rel)
    if not os.path.isfile(path) or sha256_file(path) != digest:
      return False
  return True


def config_digest(config, **more) -> str:
  """Digest of everything that changes a scene's outputs (the configuration, seed, bit depth)."""
  payload = {'config': config.to_dict(), **more}
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def entry(status, files=None, error=None, inputs=None, seconds=None, **more) -> dict:
  """One scene's manifest entry."""
  out = {'status': status, 'files': files or {}, 'error': error, 'seconds': seconds,
         'inputs': inputs or {}}
  out.update(more)
  return out


# ---------------------------------------------------------------------------------------------------
# Claims: the manifest as a work queue.


@dataclasses.dataclass
class Owner:
  """This process as the owner of claims; while it lives it holds a flock on its liveness file, so that
  a process on the same host can tell a dead claimant from a live one (even across pid namespaces)."""
  output_dir: str
  host: str = dataclasses.field(default_factory=socket.gethostname)
  pid: int = dataclasses.field(default_factory=os.getpid)
  token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
  _fd: int | None = None

  def __post_init__(self):
    folder = os.path.join(self.output_dir, LIVENESS_DIR)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # Left by processes of this host that were killed.
      host, _, rest = name.rpartition('.lock')[0].rpartition('-')[0].rpartition('-')
      pid = rest if rest.isdigit() else ''
      if host == self.host and pid and output_folder.left_by_dead_process(
          os.path.join(folder, name), host, int(pid)):
        with contextlib.suppress(OSError):
          os.remove(os.path.join(folder, name))
    path = os.path.join(folder, f'{self.host}-{self.pid}-{self.token}.lock')
    with open(path, 'w', encoding='utf-8'):
      pass
    self.path = path
    self._fd = output_folder.lock_path(path)

  def claim(self, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    return {'host': self.host, 'pid': self.pid, 'token': self.token, 'heartbeat': now, 'since': now}

  def owns(self, entry_: dict) -> bool:
    c = entry_.get('claim')
    return isinstance(c, dict) and c.get('token') == self.token and c.get('pid') == self.pid

  def close(self) -> None:
    output_folder.unlock(self._fd)
    self._fd = None
    with contextlib.suppress(OSError):
      os.remove(self.path)
      os.rmdir(os.path.dirname(self.path))  # The last process out removes the folder.


def claim_is_dead(output_dir: str, claim: dict, now: float | None = None) -> bool:
  """Whether the process holding `claim` is gone: on this host, its pid is gone and its liveness lock
  is free (`output_folder.left_by_dead_process`); elsewhere, its heartbeat is older than
  STALE_AFTER_S."""
  if not isinstance(claim, dict):
    return True
  try:
    host, pid, token = str(claim['host']), int(claim['pid']), str(claim['token'])
  except (KeyError, TypeError, ValueError):
    return True
  if host == socket.gethostname():
    path = os.path.join(output_dir, LIVENESS_DIR, f'{host}-{pid}-{token}.lock')
    return output_folder.left_by_dead_process(path, host, pid, missing_means_dead=True)
  now = time.time() if now is None else now
  try:
    return now - float(claim['heartbeat']) > STALE_AFTER_S
  except (KeyError, TypeError, ValueError):
    return True


def heartbeat(output_dir: str, owner: Owner) -> int:
  """Refreshes the heartbeat of every claim of `owner`; returns how many."""
  with locked(output_dir):
    data = read(output_dir)
    mine = [e for e in data['scenes'].values() if owner.owns(e)]
    if mine:
      now = time.time()
      for e in mine:
        e['claim']['heartbeat'] = now
      write(output_dir, data)
  return len(mine)


def release(output_dir: str, owner: Owner) -> list:
  """Puts the scenes still claimed by `owner` back in the queue (an interrupted process); returns them."""
  with locked(output_dir):
    data = read(output_dir)
    mine = [name for name, e in data['scenes'].items() if owner.owns(e)]
    for name in mine:
      e = data['scenes'][name]
      e['status'] = 'pending'
      e.pop('claim', None)
    if mine:
      write(output_dir, data)
  return mine
