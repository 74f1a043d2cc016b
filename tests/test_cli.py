"""End-to-end tests of the application (experiments/run.py) as a user runs it: outputs, 16-bit, and
one-line errors."""

import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, 'experiments', 'run.py')
EXAMPLE = os.path.join(ROOT, 'examples', 'lytro_golfer')
TINY_FLAGS = ['--iters=3', '--mask_iters=2', '--chunk_size=2', '--channels=4,8', '--skip_channels=2,2',
              '--mask_skip_channels=0,2', '--kernel_size=3', '--nocompilation_cache']


def _run(args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, RUN] + args, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


def _write(path, image):
  assert cv2.imwrite(str(path), image)
  return str(path)


def test_tiny_flagfile_writes_every_output_16bit(tmp_path):
  # 16-bit crops of the bundled pair: a 16-bit input must give 16-bit outputs.
  paths = []
  for name in 'AB':
    im = cv2.imread(os.path.join(EXAMPLE, f'{name}.png'))[:40, :48]
    paths.append(_write(tmp_path / f'{name}16.png', im.astype(np.uint16) * 257))
  out = tmp_path / 'out'
  flagfile = tmp_path / 'tiny.flags'
  flagfile.write_text('\n'.join(['# tiny smoke run', f'--inputs={paths[0]},{paths[1]}',
                                 f'--output_dir={out}', '--scale=2'] + TINY_FLAGS) + '\n')
  r = _run([f'--flagfile={flagfile}'])
  assert r.returncode == 0, r.stderr[-3000:]
  expected = {'fused.png', 'fused_lr.png', 'decision_map_raw.png', 'decision_map.png', 'loss.png',
              'comparison.png', 'summary.json'}
  assert set(os.listdir(out)) == expected
  fused = cv2.imread(str(out / 'fused.png'), cv2.IMREAD_UNCHANGED)
  assert fused.shape == (80, 96, 3) and fused.dtype == np.uint16
  assert cv2.imread(str(out / 'fused_lr.png'), cv2.IMREAD_UNCHANGED).shape == (40, 48, 3)
  s = json.loads((out / 'summary.json').read_text())
  assert s['config']['scale'] == 2 and s['config']['iters'] == 3
  assert s['config']['focus']['measure'] == 'multiscale_laplacian'  # The default measure, recorded.
  assert [i['bit_depth'] for i in s['inputs']] == [16, 16]
  assert s['output']['bit_depth'] == 16
  assert set(s['final_loss']) == {'mask', 'main'}
  assert set(s['final_loss']['main']) == {'total', 'content', 'joint_grad', 'grad_limit'}
  assert s['iterations_per_second']['main'] > 0 and s['backend'] == 'cpu'
  assert {'main_s', 'mask_s', 'decision_maps_s', 'total_s'} <= set(s['timings_s'])
  assert 'jax' in s['versions'] and 'flax' in s['versions']
  assert 'compiling' in r.stderr and 'ETA' in r.stderr  # Progress is shown.
  assert sorted(os.listdir(tmp_path)) == sorted(['A16.png', 'B16.png', 'out', 'tiny.flags'])


def _png_header_only(width: int, height: int) -> bytes:
  """A PNG whose header claims width x height RGB pixels and holds none (decoding it would fail, or
  take gigabytes)."""
  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('inputs')
  rng = np.random.default_rng(0)
  f = {
      'a': _write(d / 'a.png', rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)),
      'b': _write(d / 'b.png', rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)),
      'other_size': _write(d / 'c.png', rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)),
      'tiny': _write(d / 'tiny.png', rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)),
      'tiny2': _write(d / 'tiny2.png', rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)),
      'flat0': _write(d / 'flat0.png', np.zeros((48, 48, 3), np.uint8)),
      'flat1': _write(d / 'flat1.png', np.full((48, 48, 3), 255, np.uint8)),
      'comma': _write(d / 'x,y.png', rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)),
  }
  text = d / 'notes.png'
  text.write_text('hello')
  f['text'] = str(text)
  f['dir'] = str(d)
  for name, side in (('huge', 30000), ('huge2', 30000), ('giant', 60000), ('giant2', 60000)):  # No pixels.
    f[name] = str(d / f'{name}.png')
    (d / f'{name}.png').write_bytes(_png_header_only(side, side))
  os.mkfifo(d / 'pipe.png')
  f['pipe'] = str(d / 'pipe.png')
  (d / 'binary.flags').write_bytes(bytes(range(256)) * 4)
  f['binary_flags'] = str(d / 'binary.flags')
  whole = cv2.imencode('.jpg', rng.integers(0, 256, (48, 48, 3)).astype(np.uint8))[1].tobytes()
  (d / 'cut.jpg').write_bytes(whole[:-200])
  f['cut'] = str(d / 'cut.jpg')
  return f


@pytest.mark.parametrize('case, match', [
    ('missing', 'nope.png: file not found'),
    ('text', 'notes.png: not an image'),
    ('one', 'at least 2 input images'),
    ('sizes', 'c.png: size 48x40'),
    ('small', 'tiny.png: 8x8 is too small'),
    ('scale', '--scale must be 1, 2 or 4'),
    ('doublereblur', '--doublereblur needs 5 comma-separated values'),
    ('outdir', 'notes.png is a file, not a folder'),
    ('outdir_foreign', 'exists and is not a previous dfp_jax result'),
    ('twice', 'given twice'),
    ('modes', 'give either --input_dir (a folder of scenes, batch mode) or --inputs, not both'),
    ('dr_kernel', 'at least 99 pixels (--doublereblur kernels kg,kd,ke = 5,99,3)'),
    ('argmax_sigma', 'DoubleReblur argmax sigma must be a finite number >= 0, got -1.0'),
    ('outdir_slash', 'exists and is not a folder'),
    ('empty_entry', 'input 2 of 3 is an empty path'),
    ('memory', 'huge.png: 30000x30000 at x1: the decoded inputs and the output alone need about'),
    ('giant', 'giant.png: 60000x60000 at x2: the decoded inputs and the output alone need about'),
    ('flat', 'the inputs carry no focus information'),
    ('fifo', 'pipe.png: is a FIFO (named pipe), not an image file'),
    ('binary_flagfile', 'binary.flags: not a text file of --flag=value lines'),
    ('truncated', 'cut.jpg: the JPEG file is truncated'),
    ('deep', 'at this size the networks can have at most 5 scale(s)'),
    ('positional', 'unexpected positional arguments'),
    ('enum', 'flag --doublereblur_rule=otsu: value should be one of <threshold|compare>'),
    ('unknown', 'Unknown command line flag \'scael\''),
    ('seed', 'flag --seed=4294967296: 4294967296 is not an integer in the range [0, 4294967295]'),
    ('channels', 'channels must be >= 1 and skip channels >= 0 at every scale'),
    ('skip_negative', 'channels must be >= 1 and skip channels >= 0 at every scale'),
    ('lr_inf', 'learning rates must be finite and > 0, got lr=inf'),
    ('weights_zero', 'loss weights must be finite and >= 0, and not all 0'),
    ('weights_negative', 'loss weights must be finite and >= 0, and not all 0, got alpha=-1.0'),
    ('backend', "JAX backend 'nosuchplatform' is not available here"),
    ('comma', 'x,y.png: its name holds a comma, and --inputs splits at commas'),
])
def test_bad_input_gives_one_clear_line(files, tmp_path, case, match):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('previous results')
  a, b = files['a'], files['b']
  args = {
      'missing': [f'--inputs={a},{files["dir"]}/nope.png'],
      'text': [f'--inputs={a},{files["text"]}'],
      'one': [f'--inputs={a}'],
      'sizes': [f'--inputs={a},{files["other_size"]}'],
      'small': [f'--inputs={files["tiny"]},{files["tiny2"]}', '--channels=8,16,32,64,128',
                '--skip_channels=4,4,4,4,4', '--mask_skip_channels=0,0,0,4,4'],
      'scale': [f'--inputs={a},{b}', '--scale=3'],
      'doublereblur': [f'--inputs={a},{b}', '--doublereblur=5,3,3'],
      'outdir': [f'--inputs={a},{b}', f'--output_dir={files["text"]}/sub'],
      'outdir_slash': [f'--inputs={a},{b}', f'--output_dir={files["text"]}/'],  # A file, trailing '/'.
      'empty_entry': [f'--inputs={a},,{b}'],
      'outdir_foreign': [f'--inputs={a},{b}'],  # `out` holds keep.txt, which this tool did not write.
      'modes': [f'--inputs={a},{b}', f'--input_dir={files["dir"]}'],
      'dr_kernel': [f'--inputs={a},{b}', '--doublereblur=5,99,3,0.01,1'],
      'argmax_sigma': [f'--inputs={a},{b}', '--doublereblur_argmax_sigma=-1'],
      'twice': [f'--inputs={a},{b},{files["dir"]}/../{os.path.basename(files["dir"])}/a.png'],
      'memory': [f'--inputs={files["huge"]},{files["huge2"]}', '--scale=1'],  # Refused from the headers.
      'giant': [f'--inputs={files["giant"]},{files["giant2"]}'],  # Above Pillow's bomb limit: on purpose.
      'flat': [f'--inputs={files["flat0"]},{files["flat1"]}'],
      'fifo': [f'--inputs={a},{files["pipe"]}'],
      'binary_flagfile': [f'--flagfile={files["binary_flags"]}'],
      'truncated': [f'--inputs={a},{files["cut"]}'],
      'deep': [f'--inputs={a},{b}'] + [f'--{k}=' + ','.join([v] * 30) for k, v in (
          ('channels', '4'), ('skip_channels', '2'), ('mask_skip_channels', '0'))],
      'positional': [f'--inputs={a},{b}', 'extra'],
      'enum': [f'--inputs={a},{b}', '--doublereblur_rule=otsu'],
      'unknown': [f'--inputs={a},{b}', '--scael=2'],
      'seed': [f'--inputs={a},{b}', '--seed=4294967296'],  # JAX's seeds are 32-bit: it would repeat seed 0.
      'channels': [f'--inputs={a},{b}', '--channels=0,8', '--skip_channels=2,2', '--mask_skip_channels=0,2'],
      'skip_negative': [f'--inputs={a},{b}', '--channels=4,8', '--skip_channels=-1,2',
                        '--mask_skip_channels=0,2'],
      'lr_inf': [f'--inputs={a},{b}', '--lr=inf'],
      'weights_zero': [f'--inputs={a},{b}', '--loss_weights=0,0,0'],
      'weights_negative': [f'--inputs={a},{b}', '--loss_weights=-1,0.5,0.1'],
      'backend': [f'--inputs={a},{b}', '--jax_platforms=nosuchplatform'],  # (cuda on a CPU-only jaxlib too.)
      'comma': [f'--inputs={files["dir"]}/x,y.png,{b}'],
  }[case]
  if not any(x.startswith('--output_dir') for x in args):
    args.append(f'--output_dir={out}')
  if case not in ('small', 'memory', 'giant', 'channels', 'skip_negative', 'deep'):
    args += TINY_FLAGS
  r = _run(args)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  err_lines = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert len(err_lines) == 1 and match in err_lines[0], r.stderr[-2000:]
  assert not [l for l in r.stderr.splitlines() if l.startswith('I')], r.stderr  # No INFO log before it.
  assert 'Traceback' not in r.stderr
  assert os.listdir(out) == ['keep.txt']  # Nothing written, nothing lost.


@pytest.mark.parametrize('case, match', [
    ('cwd', 'is the working folder or holds it'),
    ('holds_input', 'holds the input'),
])
def test_output_dir_that_would_lose_files_is_refused(files, tmp_path, case, match):
  """--output_dir=. (run from a folder of photos) or a folder holding the inputs: refused, nothing lost."""
  work = tmp_path / 'photos'
  work.mkdir()
  a = _write(work / 'a.png', cv2.imread(files['a']))
  b = _write(work / 'b.png', cv2.imread(files['b']))
  (work / 'notes.txt').write_text('mine')
  args = {'cwd': ['--inputs=a.png,b.png', '--output_dir=.'],
          'holds_input': [f'--inputs={a},{b}', f'--output_dir={work}']}[case]
  r = _run(args + TINY_FLAGS, cwd=str(work if case == 'cwd' else tmp_path))
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  err_lines = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert len(err_lines) == 1 and match in err_lines[0], r.stderr[-2000:]
  assert sorted(os.listdir(work)) == ['a.png', 'b.png', 'notes.txt']
  assert sorted(os.listdir(tmp_path)) == ['photos']  # No staging folder left beside it.


@pytest.mark.parametrize('sig, code, word', [('SIGINT', 130, 'interrupted'), ('SIGTERM', 143, 'terminated')])
def test_interrupt_gives_one_line_and_leaves_the_output_dir(files, tmp_path, sig, code, word):
  import signal  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  args = [f'--inputs={files["a"]},{files["b"]}', f'--output_dir={out}', '--stop=fixed'] + TINY_FLAGS
  args += ['--iters=100000', '--chunk_size=5']  # Long enough to be interrupted in the main loop.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  # The child gets the default SIGINT disposition: a test runner's worker may ignore SIGINT, and an
  # ignored SIGINT is inherited (as for background jobs of a shell). A trampoline resets it and execs
  # run.py (a preexec_fn would fork this process, which has JAX's threads running).
  reset = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
           'os.execv(sys.executable, [sys.executable] + sys.argv[1:])')
  p = subprocess.Popen([sys.executable, '-c', reset, RUN] + args, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                       text=True)
  lines = []
  for line in p.stderr:  # Wait until the optimisation runs (it logs progress), then interrupt.
    lines.append(line)
    if '[main] compiled' in line:
      break
  p.send_signal(getattr(signal, sig))
  try:
    _, rest = p.communicate(timeout=120)
  finally:
    p.kill()
  err = ''.join(lines) + rest
  assert p.returncode == code, err[-2000:]
  err_lines = [l for l in err.splitlines() if l.startswith('error: ')]
  assert len(err_lines) == 1 and word in err_lines[0] and 'Traceback' not in err, err[-2000:]
  assert sorted(os.listdir(tmp_path)) == []  # No output folder, no staging folder left behind.
