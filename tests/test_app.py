"""The application package: flags derived from the configuration, their conversion, the generated flag
reference, and the three entry points giving the same result."""

import errno
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from absl import flags

from dfp_jax import config as config_lib
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import lightfield
from dfp_jax.app import cli_reference
from dfp_jax.app import flags as app_flags
from dfp_jax.app import outputs
from dfp_jax.app import scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ['--iters=3', '--mask_iters=2', '--chunk_size=2', '--channels=4,8', '--skip_channels=2,2',
              '--mask_skip_channels=0,2', '--kernel_size=3', '--nocompilation_cache']


def _parsed(*argv) -> flags.FlagValues:
  values = flags.FlagValues()
  app_flags.define_flags(values)
  values(['prog', *argv])
  return values


@pytest.mark.parametrize('rule', ['compare', 'threshold'])
def test_flags_reach_the_config(rule):
  f = _parsed(f'--doublereblur_rule={rule}', '--doublereblur=3,5,5,0.02,0', '--doublereblur_argmax_sigma=1.5',
              '--channels=4,8', '--skip_channels=2,1', '--mask_skip_channels=0,3', '--kernel_size=3',
              '--loss_weights=2,0.25,0', '--output_average=last', '--scale=4', '--stop_patience=3')
  c = app_flags.fusion_config(f)
  p = c.focus.doublereblur
  assert (p.rule, p.as_list(), p.argmax_sigma) == (rule, [3, 5, 5, 0.02, 0], 1.5)
  assert c.image_net.channels_down == c.image_net.channels_up == c.mask_net.channels_down == (4, 8)
  assert c.image_net.channels_skip == (2, 1) and c.mask_net.channels_skip == (0, 3)
  assert c.image_net.kernel_size == c.mask_net.kernel_size == 3
  assert (c.loss_weights.alpha, c.loss_weights.beta, c.loss_weights.gamma) == (2.0, 0.25, 0.0)
  assert (c.output_average, c.scale, c.stop_patience) == ('last', 4, 3)


@pytest.mark.parametrize('argv, match', [
    (['--channels=4,x'], '--channels must be comma-separated integers'),
    (['--loss_weights=1,2'], '--loss_weights must be 3 comma-separated numbers'),
    (['--channels=4,8'], 'same length'),
    (['--stop_tol=0'], 'stop_tol must be > 0'),
])
def test_bad_config_flags_are_one_clear_value_error(argv, match):
  with pytest.raises(ValueError, match=match):
    app_flags.fusion_config(_parsed(*argv))


def test_integer_flag_with_choices_is_refused_at_parsing():
  with pytest.raises(flags.IllegalFlagValueError, match='--scale must be 1, 2 or 4'):
    _parsed('--scale=3')


@pytest.mark.parametrize('argv, match', [
    (['--crop=1,2,3'], '--crop must be four integers'),
    (['--sweep=-2,2'], '--sweep must be min,max,count'),
    (['--planes=0.5'], 'at least 2 disparities'),
    (['--num_planes=40'], 'between 2 and the 33 swept'),
    (['--lf_downsample=0'], '--lf_downsample must be an integer >= 1'),
])
def test_bad_light_field_flags_are_one_clear_error(argv, match):
  with pytest.raises(ValueError, match=match):
    app_flags.lightfield_config(_parsed(*argv))


def test_parsed_default_flags_give_the_default_configs():
  parsed = _parsed()
  assert app_flags.fusion_config(parsed) == config_lib.FusionConfig()
  assert app_flags.lightfield_config(parsed) == lightfield.LightFieldConfig()


def test_output_bit_depth_rule():
  args = scene.SceneArgs()
  assert args.bit_depth([8, 8]) == 8 and args.bit_depth([8, 16]) == 16
  assert args.bit_depth([32, 8]) == 16  # A float TIFF keeps more than 8 bits.
  assert scene.SceneArgs(output_bit_depth='8').bit_depth([16]) == 8


def test_committed_cli_reference_is_what_the_generator_writes():
  with open(os.path.join(ROOT, 'docs', 'cli.md'), encoding='utf-8') as f:
    committed = f.read()
  assert committed == cli_reference.reference() + '\n', (
      'docs/cli.md is stale: run python -m dfp_jax.app.cli_reference > docs/cli.md')


def test_three_entry_points_give_bit_identical_results(tmp_path):
  """experiments/run.py, python -m dfp_jax and the dfp-jax console script run the same application."""
  paths = []
  for name in 'AB':
    im = cv2.imread(os.path.join(ROOT, 'examples', 'lytro_golfer', f'{name}.png'))[:32, :40]
    paths.append(str(tmp_path / f'{name}.png'))
    assert cv2.imwrite(paths[-1], im)
  console = os.path.join(os.path.dirname(sys.executable), 'dfp-jax')
  commands = {'run.py': [sys.executable, os.path.join(ROOT, 'experiments', 'run.py')],
              'module': [sys.executable, '-m', 'dfp_jax']}
  if os.path.exists(console):  # Installed by `pip install -e .` (the README's install step).
    commands['console'] = [console]
  fused = {}
  for name, command in commands.items():
    out = tmp_path / name
    r = subprocess.run(command + [f'--inputs={paths[0]},{paths[1]}', f'--output_dir={out}', '--scale=2']
                       + TINY_FLAGS, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert r.returncode == 0, (name, r.stderr[-2000:])
    with open(out / 'fused.png', 'rb') as f:
      fused[name] = f.read()
  assert len(set(fused.values())) == 1, list(fused)
  assert np.asarray(cv2.imread(str(tmp_path / 'module' / 'fused.png'))).shape == (64, 80, 3)


def test_a_full_disk_while_writing_is_one_clear_error(tmp_path, monkeypatch):
  """OSError (ENOSPC) from any writer becomes an InputError naming the output folder; nothing half-done
  is left for the caller to move into place (the staging folder is removed by StagingDir)."""
  n, h, w = 2, 8, 8
  result = fusion.FusionResult(np.zeros((16, 16, 3), np.float32), np.zeros((h, w, 3), np.float32),
                               np.stack([np.ones((h, w)), np.zeros((h, w))]).astype(np.float32),
                               np.stack([np.ones((h, w)), np.zeros((h, w))]).astype(np.float32),
                               np.zeros((16, 16, 3), np.float32), {'main': {'total': np.ones(3)}},
                               {'total_s': 1.0})
  calls = []

  def full(path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(path, *args, **kwargs)

  real = outputs.image_io.write_image
  monkeypatch.setattr(outputs.image_io, 'write_image', full)
  images = [np.zeros((h, w, 3), np.float32)] * n
  with pytest.raises(errors.InputError, match=r'results: writing the results failed \(No space left on '
                     r'device\); nothing was changed there'):
    outputs.write_result(str(tmp_path), result, images, ['a', 'b'], [{}, {}], config_lib.FusionConfig(),
                         8, shown_as='results')
