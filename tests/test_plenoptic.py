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

import synthetic  # pylint: disable=g-bad-import-order  (tests/ is on the path)

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


def _shape(path):
  im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert im is not None, path
  return im.shape


@pytest.fixture(scope='module')
def lf_folder(tmp_path_factory):
  d = tmp_path_factory.mktemp('lf')
  synthetic.write_light_field(str(d / 'views'))
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
  # The user's files inside a subfolder of the result: the folder is refused, nothing deleted.
  (out / 'focal_stack' / 'my_notes.txt').write_text('mine')
  (out / 'focal_stack' / 'mine').mkdir()
  (out / 'focal_stack' / 'mine' / 'keep.txt').write_text('mine too')
  r = _run([f'--lightfield={lf_folder / "views"}', f'--output_dir={out}', '--scale=2'] + TINY_FLAGS)
  err = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
  assert r.returncode == 2 and len(err) == 1 and 'which this tool did not write' in err[0], r.stderr[-2000:]
  assert (out / 'focal_stack' / 'my_notes.txt').read_text() == 'mine'
  assert (out / 'focal_stack' / 'mine' / 'keep.txt').read_text() == 'mine too'


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


def test_fuse_light_field_with_the_deep_decoder_prior(lf_folder):
  """The light-field pipeline as a call, with the second prior."""
  from dfp_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from dfp_jax import lightfield, models  # pylint: disable=g-import-not-at-top
  lf = lightfield.load_light_field(str(lf_folder / 'views'))
  cfg = config_lib.FusionConfig(prior='deep_decoder', deep_decoder=models.DeepDecoderConfig(6, 2),
                                mask_iters=0, iters=3, chunk_size=3, stop='fixed')
  result, stack = lightfield.fuse_light_field(lf, cfg, lightfield.LightFieldConfig(num_planes=2))
  assert result.fused.shape == (2 * SIZE, 2 * SIZE, 3) and stack.slices.shape == (2, SIZE, SIZE, 3)
  assert len(stack.planes) == 2 and stack.how == 'auto'


def test_light_field_job_fuses_in_tiles_when_asked(lf_folder, tmp_path):
  """The light-field job plans like the single-scene job: tiles when the optimisation does not fit whole
  (forced here with --tile_size), assembled to the full output size, the plan in summary.json."""
  out = tmp_path / 'out'
  r = _run([f'--lightfield={lf_folder / "views"}', f'--output_dir={out}', '--scale=2', '--tile_size=32',
            '--tile_overlap=16'] + TINY_FLAGS)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['plan']['kind'] == 'tiles' and summary['plan']['tile'] == 32
  assert _shape(out / 'fused.png') == (2 * SIZE, 2 * SIZE, 3)
  fused = cv2.imread(str(out / 'fused.png'))
  assert fused.std() > 1.0  # An image, not a constant fill.
