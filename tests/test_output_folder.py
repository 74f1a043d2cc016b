"""output_folder: result folders replaced whole and only when nothing of the user's would be lost;
staging folders of killed runs removed, live runs' never touched."""

import fcntl
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dfp_jax import image_io
from dfp_jax import output_folder
from dfp_jax.errors import InputError


def _rgb(h=12, w=10, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _previous_result(folder, names):
  """A folder as a previous run of this tool leaves it: the files and a summary.json listing them."""
  folder.mkdir()
  for n in names:
    (folder / n).parent.mkdir(parents=True, exist_ok=True)
    (folder / n).write_text('old')
  image_io.write_json(str(folder / 'summary.json'),
                      {'dfp_jax_version': '0', 'output': {'files': list(names) + ['summary.json']}})


def test_staging_dir_replaces_only_on_success(tmp_path):
  out = tmp_path / 'out'
  _previous_result(out, ['old.txt'])
  with pytest.raises(RuntimeError):
    with output_folder.StagingDir(str(out)) as tmp:
      image_io.write_json(os.path.join(tmp, 'summary.json'), {'a': 1})
      raise RuntimeError('interrupted')
  assert sorted(os.listdir(out)) == ['old.txt', 'summary.json']
  assert sorted(os.listdir(tmp_path)) == ['out']  # No temporary folder left behind.
  with output_folder.StagingDir(str(out)) as tmp:
    image_io.write_image(os.path.join(tmp, 'x.png'), _rgb())
  assert sorted(os.listdir(out)) == ['x.png']
  assert sorted(os.listdir(tmp_path)) == ['out']
  assert os.stat(out / 'x.png').st_mode & 0o044  # Readable by others (not mkstemp's 0600).


def test_staging_dir_replaces_empty_and_new_folders(tmp_path):
  (tmp_path / 'empty').mkdir()
  for name in ('empty', 'new'):
    with output_folder.StagingDir(str(tmp_path / name)) as tmp:
      image_io.write_json(os.path.join(tmp, 'summary.json'), {'a': 1})
    assert os.listdir(tmp_path / name) == ['summary.json']


def test_staging_dir_refuses_folders_it_would_lose_files_of(tmp_path, monkeypatch):
  foreign = tmp_path / 'photos'
  foreign.mkdir()
  (foreign / 'a.jpg').write_text('mine')
  with pytest.raises(InputError, match=r'photos: exists and is not a previous dfp_jax result .* a.jpg'):
    output_folder.StagingDir(str(foreign))
  # A previous result that the user added a file to: refused, naming the file.
  res = tmp_path / 'res'
  _previous_result(res, ['fused.png'])
  (res / 'notes.txt').write_text('mine')
  with pytest.raises(InputError, match='also holds notes.txt, which this tool did not write'):
    output_folder.StagingDir(str(res))
  # A summary.json that is not ours does not make a folder replaceable.
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'summary.json').write_text('{"output": {"files": ["summary.json"]}}')
  with pytest.raises(InputError, match='not a previous dfp_jax result'):
    output_folder.StagingDir(str(other))
  # A previous result holding an input, or the working folder: refused even though it is ours.
  ours = tmp_path / 'ours'
  _previous_result(ours, ['in.png'])
  with pytest.raises(InputError, match='holds the input'):
    output_folder.StagingDir(str(ours), protect=[str(ours / 'in.png')])
  monkeypatch.chdir(ours)
  with pytest.raises(InputError, match='is the working folder or holds it'):
    output_folder.StagingDir('.')
  with pytest.raises(InputError, match='is the working folder or holds it'):
    output_folder.StagingDir(str(tmp_path))
  with output_folder.StagingDir(str(tmp_path / 'sibling'), protect=[str(ours / 'in.png')]):
    pass  # Unrelated to the input and the working folder: fine.
  for folder, names in ((foreign, ['a.jpg']), (res, ['fused.png', 'notes.txt', 'summary.json']),
                        (ours, ['in.png', 'summary.json'])):
    assert sorted(os.listdir(folder)) == names  # Nothing was touched.


def test_staging_dir_unwritable_parent(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(InputError, match='file is a file, not a folder'):
    output_folder.StagingDir(str(blocker / 'out'))


def _dead_pid() -> int:
  p = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                     text=True, check=True)
  return int(p.stdout)


def test_staging_folders_of_killed_runs_are_removed_live_and_foreign_ones_kept(tmp_path, monkeypatch):
  host = 'node-01.example-org.com'  # Dashes and dots in the host name.
  monkeypatch.setattr(socket, 'gethostname', lambda: host)
  out, dead = tmp_path / 'out', _dead_pid()
  stale = tmp_path / f'.out.tmp-{host}-{dead}-abc123'
  live = tmp_path / f'.out.tmp-{host}-{os.getpid()}-def456'  # This process: alive.
  other_host = tmp_path / f'.out.tmp-other-{host}-{dead}-ghi789'
  unnamed = tmp_path / '.out.tmp-jkl012'  # The older naming: cannot tell, kept.
  # A live run in another pid namespace: its pid means nothing here, but it holds the folder's lock.
  locked = tmp_path / f'.out.tmp-{host}-{dead}-mno345'
  for d in (stale, live, other_host, unnamed, locked):
    d.mkdir()
    (d / 'fused.png').write_bytes(b'x')
  fd = os.open(locked, os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  try:
    with output_folder.StagingDir(str(out)) as tmp:
      assert os.path.basename(tmp).startswith(f'.out.tmp-{host}-{os.getpid()}-')
      with pytest.raises(BlockingIOError):  # Its own folder is locked while the run lives.
        probe = os.open(tmp, os.O_RDONLY)
        try:
          fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
          os.close(probe)
      with open(os.path.join(tmp, 'a.txt'), 'w') as f:
        f.write('a')
  finally:
    os.close(fd)
  assert not stale.exists()
  assert live.exists() and other_host.exists() and unnamed.exists() and locked.exists()
  assert (out / 'a.txt').exists()
  assert output_folder.remove_stale_staging(str(out)) == [str(locked)]  # Its lock is released now.


def test_stale_old_folder_with_missing_output_is_kept(tmp_path):
  # Killed between moving the previous result aside and moving the new one in: the previous result
  # is only in the .old- folder, so nothing is removed.
  host, dead = socket.gethostname(), _dead_pid()
  old = tmp_path / f'.out.old-{host}-{dead}-abc123'
  new = tmp_path / f'.out.tmp-{host}-{dead}-def456'
  for d in (old, new):
    d.mkdir()
  assert output_folder.remove_stale_staging(str(tmp_path / 'out')) == []
  assert old.exists() and new.exists()
  (tmp_path / 'out').mkdir()  # Once the output folder exists again, both are leftovers.
  assert sorted(output_folder.remove_stale_staging(str(tmp_path / 'out'))) == sorted([str(new), str(old)])
  assert not old.exists() and not new.exists()


def test_commit_puts_the_previous_result_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
  out = tmp_path / 'out'
  with output_folder.StagingDir(str(out)) as tmp:
    image_io.write_json(os.path.join(tmp, 'summary.json'),
                        {'dfp_jax_version': '0', 'output': {'files': ['summary.json']}})
  before = (out / 'summary.json').read_bytes()
  real_rename = os.rename

  def failing_rename(src, dst):
    if '.tmp-' in os.path.basename(src) and os.fspath(dst) == str(out):  # Moving the new result in fails.
      raise OSError(28, 'No space left on device')
    return real_rename(src, dst)

  monkeypatch.setattr(output_folder.os, 'rename', failing_rename)
  with pytest.raises(InputError, match=r'out: could not move the results into place \(No space left on '
                     r'device\); they are in .*\.out\.unplaced-'):
    with output_folder.StagingDir(str(out)) as tmp:
      image_io.write_json(os.path.join(tmp, 'summary.json'), {'new': 1})
  assert (out / 'summary.json').read_bytes() == before
  assert not [n for n in os.listdir(tmp_path) if '.old-' in n]
  kept = [n for n in os.listdir(tmp_path) if '.unplaced-' in n]  # The finished results, where the error says.
  assert len(kept) == 1 and os.listdir(tmp_path / kept[0]) == ['summary.json']
  assert not [n for n in os.listdir(tmp_path) if '.tmp-' in n]
  monkeypatch.setattr(output_folder.os, 'rename', real_rename)
  with output_folder.StagingDir(str(out)) as tmp:  # A later run does not take them for a killed run's folder.
    image_io.write_json(os.path.join(tmp, 'summary.json'),
                        {'dfp_jax_version': '0', 'output': {'files': ['summary.json']}})
  assert os.listdir(tmp_path / kept[0]) == ['summary.json']


def test_output_dir_that_cannot_be_renamed_is_refused_before_any_work(tmp_path, monkeypatch):
  """A mount point (a container's volume) cannot be renamed: refused up front, not after the run."""
  out = tmp_path / 'volume'
  out.mkdir()
  real_rename = os.rename

  def busy(src, dst):
    if os.fspath(src) == str(out):
      raise OSError(16, 'Device or resource busy')
    return real_rename(src, dst)

  monkeypatch.setattr(output_folder.os, 'rename', busy)
  with pytest.raises(InputError, match=r'volume: cannot be replaced by a new result \(Device or resource '
                     r'busy: a mount point .*--output_dir=.*volume/run1'):
    output_folder.StagingDir(str(out))
  assert sorted(os.listdir(tmp_path)) == ['volume'] and not os.listdir(out)  # Nothing made or left.
  monkeypatch.setattr(output_folder.os, 'rename', real_rename)
  with output_folder.StagingDir(str(out)) as tmp:  # The probe puts a movable folder back where it was.
    image_io.write_json(os.path.join(tmp, 'summary.json'), {'a': 1})
  assert sorted(os.listdir(tmp_path)) == ['volume'] and os.listdir(out) == ['summary.json']


def test_output_dir_through_a_symlink_and_dotdot_is_checked_where_it_is_written(tmp_path):
  """'link/../out' is '<link target's parent>/out' for the kernel: the replaceability check must look at
  that folder, not at the lexical './out' (a folder of user files there was deleted)."""
  (tmp_path / 'a' / 'b').mkdir(parents=True)
  (tmp_path / 'a' / 'out').mkdir()
  (tmp_path / 'a' / 'out' / 'notes.txt').write_text('precious')
  (tmp_path / 'work').mkdir()
  (tmp_path / 'work' / 'link').symlink_to('../a/b', target_is_directory=True)
  tricky = str(tmp_path / 'work' / 'link' / '..' / 'out')
  with pytest.raises(InputError, match='is not a previous dfp_jax result'):
    output_folder.check_output_dir(tricky)
  with pytest.raises(InputError, match='is not a previous dfp_jax result'):
    output_folder.StagingDir(tricky)
  assert os.listdir(tmp_path / 'a' / 'out') == ['notes.txt']
  assert output_folder.resolve_output_dir(tricky) == str(tmp_path / 'a' / 'out')
  (tmp_path / 'dangling').symlink_to(tmp_path / 'nowhere')
  with pytest.raises(InputError, match='dangling: is a symbolic link to nothing'):
    output_folder.check_output_dir(str(tmp_path / 'dangling'))
  assert not os.path.exists(tmp_path / 'nowhere')


def test_symlinked_output_dir_gets_the_results_in_its_target(tmp_path):
  (tmp_path / 'big_disk').mkdir()
  target = tmp_path / 'big_disk' / 'out'
  _previous_result(target, ['old.txt'])
  link = tmp_path / 'link'
  link.symlink_to(target, target_is_directory=True)
  with output_folder.StagingDir(str(link)) as tmp:
    image_io.write_image(os.path.join(tmp, 'x.png'), _rgb())
  assert link.is_symlink() and os.readlink(link) == str(target)
  assert os.listdir(target) == ['x.png']
  assert sorted(os.listdir(tmp_path)) == ['big_disk', 'link'] and os.listdir(tmp_path / 'big_disk') == ['out']


def test_check_output_dir(tmp_path, monkeypatch):
  f = tmp_path / 'result'
  f.write_text('a file')
  for given in (str(f), str(f) + '/'):  # A trailing slash must not hide the file.
    with pytest.raises(InputError, match='exists and is not a folder'):
      output_folder.check_output_dir(given)
  output_folder.check_output_dir(str(tmp_path / 'a' / 'b' / 'c'))  # Several levels to create: fine.
  with pytest.raises(InputError, match='is a file, not a folder'):
    output_folder.check_output_dir(str(f / 'sub'))
  monkeypatch.setattr(output_folder.os, 'access', lambda path, mode: False)
  with pytest.raises(InputError, match=r'cannot write the output folder \(.* is not writable\)'):
    output_folder.check_output_dir(str(tmp_path / 'new'))


@pytest.mark.parametrize('extra', ['focal_stack/my_notes.txt', 'focal_stack/mine/keep.txt', 'mine/',
                                   'focal_stack/link'])
def test_a_result_holding_user_files_in_its_subfolders_is_never_replaced(tmp_path, extra):
  """Every entry below a previous result, at any depth, must be one this tool listed (a light-field
  result's focal_stack/ used to be checked by its first path component only)."""
  out = tmp_path / 'O'
  _previous_result(out, ['fused.png', 'focal_stack/plane_00.png', 'focal_stack/plane_01.png'])
  if extra.endswith('/'):
    (out / extra).mkdir()
  elif extra.endswith('link'):
    os.symlink(tmp_path, out / extra)
  else:
    (out / extra).parent.mkdir(exist_ok=True)
    (out / extra).write_text('mine')
  with pytest.raises(InputError, match=r'also holds .*which this tool did not write'):
    output_folder.check_output_dir(str(out))
  with pytest.raises(InputError, match='which this tool did not write'):
    output_folder.StagingDir(str(out))
  assert os.path.lexists(out / extra.rstrip('/'))
  # Listed files alone, at any depth: replaceable.
  clean = tmp_path / 'clean'
  _previous_result(clean, ['fused.png', 'focal_stack/plane_00.png'])
  output_folder.check_output_dir(str(clean))
