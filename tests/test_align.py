"""align: registration of hand-held focus brackets, on synthetic warps of real images.

Real data: the bundled pair examples/lytro_golfer (128 x 128) and, when the shared data is found, a
256 x 256 crop of the Lytro pair lytro_01. A moving frame is rendered by warping a 2x supersampled copy
of the image and area-downsampling it (as a sensor integrates), then both frames are cropped to the
region where the moving frame holds real content, so the true reference -> moving transform is known
exactly. Errors are RMS distances over the pixel grid between the estimated and the true transform.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest

from dfp_jax import align
from dfp_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLFER = os.path.join(ROOT, 'examples', 'lytro_golfer')
SHARED_LYTRO = os.path.join(ROOT, '..', 'shared', 'data', 'mfifb', 'lytro_01')


def _read(path):
  im = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]
  return np.ascontiguousarray(im.astype(np.float32) / 255.0)


@pytest.fixture(scope='module')
def golfer():
  return _read(os.path.join(GOLFER, 'A.png')), _read(os.path.join(GOLFER, 'B.png'))


@pytest.fixture(scope='module')
def lytro():
  path = os.path.join(SHARED_LYTRO, 'A.jpg')
  if not os.path.exists(path):
    pytest.skip(f'shared data not found at {SHARED_LYTRO}')
  a = _read(path)
  return a[132:388, 132:388]  # 256 x 256, centre.


def _render(ref_src, mov_src, w_true):
  """(reference, moving, true transform) cropped to where the moving frame holds real content."""
  h, w = ref_src.shape[:2]
  m = int(math.ceil(align.max_displacement(w_true, (h, w)))) + 3
  s = align.scale_matrix(2, 2)

  def render(src, wt):
    up = cv2.resize(src, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
    out = cv2.warpPerspective(up, align.conjugate(wt, s), (2 * w, 2 * h), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REFLECT)
    return np.clip(cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA), 0, 1)[m:h - m, m:w - m]

  t = np.array([[1.0, 0, m], [0, 1, m], [0, 0, 1]])
  return (np.ascontiguousarray(render(ref_src, np.eye(3))), np.ascontiguousarray(render(mov_src, w_true)),
          np.linalg.inv(t) @ w_true @ t)


def _blur(im, sigma):
  return cv2.GaussianBlur(im, (0, 0), sigma)


WARPS = {
    'shift': dict(shift=(2.2, -1.7)),
    'rotation': dict(angle_deg=1.2),
    'magnification': dict(magnification=0.03),
    'combined': dict(shift=(-3.0, 1.5), angle_deg=-0.8, magnification=-0.025),
}


@pytest.mark.parametrize('warp', list(WARPS))
def test_synthetic_warp_of_real_image_recovered_within_0p1_px(lytro, warp):
  wt = align.centred_similarity(lytro.shape, **WARPS[warp])
  ref, mov, truth = _render(lytro, lytro, wt)
  w, diag = align.estimate_transform(mov, ref)
  assert align.rms_difference(w, truth, ref.shape) < 0.1
  assert diag.correlation > 0.95


@pytest.mark.parametrize('warp', ['shift', 'combined'])
def test_bundled_pair_warp_recovered_within_0p1_px(golfer, warp):
  a, _ = golfer
  wt = align.centred_similarity(a.shape, **WARPS[warp])
  ref, mov, truth = _render(a, a, wt)
  w, _ = align.estimate_transform(mov, ref)
  assert align.rms_difference(w, truth, ref.shape) < 0.1


def test_affine_and_homography_models_recover_a_similarity(lytro):
  wt = align.centred_similarity(lytro.shape, **WARPS['combined'])
  ref, mov, truth = _render(lytro, lytro, wt)
  for model in ('affine', 'homography'):
    w, _ = align.estimate_transform(mov, ref, model)
    assert align.rms_difference(w, truth, ref.shape) < 0.1, model


@pytest.mark.parametrize('sigma', [1.5, 3.0])
def test_defocused_moving_frame_still_registered(lytro, sigma):
  """The moving frame is blurred (defocused) and the reference is sharp."""
  wt = align.centred_similarity(lytro.shape, **WARPS['combined'])
  ref, mov, truth = _render(lytro, _blur(lytro, sigma), wt)
  w, _ = align.estimate_transform(mov, ref)
  assert align.rms_difference(w, truth, ref.shape) < 0.25


def test_complementary_defocus_pair_registered(lytro):
  """Reference sharp on the left and blurred on the right, moving frame the opposite (a focus bracket)."""
  x = np.linspace(0, 1, lytro.shape[1])
  t = np.clip((x - 0.4375) / 0.125, 0, 1)[None, :, None].astype(np.float32)
  b = _blur(lytro, 2.5)
  near, far = lytro * (1 - t) + b * t, lytro * t + b * (1 - t)
  wt = align.centred_similarity(lytro.shape, **WARPS['combined'])
  ref, mov, truth = _render(near, far, wt)
  reg = align.register_stack([ref, mov])
  assert align.rms_difference(reg.transforms[1], truth, ref.shape) < 0.25
  assert reg.warped.tolist() == [False, True]


def test_real_pair_as_stored_registers_with_high_correlation(golfer):
  a, b = golfer
  reg = align.register_stack([a, b], mode='on')
  assert reg.correlation[1] > 0.9
  assert reg.displacement_px[1] < 1.5  # The bundled pair is nearly aligned.


def test_flat_frames_taken_as_aligned():
  flat = np.full((64, 80, 3), 0.5, np.float32)
  noisy = flat + np.random.default_rng(0).normal(0, 0.001, flat.shape).astype(np.float32)
  reg = align.register_stack([flat, noisy, flat], mode='on')
  assert reg.flat.tolist() == [False, True, True]
  np.testing.assert_array_equal(reg.transforms, np.tile(np.eye(3), (3, 1, 1)))
  assert not reg.warped.any() and reg.masks.all()
  np.testing.assert_array_equal(reg.images[1], noisy)


def test_uncorrelated_input_refused_with_its_name(lytro):
  noise = np.random.default_rng(1).random(lytro.shape).astype(np.float32)
  with pytest.raises(align.RegistrationError,
                     match=r'noise\.png: cannot be aligned .*no correlation.*--align=off') as e:
    align.register_stack([lytro, lytro, noise], names=['a.png', 'b.png', 'noise.png'])
  assert e.value.index == 2 and e.value.name == 'noise.png'


def test_little_overlap_refused_with_its_name():
  if not os.path.exists(SHARED_LYTRO):
    pytest.skip('shared data not found')
  a = _read(os.path.join(SHARED_LYTRO, 'A.jpg'))
  ref, mov = a[100:356, 100:356], a[100:356, 254:510]  # Shifted by 60% of the width.
  with pytest.raises(align.RegistrationError, match=r'shifted\.png: cannot be aligned .*overlap'):
    align.register_stack([ref, mov], names=['ref.png', 'shifted.png'])


def test_identity_inputs_give_identity_and_are_not_warped_in_auto(golfer):
  a, _ = golfer
  reg = align.register_stack([a, a.copy(), _blur(a, 1.0)], mode='auto')
  assert not reg.warped.any()
  assert reg.masks.all()
  for w in reg.transforms:
    assert align.max_displacement(w, a.shape) < align.DEFAULT_THRESHOLD_PX
  np.testing.assert_array_equal(reg.images[1], a)


def test_off_mode_estimates_nothing(golfer):
  a, b = golfer
  reg = align.register_stack([a, b], mode='off')
  np.testing.assert_array_equal(reg.transforms, np.tile(np.eye(3), (2, 1, 1)))
  assert not reg.warped.any() and reg.masks.all()


def test_auto_warps_only_inputs_that_moved(lytro):
  ref, mov, truth = _render(lytro, lytro, align.centred_similarity(lytro.shape, shift=(1.0, 0.5)))
  reg = align.register_stack([ref, ref.copy(), mov], mode='auto')
  assert reg.warped.tolist() == [False, False, True]
  assert reg.images.shape == (3,) + ref.shape


def test_reference_middle_and_output_keeps_reference_grid(lytro):
  ref, mov, truth = _render(lytro, lytro, align.centred_similarity(lytro.shape, shift=(1.5, -1.0),
                                                                  magnification=0.01))
  reg = align.register_stack([mov, ref, mov], reference='middle')
  assert reg.reference == 1 and not reg.warped[1]
  assert align.rms_difference(reg.transforms[0], truth, ref.shape) < 0.1
  # The aligned frames match the reference where they are valid.
  err = np.abs(reg.images[0] - ref)[reg.masks[0]][..., None]
  assert np.sqrt(np.mean(err ** 2)) < 0.02


def test_a_reference_beyond_a_scenes_inputs_is_an_input_error(lytro):
  """--align_reference=2 on a two-input scene is that scene's error (batch mode records it and goes on),
  naming the flag, not a ValueError that stops the run."""
  with pytest.raises(errors.InputError, match=r'--align_reference=2: this scene has 2 inputs'):
    align.register_stack([lytro, lytro], reference='2')


@pytest.mark.parametrize('w', [
    align.centred_similarity((40, 50), shift=(3.3, -2.1), angle_deg=2.0, magnification=-0.05),
    np.array([[1.01, 0.02, -1.5], [-0.01, 0.98, 2.25], [1e-4, -2e-4, 1.0]]),
])
def test_validity_mask_false_exactly_where_the_warp_samples_outside(w):
  h, wd = 40, 50
  mask = align.validity_mask(w, (h, wd), (h, wd))
  ys, xs = np.mgrid[0:h, 0:wd].astype(np.float64)
  p = align.apply(w, np.stack([xs, ys], -1))
  inside = (p[..., 0] >= 0) & (p[..., 0] <= wd - 1) & (p[..., 1] >= 0) & (p[..., 1] <= h - 1)
  np.testing.assert_array_equal(mask, inside)
  assert 0 < mask.sum() < h * wd
  # warp() returns the same mask, and its valid pixels are inside the moving frame's value range.
  img = np.random.default_rng(0).random((h, wd, 3)).astype(np.float32)
  out, m2 = align.warp(img, w, (h, wd))
  np.testing.assert_array_equal(m2, mask)
  assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1


def test_warp_with_known_shift_matches_the_frame():
  """A whole-pixel shift resamples exactly: aligned(x) = moving(x + d)."""
  img = np.random.default_rng(2).random((30, 40, 1)).astype(np.float32)
  w = align.centred_similarity(img.shape, shift=(2.0, -3.0))
  out, mask = align.warp(img, w, img.shape, cv2.INTER_LINEAR)
  np.testing.assert_allclose(out[3:, :38], img[:27, 2:], atol=1e-6)
  assert mask[3:, :38].all() and not mask[:3].any() and not mask[:, 38:].any()


def test_summary_is_json_ready(golfer):
  import json
  a, b = golfer
  reg = align.register_stack([a, b], names=['A.png', 'B.png'], mode='on')
  s = json.loads(json.dumps(reg.summary(['A.png', 'B.png'])))
  assert s['inputs'][1]['name'] == 'B.png' and s['inputs'][1]['warped'] is True
  assert set(s['inputs'][1]) >= {'shift_px', 'rotation_deg', 'magnification_pct', 'max_displacement_px', 'matrix',
                                 'correlation', 'residual_px', 'coverage'}


def test_auto_takes_frames_too_small_to_register_as_aligned_and_on_still_tries():
  """Two unrelated 40x48 frames: 'auto' does not refuse them (nothing to estimate from), says why in the
  summary and leaves them untouched; 'on' estimates and refuses the unrelated input by name."""
  rng = np.random.default_rng(3)
  a, b = rng.random((2, 40, 48, 3), dtype=np.float32)
  reg = align.register_stack([a, b], mode='auto', names=['a.png', 'b.png'])
  assert reg.skipped and '40x48' in reg.skipped and 'skipped' in reg.summary()
  assert not reg.warped.any() and reg.masks.all()
  np.testing.assert_array_equal(reg.images[1], b)
  with pytest.raises(align.RegistrationError, match='b.png'):
    align.register_stack([a, b], mode='on', names=['a.png', 'b.png'])
