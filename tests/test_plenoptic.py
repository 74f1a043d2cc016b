"""End-to-end tests of the light-field job, `experiments/run.py --lightfield=FOLDER`, as a user runs it.

The light field is synthetic: a random texture (the all-in-focus answer, also the centre view) whose
left half lies at disparity -1 and right half at +1 (pixels per view step), rendered into 5 x 5 views
with `dfp_jax.lightfield`'s sign convention (a point at p in the centre view is at p - d * (dr, dc) in
view (r0 + dr, c0 + dc)) and written as `syn_RR_CC.png` (decoded-Lytro naming). The network is tiny and
runs a few steps: these tests check the plumbing (files, sizes, planes.json, errors), not the quality.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, 'experiments', 'run.py')
TINY_FLAGS = ['--iters=3', '--mask_iters=2', '--chunk_size=2', '--channels=4,8', '--skip_channels=2,2',
              '--mask_skip_channels=0,2', '--kernel_size=3', '--nocompilation_cache']
SIZE = 32
GRID = 5


def _run(args, cwd=ROOT, **extra_env):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **extra_env)
  return subprocess.run([sys.executable, RUN] + args, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


def _write_light_field(folder, d_left=-1, d_right=1, seed=0):
  """5 x 5 uint8 views syn_RR_CC.png of a two-depth scene; returns the texture (uint8, RGB)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  tex = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
  tex = cv2.GaussianBlur(tex, (3, 3), 0.7)  # Some spatial correlation, still plenty of detail.
  left = (np.arange(SIZE) < SIZE // 2)[None, :, None]
  c0 = GRID // 2
  for r in range(GRID):
    for c in range(GRID):
      dr, dc = r - c0, c - c0
      a = np.roll(tex, (-d_left * dr, -d_left * dc), axis=(0, 1))
      b = np.roll(tex, (-d_right * dr, -d_right * dc), axis=(0, 1))
      view = np.where(left, a, b)
      assert cv2.imwrite(os.path.join(folder, f'syn_{r:02d}_{c:02d}.png'), view[..., ::-1])
  return tex


def _shape(path):
  im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert im is not None, path
  return im.shape


@pytest.fixture(scope='module')
def lf_folder(tmp_path_factory):
  d = tmp_path_factory.mktemp('lf')
  _write_light_field(str(d / 'views'))
  (d / 'empty').mkdir()
  (d / 'empty' / 'notes.txt').write_text('no views here')
  assert cv2.imwrite(str(d / 'empty' / 'photo.png'), np.zeros((8, 8, 3), np.uint8))
  return d


def test_two_automatic_planes_write_every_output(lf_folder, tmp_path):
  out = tmp_path / 'out'
  r = _run([f'--lightfield={lf_folder / "views"}', f'--output_dir={out}', '--scale=2'] + TINY_FLAGS)
  assert r.returncode == 0, r.stderr[-3000:]
  expected = {'fused.png', 'fused_lr.png', 'decision_map_raw.png', 'decision_map.png', 'loss.png',
              'comparison.png', 'summary.json', 'focal_stack', 'planes.json', 'coverage.png',
              'index_map.png', 'comparison_center.png', 'contact_sheet.png'}
  assert set(os.listdir(out)) == expected
  assert sorted(os.listdir(out / 'focal_stack')) == ['plane_00.png', 'plane_01.png']
  for name in ('plane_00.png', 'plane_01.png'):
    assert _shape(out / 'focal_stack' / name) == (SIZE, SIZE, 3)
  assert _shape(out / 'fused.png') == (2 * SIZE, 2 * SIZE, 3)
  assert _shape(out / 'fused_lr.png') == (SIZE, SIZE, 3)
  assert _shape(out / 'coverage.png') == (SIZE, SIZE)
  index = _shape(out / 'index_map.png')
  assert index[1] >= 256 and index[0] > index[1] and index[2] == 3  # Enlarged map + legend strip.
  assert _shape(out / 'comparison_center.png')[2] == 3
  sheet = _shape(out / 'contact_sheet.png')  # Two rows of output-size tiles: 2 slices + index + DFP.
  assert sheet[2] == 3 and sheet[0] > 2 * 2 * SIZE and sheet[1] >= 4 * 2 * SIZE

  p = json.loads((out / 'planes.json').read_text())
  assert p['how'] == 'auto' and p['num_planes'] == 2
  np.testing.assert_allclose(p['planes'], [-1.0, 1.0], atol=0.126)  # The two depths, to a sweep step.
  assert p['aperture'] == 'inf' and p['aperture_views'] == 25 and p['num_views'] == 25
  assert p['crop'] is None and p['lf_downsample'] == 1 and p['processed_size'] == [SIZE, SIZE, 3]
  assert p['sweep'] == {'min': -2.0, 'max': 2.0, 'count': 33, 'step': 0.125}
  assert 0.5 < p['mean_coverage'] <= 1.0
  assert p['center_view'] == 'syn_02_02.png' and p['center'] == [2, 2]
  assert p['files'] == ['focal_stack/plane_00.png', 'focal_stack/plane_01.png']

  s = json.loads((out / 'summary.json').read_text())
  assert s['lightfield'] == p
  assert 'center_view_scores' not in s  # --lf_downsample (1) != --scale (2): no reference.
  assert [i['path'] for i in s['inputs']] == p['files']
  assert {'focal_stack/plane_00.png', 'planes.json', 'coverage.png', 'index_map.png',
          'comparison_center.png', 'contact_sheet.png', 'fused.png', 'summary.json'} <= set(s['output']['files'])
  assert s['config']['scale'] == 2 and s['config']['iters'] == 3


def test_three_user_planes_crop_downsample_and_scores(lf_folder, tmp_path):
  # Crop 28 x 26, downsample 2 -> 14 x 13 views (disparities halve: -0.5 / +0.5), x2 -> 28 x 26.
  out = tmp_path / 'out'
  r = _run([f'--lightfield={lf_folder / "views"}', f'--output_dir={out}', '--scale=2',
            '--planes=0.5,-0.5,0', '--num_planes=2', '--crop=2,3,28,26', '--lf_downsample=2',
            '--aperture=1.5'] + TINY_FLAGS + ['--mask_iters=0'])  # No embedding: saves ~10 s.
  assert r.returncode == 0, r.stderr[-3000:]
  assert '--num_planes=2 is ignored' in r.stderr
  names = set(os.listdir(out))
  for i in range(3):
    assert {f'decision_map_raw_{i:02d}.png', f'decision_map_{i:02d}.png'} <= names
  assert 'decision_map.png' not in names and 'index_map.png' in names
  assert sorted(os.listdir(out / 'focal_stack')) == ['plane_00.png', 'plane_01.png', 'plane_02.png']
  assert _shape(out / 'focal_stack' / 'plane_02.png') == (14, 13, 3)
  assert _shape(out / 'fused.png') == (28, 26, 3)

  p = json.loads((out / 'planes.json').read_text())
  assert p['how'] == 'user' and p['planes'] == [-0.5, 0.0, 0.5] and p['num_planes'] == 3
  assert p['crop'] == [2, 3, 28, 26] and p['lf_downsample'] == 2 and p['processed_size'] == [14, 13, 3]
  assert p['view_size'] == [SIZE, SIZE]
  assert p['aperture'] == 1.5 and p['aperture_views'] == 9  # |offset| <= 1.5: the 3 x 3 block.

  s = json.loads((out / 'summary.json').read_text())
  scores = s['center_view_scores']  # --lf_downsample == --scale: scored at the original resolution.
  for method in ('dfp', 'average+bicubic', 'best_slice+bicubic', 'decision_map+bicubic',
                 'center_view_lr+bicubic'):
    assert {'PSNR', 'SSIM', 'PSNR_Y', 'SSIM_Y'} <= set(scores[method])
    assert 5 < scores[method]['PSNR'] < 100 and -1 <= scores[method]['SSIM'] <= 1
  assert len(s['inputs']) == 3 and len(s['decision_map_fractions']['raw']) == 3


def test_benchmark_gt_scores_every_method_and_writes_json(lf_folder, tmp_path):
  """experiments/benchmark_gt.py on the synthetic light field (centre view = the all-in-focus answer)."""
  out = tmp_path / 'gt.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'benchmark_gt.py'),
                      f'--lightfield={lf_folder / "views"}', '--gt_crop=', '--scales=1,2', '--num_planes=2',
                      '--disparities=-1,1', '--seed=7', f'--json={out}', f'--bench_dir={tmp_path / "bench"}']
                     + TINY_FLAGS, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  d = json.loads(out.read_text())
  assert d['complete'] is True and d['seed'] == 7 and d['crop'] is None
  methods = {'dfp', 'decision_map+bicubic', 'average+bicubic', 'laplacian_pyramid+bicubic',
             'decision_map_threshold+bicubic', 'best_slice+bicubic'}
  by_case = {}
  for row in d['rows']:
    by_case.setdefault(row['case'], {})[row['method']] = row
  assert set(by_case) == {'N2_x1', 'N2_x2'} and all(set(v) == methods for v in by_case.values())
  for case, s in (('N2_x1', 1), ('N2_x2', 2)):
    rows = by_case[case]
    assert rows['dfp']['lr_size'] == [SIZE // s, SIZE // s] and rows['dfp']['iters'] == 3
    assert rows['dfp']['planes'] == [-1.0, 1.0]
  # At x1 each slice has one half exactly in focus and the other blurred by the full aperture: the
  # selection by the decision map must score far above the average (a sign error in the protocol, or
  # scoring against the wrong view, breaks this).
  x1 = by_case['N2_x1']
  assert x1['decision_map+bicubic']['PSNR'] > x1['average+bicubic']['PSNR'] + 3
  assert x1['decision_map+bicubic']['PSNR'] > x1['best_slice+bicubic']['PSNR'] + 3
  assert '| N2_x2 | dfp |' in r.stdout and os.path.exists(tmp_path / 'bench' / 'N2_x1_sheet.png')


@pytest.mark.parametrize('case, match', [
    ('missing', 'nope: light-field folder not found'),
    ('no_views', 'no light-field views found'),
    ('crop_outside', 'does not fit views of size 32 x 32'),
    ('crop_malformed', '--crop must be four integers y,x,h,w'),
    ('downsample_zero', '--lf_downsample must be an integer >= 1, got 0'),
    ('one_plane', '--planes needs at least 2 disparities'),
    ('planes_text', '--planes must be comma-separated numbers'),
    ('planes_far', '--planes: disparity 300 shifts the outermost views'),
    ('sweep_huge', '--sweep=-2,2,100000: need finite min < max and 2 <= count <= 257'),
    ('outdir_is_lf', 'holds the input'),
    ('outdir_foreign', 'is not a previous dfp_jax result'),
    ('crop_small', 'the processed views are 6x6 (after --crop / --lf_downsample)'),
    ('memory', 'the light-field stage (25 views of 32x32x3) needs about 304 MiB but only 200 MiB'),
])
def test_bad_input_gives_one_clear_line(lf_folder, tmp_path, case, match):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('previous results')  # A previous result: replaceable, never on error.
  (out / 'summary.json').write_text(json.dumps({'dfp_jax_version': '0',
                                                'output': {'files': ['keep.txt', 'summary.json']}}))
  views = f'--lightfield={lf_folder / "views"}'
  before = sorted(os.listdir(lf_folder / 'views'))
  args = {
      'missing': [f'--lightfield={lf_folder / "nope"}'],
      'no_views': [f'--lightfield={lf_folder / "empty"}'],
      'crop_outside': [views, '--crop=8,8,32,16'],
      'crop_malformed': [views, '--crop=1,2,3'],
      'downsample_zero': [views, '--lf_downsample=0'],
      'one_plane': [views, '--planes=0.5'],
      'planes_text': [views, '--planes=near,far'],
      'planes_far': [views, '--planes=0,300'],
      'sweep_huge': [views, '--sweep=-2,2,100000'],
      'outdir_is_lf': [views, f'--output_dir={lf_folder / "views"}'],
      'outdir_foreign': [views, f'--output_dir={lf_folder / "empty"}'],
      'crop_small': [views, '--crop=0,0,12,12', '--lf_downsample=2'],
      'memory': [views],  # With DFP_JAX_MEMORY_BUDGET below what the light-field stage needs.  # notes.txt, photo.png: not ours.
  }[case]
  if not any(a.startswith('--output_dir') for a in args):
    args.append(f'--output_dir={out}')
  r = _run(args + TINY_FLAGS, **({'DFP_JAX_MEMORY_BUDGET': str(200 * 2**20)} if case == 'memory' else {}))
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  err_lines = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert len(err_lines) == 1 and match in err_lines[0], r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  assert sorted(os.listdir(out)) == ['keep.txt', 'summary.json']  # Nothing written, nothing lost.
  assert sorted(os.listdir(lf_folder / 'views')) == before


def test_x1_ceiling_bounds_are_ordered_on_the_synthetic_light_field(lf_folder, tmp_path):
  """experiments/x1_ceiling.py: the per-pixel oracle selection is no worse than any other selection (the
  map, the windowed oracles, the |Laplacian| rule), the per-pixel best convex blend no worse than any
  selection or feathered blend, and a window of sigma 0.01 (an identity kernel) turns the windowed
  oracle into the per-pixel one."""
  out = tmp_path / 'ceiling.json'
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'x1_ceiling.py'),
                      f'--lightfield={lf_folder / "views"}', '--regions=0:0', f'--region_size={SIZE}',
                      '--num_planes=2,3', '--window_sigmas=0.01,2', f'--json={out}'], cwd=ROOT,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  d = json.loads(out.read_text())
  assert [row['num_planes'] for row in d['rows']] == [2, 3]
  for row in d['rows']:
    p = {k: v['PSNR'] for k, v in row['scores'].items()}
    selections = ['map', 'laplacian 0.01', 'laplacian 2', 'oracle window 0.01', 'oracle window 2']
    assert set(p) == set(selections) | {'feather 1', 'feather 2', 'oracle pixel', 'oracle blend'}, p
    assert all(p['oracle pixel'] >= p[k] - 1e-6 for k in selections), p
    assert all(p['oracle blend'] >= p[k] - 1e-6 for k in p), p
    assert abs(p['oracle window 0.01'] - p['oracle pixel']) < 1e-6, p
  assert '| 3 (1 regions) |' in r.stdout


def _dense_simplex_best(stack, gt, steps=200):
  """Smallest squared error over convex weights of 3 inputs on a 1/steps grid, per pixel."""
  a, b = np.meshgrid(np.arange(steps + 1) / steps, np.arange(steps + 1) / steps, indexing='ij')
  keep = a + b <= 1 + 1e-12
  w = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]])  # [3, G]
  fits = np.einsum('ng,nhwc->ghwc', w, stack.astype(np.float64))
  return ((fits - gt[None]) ** 2).sum(-1).min(0)


@pytest.mark.parametrize('channels', [3, 1])
def test_oracle_blend_matches_a_dense_search_of_the_simplex(channels):
  """The exact per-pixel convex blend against a 1/200 grid of the weights, for 3 inputs in colour and in
  grey (where the 3-input face is underdetermined and must come from the 2-input faces)."""
  sys.path.insert(0, ROOT)
  from experiments import oracles  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  stack = rng.random((3, 4, 5, channels)).astype(np.float32)
  gt = rng.random((4, 5, channels)).astype(np.float32)
  err = ((oracles.oracle_blend(stack, gt).astype(np.float64) - gt) ** 2).sum(-1)
  dense = _dense_simplex_best(stack, gt)
  # The exact optimum is never above the grid's best (a blend outside the simplex would be far below it).
  assert np.all(err <= dense + 1e-6), (err, dense)
  np.testing.assert_allclose(err, dense, atol=2e-5)


def test_laplacian_selection_picks_the_sharp_input_and_window_oracle_the_true_one():
  sys.path.insert(0, ROOT)
  from experiments import oracles  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  sharp = cv2.GaussianBlur(rng.random((24, 24, 3)).astype(np.float32), (3, 3), 0.6)
  blurred = cv2.GaussianBlur(sharp, (9, 9), 2.5)
  left = (np.arange(24) < 12)[None, :, None]
  a, b = np.where(left, sharp, blurred), np.where(left, blurred, sharp)  # Each sharp on one half.
  stack = np.stack([a, b])
  inner = np.s_[:, 3:9]  # Away from the border between the halves (a window straddles it).
  np.testing.assert_array_equal(oracles.laplacian_selection(stack, 1.0)[inner], sharp[inner])
  np.testing.assert_array_equal(oracles.oracle_window(stack, sharp, 1.0)[inner], sharp[inner])
  np.testing.assert_array_equal(oracles.oracle_pixel(stack, sharp), sharp)
