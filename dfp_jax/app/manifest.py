"""The batch manifest, OUTPUT_DIR/manifest.json: one entry per scene, shared by every process.

  {"scenes": {scene: {"status": "done" | "failed" | "pending", "files": {path: sha256 hex},
                      "error": message or null, "seconds": wall time, "inputs": {path: sha256},
                      "config_sha256": ...}}, "config": {...}, "updated": ...}

`files` paths are relative to OUTPUT_DIR. The manifest is rewritten atomically, read-modify-write under
an exclusive flock of OUTPUT_DIR/manifest.json.lock, so several processes can share one output folder.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os

from absl import logging

from dfp_jax import image_io

try:
  import fcntl  # POSIX only; without it the manifest lock is a no-op.
except ImportError:  # pragma: no cover
  fcntl = None

MANIFEST = 'manifest.json'


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


@contextlib.contextmanager
def locked(path: str):
  """An exclusive flock of `path`.lock for the duration of the block."""
  if fcntl is None:
    yield
    return
  with open(path + '.lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read(output_dir: str) -> dict:
  """The manifest of `output_dir` ({'scenes': {}} when there is none or it is not a manifest)."""
  path = os.path.join(output_dir, MANIFEST)
  try:
    with open(path) as f:
      data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get('scenes'), dict):
      return data
    logging.warning('%s: not a manifest; starting a new one', path)
  except FileNotFoundError:
    pass
  except (OSError, ValueError) as e:
    logging.warning('%s: unreadable (%s); starting a new one', path, e)
  return {'scenes': {}}


def update(output_dir: str, updates: dict, extra: dict | None = None) -> dict:
  """Merges {scene: entry} into the manifest on disk (read-modify-write under the lock, atomic)."""
  path = os.path.join(output_dir, MANIFEST)
  os.makedirs(output_dir, exist_ok=True)
  with locked(path):
    data = read(output_dir)
    data['scenes'].update(updates)
    if extra:
      data.update(extra)
    data['updated'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    image_io.write_json(path, data)
  return data


def verified_done(output_dir: str, entry: dict | None, inputs_sha: dict, config_sha: str) -> bool:
  """True if the manifest entry says done and every recorded file still has its checksum."""
  if not entry or entry.get('status') != 'done' or not entry.get('files'):
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
