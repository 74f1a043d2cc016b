"""Tests of dfp_jax.focus (DoubleReblur) against the NumPy/OpenCV/SciPy reference in reference_focus.py.

Real data: the bundled pair examples/lytro_golfer (128 x 128) and, when the shared data sits next to the
clone (../shared/data/mfifb), 128 x 128 crops of three shared pairs plus one full-size pair. Every
DoubleReblur call on a 128 x 128 pair goes through one module-level jitted function, so the suite compiles
few programs. Float32 tolerances: kernel 1e-6, reblur outputs 2e-6 (measured errors are ~2e-8 and
~5e-7); binary maps must agree exactly except where the reference s is within 1e-5 of t (and the closing
neighbourhood of such pixels); final maps IoU >= 0.98 (measured 1.0 on all pairs).
"""

from __future__ import annotations

import functools
import glob
import os

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import reference_focus as ref  # noqa: E402

from dfp_jax import filters, focus  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_PAIR = os.path.join(REPO, 'examples', 'lytro_golfer')
SHARED_MFIFB = os.path.join(REPO, '..', 'shared', 'data', 'mfifb')

PARAMS = focus.DoubleReblurParams(rule='threshold')  # The paper's [5, 3, 3, 0.01, 1].
S_TOL = 1e-5  # |s - t| below this: the threshold decision is float-ambiguous.
SIZE = 128

# (pair, (row, col) of a SIZE x SIZE crop, or None for the full image). Crops picked where both shots
# have in-focus content (the reference map covers 25-75% of the crop).
SHARED_CASES = [
    ('lytro_01', (300, 50)),
    ('lytro_02', (300, 50)),
    ('temple', (300, 50)),  # greyscale BMP
    ('lytro_04', (200, 250)),
    ('lytro_01', None),  # 520 x 520, full size (about 1.5 s with its compile)
]


# -------------------------------------------------------------------------------------------- helpers


@functools.partial(jax.jit, static_argnums=2)
def _steps(y_a, y_b, params):
  return focus.double_reblur_steps(y_a, y_b, params)


@jax.jit
def _largest(mask):
  return focus.largest_component(mask)


@jax.jit
def _fill(mask):
  return focus.fill_holes(mask)


def _read_rgb(path: str) -> np.ndarray:
  bgr = cv2.imread(path, cv2.IMREAD_COLOR)
  if bgr is None:
    raise FileNotFoundError(path)
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _load_lumas(pair_dir: str):
  lumas = []
  for name in ('A', 'B'):
    paths = sorted(glob.glob(os.path.join(pair_dir, name + '.*')))
    if not paths:
      raise FileNotFoundError(os.path.join(pair_dir, name + '.*'))
    lumas.append(np.asarray(filters.luma(jnp.asarray(_read_rgb(paths[0])))))
  return lumas


def _bundled_lumas():
  if not all(os.path.exists(os.path.join(BUNDLED_PAIR, n + '.png')) for n in 'AB'):
    pytest.skip(f'bundled example pair not present yet at {BUNDLED_PAIR} (A.png, B.png)')
  return _load_lumas(BUNDLED_PAIR)


def _shared_lumas(pair, crop):
  pair_dir = os.path.join(SHARED_MFIFB, pair)
  if not os.path.isdir(pair_dir):
    pytest.skip(f'shared data not found at {os.path.normpath(pair_dir)} (optional next to the clone)')
  y_a, y_b = _load_lumas(pair_dir)
  if crop is not None:
    r, c = crop
    y_a, y_b = y_a[r:r + SIZE, c:c + SIZE], y_b[r:r + SIZE, c:c + SIZE]
  return y_a, y_b


def iou(a, b) -> float:
  a = np.asarray(a) > 0.5
  b = np.asarray(b) > 0.5
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _texture(seed: int, shape=(SIZE, SIZE)) -> np.ndarray:
  """Sharp band-limited noise texture, mean 0.5, std 0.1."""
  noise = np.random.default_rng(seed).standard_normal(shape)
  noise = cv2.GaussianBlur(noise, (0, 0), 1.0)
  return 0.5 + 0.1 * noise / noise.std()


def _blur(x, sigma=2.0):
  return cv2.GaussianBlur(x, (0, 0), sigma)


def _wave_mask(shape=(SIZE, SIZE), phase=0.0) -> np.ndarray:
  """Left part of the image up to a wavy vertical boundary: M and 1 - M both touch the border and
  have no holes."""
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return (xx < shape[1] / 2 + 12 * np.sin(2 * np.pi * yy / 64 + phase)).astype(np.float64)


def _synthetic_pair(mask, seed=0, sigma=2.0):
  """A sharp where mask is 1, B sharp elsewhere (float32 lumas)."""
  x = _texture(seed, mask.shape)
  bx = _blur(x, sigma)
  a = mask * x + (1 - mask) * bx
  b = mask * bx + (1 - mask) * x
  return a.astype(np.float32), b.astype(np.float32)


def assert_steps_match_reference(steps, r, params, min_iou=0.98):
  """Per-step comparison of jnp DoubleReblurSteps with the reference Steps; returns the final IoU."""
  steps = jax.tree_util.tree_map(np.asarray, steps)
  size = 2 * params.radius - 1
  chex.assert_shape(steps.kernel, (size, size))
  assert np.all(steps.kernel >= 0)
  np.testing.assert_allclose(steps.kernel.sum(), 1.0, atol=1e-5)
  np.testing.assert_allclose(steps.kernel, r.kernel, rtol=0, atol=1e-6)
  np.testing.assert_allclose(steps.reblurred, r.reblurred, rtol=0, atol=2e-6)
  np.testing.assert_allclose(steps.d1, r.d1, rtol=0, atol=2e-6)
  np.testing.assert_allclose(steps.s, r.s, rtol=0, atol=2e-6)

  # Threshold (or comparison): equal except where it is float-ambiguous.
  ambiguous = np.abs(r.margin) <= S_TOL
  thr = steps.thresholded > 0.5
  np.testing.assert_array_equal(thr[~ambiguous], r.thresholded[~ambiguous])
  # Closing: equal outside the closing neighbourhood of the ambiguous pixels ...
  reach = params.kd + params.ke + 1
  near = cv2.dilate(ambiguous.astype(np.uint8), np.ones((reach, reach), np.uint8)) > 0
  closed = steps.closed > 0.5
  np.testing.assert_array_equal(closed[~near], r.closed[~near])
  # ... and exactly equal to the reference closing of the jnp thresholded map (step isolated).
  np.testing.assert_array_equal(closed, ref.closing(thr, params.kd, params.ke))
  # Largest region + holes, step isolated: exact.
  expected = ref.fill_holes(ref.largest_component(closed)) if params.f == 1 else closed
  np.testing.assert_array_equal(steps.decision > 0.5, expected)
  # End to end.
  value = iou(steps.decision, r.decision)
  assert value >= min_iou, f'IoU {value:.4f} < {min_iou}'
  return value


def _check_pair(y_a, y_b, params=PARAMS, min_iou=0.98):
  steps = _steps(jnp.asarray(y_a), jnp.asarray(y_b), params)
  r = ref.double_reblur_steps(y_a, y_b, **ref.params_kwargs(params))
  return assert_steps_match_reference(steps, r, params, min_iou)


# ------------------------------------------------------------------------------------ real data


def test_bundled_pair_matches_reference():
  y_a, y_b = _bundled_lumas()
  chex.assert_shape([y_a, y_b], (SIZE, SIZE))
  value = _check_pair(y_a, y_b)
  print(f'lytro_golfer IoU {value:.4f}')


@pytest.mark.parametrize('pair,crop', SHARED_CASES,
                         ids=[f'{p}-{"full" if c is None else "crop%d_%d" % c}' for p, c in SHARED_CASES])
def test_shared_pair_matches_reference(pair, crop):
  y_a, y_b = _shared_lumas(pair, crop)
  value = _check_pair(y_a, y_b)
  print(f'{pair} {crop} IoU {value:.4f}')


COMPARE = focus.DoubleReblurParams(rule='compare')


def test_compare_rule_matches_reference_on_real_pairs():
  """The default two-input rule, step by step against the OpenCV/NumPy reference, on the bundled pair
  and (where ../shared is present) on a whole shared pair."""
  _check_pair(*_bundled_lumas(), COMPARE)
  try:
    y_a, y_b = _shared_lumas('lytro_04', None)
  except pytest.skip.Exception:
    return
  _check_pair(y_a, y_b, COMPARE)


def test_compare_rule_is_antisymmetric_and_contrast_invariant():
  """Swapping the inputs swaps the answer (up to ties); a common gain changes nothing and a lower
  contrast almost nothing: the rule has no absolute threshold. The paper's rule fails the last check."""
  mask = _wave_mask()
  y_a, y_b = _synthetic_pair(mask)
  no_regions = focus.DoubleReblurParams(f=0, rule='compare')
  ab = np.asarray(_steps(jnp.asarray(y_a), jnp.asarray(y_b), no_regions).thresholded)
  ba = np.asarray(_steps(jnp.asarray(y_b), jnp.asarray(y_a), no_regions).thresholded)
  r = ref.double_reblur_steps(y_a, y_b, **ref.params_kwargs(no_regions))
  tie = np.abs(r.margin) <= S_TOL
  np.testing.assert_array_equal(ab[~tie], 1 - ba[~tie])
  assert iou(ab, mask) > 0.9
  dark = np.asarray(_steps(jnp.asarray(0.2 * y_a), jnp.asarray(0.2 * y_b), COMPARE).decision)
  full = np.asarray(_steps(jnp.asarray(y_a), jnp.asarray(y_b), COMPARE).decision)
  assert iou(dark, full) > 0.999  # A common gain: the same map up to float rounding.
  for gain in (0.1, 0.3):  # A dim, low-contrast version of the same scene.
    dim = [0.5 + gain * (y - 0.5) for y in (y_a, y_b)]
    got = np.asarray(_steps(jnp.asarray(dim[0]), jnp.asarray(dim[1]), COMPARE).decision)
    want = np.asarray(_steps(jnp.asarray(y_a), jnp.asarray(y_b), COMPARE).decision)
    assert iou(got, want) > 0.99
    paper = np.asarray(_steps(jnp.asarray(dim[0]), jnp.asarray(dim[1]), PARAMS).decision)
    assert iou(paper, mask) < iou(got, mask) - 0.1


def test_compare_rule_ties_go_to_the_first_input():
  """Equal inputs (every pixel a tie) and flat inputs (zero responses) give A everything, as the
  N > 2 argmax gives ties to the lower index."""
  y = _texture(3, (SIZE, SIZE)).astype(np.float32)
  flat = np.full((SIZE, SIZE), 0.4, np.float32)
  for a in (y, flat):
    steps = _steps(jnp.asarray(a), jnp.asarray(a), focus.DoubleReblurParams(f=0, rule='compare'))
    np.testing.assert_array_equal(np.asarray(steps.thresholded), 1.0)
    np.testing.assert_array_equal(np.asarray(steps.decision), 1.0)


def test_compare_rule_is_the_argmax_rule_for_two_inputs():
  """Before the region steps, the two-input map is exactly the N > 2 rule's argmax == 0 (the same
  measures, box means and tie rule) when the N > 2 rule uses the kd box (argmax_sigma = 0), on the
  bundled pair."""
  y_a, y_b = _bundled_lumas()
  params = focus.DoubleReblurParams(f=0, rule='compare', argmax_sigma=0.0)
  thresholded = np.asarray(_steps(jnp.asarray(y_a), jnp.asarray(y_b), params).thresholded)
  measures = np.asarray(_focus_measures(jnp.stack([jnp.asarray(y_a), jnp.asarray(y_b)]), params))
  np.testing.assert_array_equal(thresholded, (np.argmax(measures, axis=0) == 0).astype(np.float32))


def test_default_rule_is_compare():
  assert focus.DoubleReblurParams().rule == 'compare'
  with pytest.raises(ValueError, match='rule'):
    focus.DoubleReblurParams(rule='otsu')


@pytest.mark.parametrize('text', ['3,3,3,0.018,1', '5,5,3,0.01,0', '5,4,2,0.01,1'])
@pytest.mark.parametrize('rule', focus.RULES)
def test_other_parameters_match_reference(text, rule):
  """The authors' other setting, f = 0 (no region step) and even closing sizes, with either rule."""
  params = focus.DoubleReblurParams.parse(text, rule=rule)
  try:
    y_a, y_b = _bundled_lumas()
  except pytest.skip.Exception:
    y_a, y_b = _synthetic_pair(_wave_mask())
  _check_pair(y_a, y_b, params)


# ------------------------------------------------------------------- region steps on hand-made masks


def _mask(rows):
  return np.array([[c == '#' for c in row] for row in rows], bool)


def _pad16(m):
  out = np.zeros((16, 16), bool)
  out[:m.shape[0], :m.shape[1]] = m
  return out


TWO_BLOBS = np.zeros((16, 16), bool)
TWO_BLOBS[1:4, 1:4] = True  # 9 px
TWO_BLOBS[8:14, 6:12] = True  # 36 px

RING = np.zeros((16, 16), bool)
RING[3:12, 3:12] = True
RING[5:10, 5:10] = False  # a 5 x 5 hole

NESTED = RING.copy()
NESTED[6:9, 6:9] = True  # an island in the hole: one region is the largest, both get filled on fill

BORDER_HOLE = np.zeros((16, 16), bool)  # a U open at the top border: its inside is not a hole
BORDER_HOLE[0:8, 4:12] = True
BORDER_HOLE[0:6, 6:10] = False

DIAGONAL = np.zeros((16, 16), bool)  # two squares touching only at a corner: one 8-connected region
DIAGONAL[2:6, 2:6] = True
DIAGONAL[6:9, 6:9] = True
DIAGONAL[12:15, 1:4] = True  # a separate smaller one

DIAMOND = _pad16(_mask([  # an 8-connected outline whose inside reaches outside only diagonally
    '.......',
    '...#...',
    '..#.#..',
    '.#...#.',
    '..#.#..',
    '...#...',
    '.......',
]))

def _snake():
  """One boustrophedon path through the 16 x 16 image: labels must travel its full length (~130 px)."""
  m = np.zeros((16, 16), bool)
  for k, row in enumerate(range(0, 16, 2)):
    m[row, 0:15] = True
    if row + 1 < 15:
      m[row + 1, 14 if k % 2 == 0 else 0] = True
  return m


SNAKE = _snake()

HAND_MADE = {
    'two_blobs': TWO_BLOBS, 'ring': RING, 'nested': NESTED, 'border_hole': BORDER_HOLE,
    'diagonal': DIAGONAL, 'diamond': DIAMOND, 'snake': SNAKE,
    'empty': np.zeros((16, 16), bool), 'full': np.ones((16, 16), bool),
}


@pytest.mark.parametrize('name', sorted(HAND_MADE))
def test_largest_component_and_fill_holes_hand_made(name):
  mask = HAND_MADE[name]
  np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(mask))), ref.largest_component(mask))
  np.testing.assert_array_equal(np.asarray(_fill(jnp.asarray(mask))), ndimage.binary_fill_holes(mask))


def test_hand_made_known_answers():
  """Answers written down by hand, independent of OpenCV/SciPy."""
  big = np.zeros((16, 16), bool)
  big[8:14, 6:12] = True
  np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(TWO_BLOBS))), big)
  filled_ring = np.zeros((16, 16), bool)
  filled_ring[3:12, 3:12] = True
  np.testing.assert_array_equal(np.asarray(_fill(jnp.asarray(RING))), filled_ring)
  np.testing.assert_array_equal(np.asarray(_fill(jnp.asarray(NESTED))), filled_ring)
  np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(NESTED))), RING)
  np.testing.assert_array_equal(np.asarray(_fill(jnp.asarray(BORDER_HOLE))), BORDER_HOLE)
  diag = DIAGONAL.copy()
  diag[12:15, 1:4] = False
  np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(DIAGONAL))), diag)
  assert np.asarray(_fill(jnp.asarray(DIAMOND))).sum() == DIAMOND.sum() + 5  # the 5 inner pixels
  np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(SNAKE))), SNAKE)
  np.testing.assert_array_equal(np.asarray(_fill(jnp.asarray(SNAKE))), SNAKE)
  assert not np.asarray(_largest(jnp.zeros((16, 16), bool))).any()


def test_largest_component_tie_goes_to_later_region():
  mask = np.zeros((16, 16), bool)
  mask[1:4, 1:4] = True
  mask[10:13, 10:13] = True
  expected = np.zeros_like(mask)
  expected[10:13, 10:13] = True
  np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(mask))), expected)


def test_region_steps_random_masks():
  rng = np.random.default_rng(0)
  for density in (0.3, 0.45, 0.6, 0.75):
    for _ in range(5):
      mask = rng.random((16, 16)) < density
      np.testing.assert_array_equal(np.asarray(_largest(jnp.asarray(mask))), ref.largest_component(mask))
      np.testing.assert_array_equal(np.asarray(_fill(jnp.asarray(mask))), ndimage.binary_fill_holes(mask))


# ----------------------------------------------------------------------------- direction / kernel


def test_direction_recovers_synthetic_mask():
  mask = _wave_mask()
  y_a, y_b = _synthetic_pair(mask, seed=0)
  m_a = np.asarray(_steps(jnp.asarray(y_a), jnp.asarray(y_b), PARAMS).decision)
  m_b = np.asarray(_steps(jnp.asarray(y_b), jnp.asarray(y_a), PARAMS).decision)
  assert iou(m_a, mask) > 0.9, iou(m_a, mask)
  assert iou(m_b, 1 - mask) > 0.9, iou(m_b, 1 - mask)


def test_direction_recovers_centred_disc():
  """A sharp in a central disc. (The swapped pair, sharp around a blurred disc, maps to the whole image
  by design: the defocused disc is a hole of the in-focus region and step 6 fills it.)"""
  yy, xx = np.mgrid[:SIZE, :SIZE]
  mask = (((yy - 60) ** 2 + (xx - 70) ** 2) < 40 ** 2).astype(np.float64)
  y_a, y_b = _synthetic_pair(mask, seed=1)
  decision = np.asarray(_steps(jnp.asarray(y_a), jnp.asarray(y_b), PARAMS).decision)
  assert iou(decision, mask) > 0.9, iou(decision, mask)


def _moments(k):
  c = np.arange(k.shape[0]) - k.shape[0] // 2
  mean = np.array([(k.sum(1) * c).sum(), (k.sum(0) * c).sum()])
  std = np.sqrt([(k.sum(1) * c ** 2).sum(), (k.sum(0) * c ** 2).sum()] - mean ** 2)
  return mean, std


def test_kernel_of_gaussian_blur_is_gaussian():
  x = _texture(2)
  size = 2 * PARAMS.radius - 1
  g = cv2.getGaussianKernel(size, 2.0, cv2.CV_64F)[:, 0]
  expected = np.outer(g, g)  # the sigma = 2 Gaussian truncated to the 9 x 9 support
  k = np.asarray(focus.relative_blur_kernel(jnp.asarray(x, jnp.float32),
                                            jnp.asarray(_blur(x, 2.0), jnp.float32)))
  mean, std = _moments(k)
  _, expected_std = _moments(expected)
  np.testing.assert_allclose(mean, 0.0, atol=0.1)
  np.testing.assert_allclose(std, expected_std, rtol=0.08)  # measured: within 4%
  assert np.unravel_index(np.argmax(k), k.shape) == (size // 2, size // 2)
  np.testing.assert_allclose(k, expected, atol=0.01)  # measured max error ~0.004
  # A narrower blur gives a narrower kernel.
  _, std_narrow = _moments(np.asarray(focus.relative_blur_kernel(
      jnp.asarray(x, jnp.float32), jnp.asarray(_blur(x, 1.0), jnp.float32))))
  assert np.all(std_narrow < std - 0.4)


def test_kernel_orientation_shift_and_asymmetric_blur():
  """The kernel blurs A into B as a convolution (B ~ convolve2d(A, h)), not a correlation."""
  x = _texture(3)
  xj = jnp.asarray(x, jnp.float32)
  # A pure shift B[y, x] = A[y - 1, x - 2] is a convolution with a delta at offset (+1, +2).
  k = np.asarray(focus.relative_blur_kernel(xj, jnp.asarray(np.roll(x, (1, 2), (0, 1)), jnp.float32)))
  assert np.unravel_index(np.argmax(k), k.shape) == (4 + 1, 4 + 2)
  # A one-sided smear to the right: the estimate leans right, and convolving A with it approaches B.
  smear = np.zeros((9, 9))
  smear[4, 4:8] = [0.4, 0.3, 0.2, 0.1]
  b = ndimage.convolve(x, smear, mode='wrap')
  k = np.asarray(focus.relative_blur_kernel(xj, jnp.asarray(b, jnp.float32)))
  mean, _ = _moments(k)
  np.testing.assert_allclose(mean, [0.0, 1.0], atol=0.15)
  inner = (slice(8, -8), slice(8, -8))
  err = np.abs(np.asarray(filters.convolve2d(xj, k)) - b)[inner].mean()
  err_flipped = np.abs(np.asarray(filters.convolve2d(xj, k[::-1, ::-1])) - b)[inner].mean()
  err_none = np.abs(x - b)[inner].mean()
  assert err < 0.6 * err_none and err < 0.6 * err_flipped, (err, err_flipped, err_none)


def test_kernel_matches_reference_on_odd_size():
  rng = np.random.default_rng(4)
  y_a = rng.random((37, 50)).astype(np.float32)
  y_b = _blur(y_a.astype(np.float64), 1.5).astype(np.float32)
  k = np.asarray(focus.relative_blur_kernel(jnp.asarray(y_a), jnp.asarray(y_b), radius=3))
  chex.assert_shape(k, (5, 5))
  np.testing.assert_allclose(k, ref.kernel_estimate(y_a, y_b, radius=3), atol=1e-6)
  with pytest.raises(ValueError):
    focus.relative_blur_kernel(jnp.zeros((8, 20)), jnp.zeros((8, 20)))


# ------------------------------------------------------------------------------------ parameters


def test_params_parse_accepts():
  p = focus.DoubleReblurParams.parse('5,3,3,0.01,1')
  assert p == focus.DoubleReblurParams()
  assert p.as_list() == [5, 3, 3, 0.01, 1]
  q = focus.DoubleReblurParams.parse(' 3, 3, 3, 0.018, 0 ', radius=4)
  assert (q.kg, q.kd, q.ke, q.t, q.f, q.radius) == (3, 3, 3, 0.018, 0, 4)


@pytest.mark.parametrize('text', [
    '5,3,3', '5,3,3,0.01,1,7', '', 'a,b,c,d,e', '5,3,3,x,1', '4,3,3,0.01,1', '5,3,3,0.01,2',
    '5,3,3,0.01,-1', '5,0,3,0.01,1', '5,3,0,0.01,1', '5,3,3,-0.01,1', '5,3,3,nan,1', '-5,3,3,0.01,1'])
def test_params_parse_rejects(text):
  with pytest.raises(ValueError):
    focus.DoubleReblurParams.parse(text)


def test_params_parse_rejects_fractional_f():
  with pytest.raises(ValueError):
    focus.DoubleReblurParams.parse('5,3,3,0.01,1.7')


# -------------------------------------------------------------------------------- decision maps


_maps_jit = jax.jit(focus.decision_maps, static_argnums=1)
_focus_measures = jax.jit(focus.focus_measures, static_argnums=1)


def _decision_maps(images, params: focus.DoubleReblurParams):
  """The maps of --focus_measure=doublereblur --focus_cleanup=regions with DoubleReblur `params` (the
  papers' measure with its own steps 5-6: the default before the multi-scale measure)."""
  return _maps_jit(images, focus.FocusConfig(measure='doublereblur', cleanup='regions', doublereblur=params))


def _focal_stack(n, size=SIZE, seed=5):
  """n images of one texture; image i is sharp in vertical stripe i and blurred elsewhere."""
  x = _texture(seed, (size, size))
  bx = _blur(x, 2.0)
  stripe = np.minimum(np.arange(size) * n // size, n - 1)
  images = np.stack([np.where(stripe[None, :] == i, x, bx) for i in range(n)])
  return images[..., None].astype(np.float32), stripe  # grey [N, H, W, 1]: luma passes through


def _assert_argmax_matches_reference(maps, lumas, params=PARAMS):
  """One-hot maps vs the reference argmax, except where the two best reference measures are within
  float tolerance of each other."""
  measures = ref.focus_measures(lumas, kg=params.kg, kd=params.kd, radius=params.radius,
                                wiener_eps=params.wiener_eps, lowpass_sigma=params.lowpass_sigma,
                                sigma=params.argmax_sigma)
  top2 = np.sort(measures, 0)[-2:]
  clear = (top2[1] - top2[0]) > 1e-5
  assert clear.mean() > 0.95, clear.mean()
  np.testing.assert_array_equal(np.argmax(maps, 0)[clear], np.argmax(measures, 0)[clear])
  return measures


@pytest.mark.parametrize('n', [2, 3, 5])
def test_decision_maps_partition(n):
  images, stripe = _focal_stack(n)
  maps = np.asarray(_decision_maps(jnp.asarray(images), PARAMS))
  chex.assert_shape(maps, (n,) + images.shape[1:3])
  np.testing.assert_array_equal(maps.sum(0), 1.0)
  assert set(np.unique(maps)) <= {0.0, 1.0}
  # The maps follow the sharp stripes (a sanity check of the direction for N >= 2).
  accuracy = (np.argmax(maps, 0) == stripe[None, :]).mean()
  assert accuracy > 0.75, accuracy
  if n == 2:
    m = _steps(jnp.asarray(images[0, ..., 0]), jnp.asarray(images[1, ..., 0]), PARAMS).decision
    np.testing.assert_array_equal(maps[0], np.asarray(m))
  else:
    _assert_argmax_matches_reference(maps, images[..., 0])


@pytest.mark.parametrize('sigma', [3.0, 1.5, 1.1, 2.85, 0.0])
def test_focus_measures_n3_match_reference(sigma):
  """The N-input measures against the float64 OpenCV reference: Gaussian windows (cv2.GaussianBlur,
  BORDER_REFLECT_101; a window two taps short is off by ~1.7e-6 here) and, with sigma 0, the kd box
  (cv2.blur)."""
  images, _ = _focal_stack(3)
  lumas = images[..., 0]
  params = focus.DoubleReblurParams(argmax_sigma=sigma)
  measures = np.asarray(_focus_measures(jnp.asarray(lumas), params))
  expected = ref.focus_measures(lumas, kg=params.kg, kd=params.kd, sigma=sigma)
  np.testing.assert_allclose(measures, expected, rtol=0, atol=5e-7 if sigma > 0 else 2e-6)


def test_argmax_window_size_is_opencvs():
  """The window side equals the support of cv2.GaussianBlur's impulse response (float32, ksize 0)."""
  for sigma in np.round(np.arange(0.05, 8.0, 0.05), 2):
    impulse = np.zeros((1, 201), np.float32)
    impulse[0, 100] = 1.0
    response = cv2.GaussianBlur(impulse, (0, 0), float(sigma), borderType=cv2.BORDER_CONSTANT)
    assert focus.argmax_window_size(float(sigma)) == int((response[0] > 0).sum()), sigma


def test_two_input_maps_do_not_use_the_argmax_window():
  """N = 2 goes through DoubleReblur's own steps: the N > 2 window leaves its maps unchanged."""
  images, _ = _focal_stack(2)
  noisy = np.clip(images + 0.05 * np.random.default_rng(1).standard_normal(images.shape), 0, 1)
  noisy = jnp.asarray(noisy.astype(np.float32))
  for rule in focus.RULES:
    maps = [np.asarray(_decision_maps(noisy, focus.DoubleReblurParams(rule=rule, argmax_sigma=sg)))
            for sg in (0.0, 3.0, 5.0)]
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])


def test_argmax_window_is_what_the_maps_use():
  """On a noisy focal stack the default Gaussian window's N-input map follows the sharp stripes where
  the kd box's map does not (measured: 0.99 against 0.80 of the pixels right), and each map matches
  its own reference argmax, so the window is neither ignored nor mis-sized."""
  images, stripe = _focal_stack(3)
  noisy = np.clip(images + 0.05 * np.random.default_rng(0).standard_normal(images.shape), 0, 1)
  noisy = noisy.astype(np.float32)
  box = focus.DoubleReblurParams(argmax_sigma=0.0)
  assert PARAMS.argmax_sigma == 3.0
  maps_gauss = np.asarray(_decision_maps(jnp.asarray(noisy), PARAMS))
  maps_box = np.asarray(_decision_maps(jnp.asarray(noisy), box))
  assert (np.argmax(maps_gauss, 0) == stripe[None, :]).mean() > 0.95
  assert (np.argmax(maps_box, 0) == stripe[None, :]).mean() < 0.9
  _assert_argmax_matches_reference(maps_gauss, noisy[..., 0], PARAMS)
  _assert_argmax_matches_reference(maps_box, noisy[..., 0], box)
  for bad in (-1.0, float('inf'), float('nan')):
    with pytest.raises(ValueError, match='argmax sigma'):
      focus.DoubleReblurParams(argmax_sigma=bad)


def test_decision_maps_n3_on_real_rgb():
  """Three RGB inputs built from a real pair (A, B and their average) vs the reference argmax on
  their lumas."""
  if all(os.path.exists(os.path.join(BUNDLED_PAIR, n + '.png')) for n in 'AB'):
    rgb_a, rgb_b = (_read_rgb(os.path.join(BUNDLED_PAIR, n + '.png')) for n in 'AB')
  else:
    pair_dir = os.path.join(SHARED_MFIFB, 'lytro_01')
    if not os.path.isdir(pair_dir):
      pytest.skip('neither the bundled pair nor the shared data is present')
    rgb_a, rgb_b = (_read_rgb(glob.glob(os.path.join(pair_dir, n + '.*'))[0])[300:300 + SIZE, 50:50 + SIZE]
                    for n in 'AB')
  images = np.stack([rgb_a, rgb_b, 0.5 * (rgb_a + rgb_b)]).astype(np.float32)
  maps = np.asarray(_decision_maps(jnp.asarray(images), PARAMS))
  np.testing.assert_array_equal(maps.sum(0), 1.0)
  _assert_argmax_matches_reference(maps, np.asarray(filters.luma(jnp.asarray(images))))
  with pytest.raises(ValueError):
    focus.decision_maps(jnp.asarray(images[:1]), focus.FocusConfig())


def test_decision_maps_ties_go_to_lower_index():
  images = np.repeat(_texture(6)[None, ..., None], 3, axis=0).astype(np.float32)
  maps = np.asarray(_decision_maps(jnp.asarray(images), PARAMS))
  np.testing.assert_array_equal(maps[0], 1.0)


def test_decision_maps_n3_even_kd():
  images, _ = _focal_stack(3)
  maps = np.asarray(_decision_maps(jnp.asarray(images), focus.DoubleReblurParams.parse('5,4,3,0.01,1')))
  np.testing.assert_array_equal(maps.sum(0), 1.0)


# ------------------------------------------------------------------------------ jit / vmap


class DoubleReblurVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_variants_match_reference(self):
    y_a, y_b = _synthetic_pair(_wave_mask(), seed=7)
    fn = self.variant(lambda a, b: focus.double_reblur_steps(a, b, PARAMS))
    steps = fn(jnp.asarray(y_a), jnp.asarray(y_b))
    chex.assert_tree_all_finite(steps)
    chex.assert_shape([steps.d1, steps.s, steps.decision], (SIZE, SIZE))
    r = ref.double_reblur_steps(y_a, y_b, **ref.params_kwargs(PARAMS))
    assert_steps_match_reference(steps, r, PARAMS)
    # And both variants agree with the module-level jitted function.
    jitted = _steps(jnp.asarray(y_a), jnp.asarray(y_b), PARAMS)
    chex.assert_trees_all_close(steps.kernel, jitted.kernel, atol=1e-7)
    chex.assert_trees_all_close(steps.s, jitted.s, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(steps.decision), np.asarray(jitted.decision))

  @chex.variants(with_jit=True, without_jit=True)
  def test_region_steps_variants(self):
    largest = self.variant(focus.largest_component)
    fill = self.variant(focus.fill_holes)
    np.testing.assert_array_equal(np.asarray(largest(jnp.asarray(NESTED))), RING)
    np.testing.assert_array_equal(np.asarray(fill(jnp.asarray(RING))), ndimage.binary_fill_holes(RING))


def test_vmap_over_pairs_equals_loop():
  pairs = [_synthetic_pair(_wave_mask(phase=p), seed=s) for p, s in ((0.0, 8), (2.0, 9))]
  try:
    pairs.append(tuple(_bundled_lumas()))
  except pytest.skip.Exception:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    pairs.append(_synthetic_pair((((yy - 64) ** 2 + (xx - 64) ** 2) < 30 ** 2).astype(float), seed=10))
  stack_a = jnp.asarray(np.stack([p[0] for p in pairs]))
  stack_b = jnp.asarray(np.stack([p[1] for p in pairs]))
  batched = jax.jit(jax.vmap(lambda a, b: focus.double_reblur_steps(a, b, PARAMS)))(stack_a, stack_b)
  chex.assert_shape(batched.decision, (3, SIZE, SIZE))
  for i, (y_a, y_b) in enumerate(pairs):
    single = _steps(jnp.asarray(y_a), jnp.asarray(y_b), PARAMS)
    chex.assert_trees_all_close(batched.kernel[i], single.kernel, atol=1e-7)
    chex.assert_trees_all_close(batched.s[i], single.s, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(batched.decision[i]), np.asarray(single.decision))


def test_black_inputs_give_finite_kernels():
  y = jnp.asarray(np.random.default_rng(11).random((32, 32)).astype(np.float32))
  black = jnp.zeros((32, 32), jnp.float32)
  for a, b in ((black, y), (y, black), (black, black)):
    k = np.asarray(focus.relative_blur_kernel(a, b))
    assert np.all(np.isfinite(k)) and abs(k.sum() - 1.0) < 1e-5


# -------------------------------------------------------------------------------- focus measures


@pytest.mark.parametrize('name', sorted(focus.MEASURES))
@pytest.mark.parametrize('n', [2, 3])
def test_every_measure_meets_the_contract(name, n):
  """Every registered measure: [N, H, W] -> [N, H, W] finite; jitted == eager; vmapped over a batch of
  stacks == a loop; deterministic; its maps partition the image and find each input's sharp stripe."""
  images, stripe = _focal_stack(n, size=48)
  cfg = focus.FocusConfig(measure=name)
  lumas = filters.luma(jnp.asarray(images))
  measure = lambda y: focus.MEASURES[name](y, cfg)  # pylint: disable=unnecessary-lambda-assignment
  eager = np.asarray(measure(lumas))
  chex.assert_shape(eager, (n, 48, 48))
  assert np.all(np.isfinite(eager))
  np.testing.assert_allclose(np.asarray(jax.jit(measure)(lumas)), eager, rtol=1e-5, atol=1e-7)
  batch = jnp.stack([lumas, lumas[::-1]])
  vmapped = np.asarray(jax.vmap(measure)(batch))
  np.testing.assert_allclose(vmapped[0], eager, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(vmapped[1], np.asarray(measure(lumas[::-1])), rtol=1e-5, atol=1e-7)
  maps = np.asarray(_maps_jit(jnp.asarray(images), cfg))
  np.testing.assert_array_equal(maps, np.asarray(_maps_jit(jnp.asarray(images), cfg)))
  np.testing.assert_array_equal(maps.sum(0), 1.0)
  inner = (slice(8, -8), slice(None))  # Away from the top and bottom borders.
  agree = np.mean(np.argmax(maps, axis=0)[inner] == stripe[None, :].repeat(48, 0)[inner])
  assert agree > 0.85, agree


def _cv2_energy(y, sigma):
  lap = cv2.Laplacian(y.astype(np.float64), cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT_101)
  return cv2.GaussianBlur(lap * lap, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def test_laplacian_energy_and_its_pyramid_match_opencv():
  y = _texture(3, (40, 56)).astype(np.float32)
  got = np.asarray(focus.laplacian_energy(jnp.asarray(y)[None], 'gauss', 1.5))[0]
  np.testing.assert_allclose(got, _cv2_energy(y, 1.5), rtol=1e-4, atol=1e-7)
  box = np.asarray(focus.laplacian_energy(jnp.asarray(y)[None], 'box', 9))[0]
  lap = cv2.Laplacian(y.astype(np.float64), cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT_101)
  np.testing.assert_allclose(box, cv2.blur(lap * lap, (9, 9), borderType=cv2.BORDER_REFLECT_101),
                             rtol=1e-4, atol=1e-7)
  # Three pyramid levels: cv2.pyrDown, each level's energy, resized back, summed.
  levels, level, want = 3, y.astype(np.float64), np.zeros_like(y, np.float64)
  for _ in range(levels):
    e = _cv2_energy(level, 1.0)
    want += e if e.shape == y.shape else np.asarray(
        jax.image.resize(jnp.asarray(e), y.shape, 'linear'))
    level = cv2.pyrDown(level, borderType=cv2.BORDER_REFLECT_101)
  got = np.asarray(focus.multiscale_laplacian(jnp.asarray(y)[None], 1.0, levels))[0]
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)


def test_sum_modified_laplacian_matches_numpy():
  y = _texture(4, (24, 30)).astype(np.float64)
  p = np.pad(y, 1, mode='reflect')
  ml = np.abs(2 * y - p[1:-1, :-2] - p[1:-1, 2:]) + np.abs(2 * y - p[:-2, 1:-1] - p[2:, 1:-1])
  want = cv2.GaussianBlur(ml, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT_101)
  got = np.asarray(focus.sum_modified_laplacian(jnp.asarray(y, jnp.float32)[None], 1.0))[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_thin_in_focus_structure_keeps_its_holes_without_the_region_steps():
  """A fence: thin grey wires in focus in A in front of a textured background in focus in B.
  DoubleReblur's largest-region and hole filling (--focus_cleanup=regions, the previous default)
  turns the fence into "A everywhere" (the failure on a real fence photo); the default keeps most of
  the openings for B, the single-scale Laplacian energy (the thin-structure option) nearly all."""
  size = 96
  background = _texture(7, (size, size))
  bars = np.zeros((size, size), bool)
  for k in range(4, size, 16):
    bars[:, k:k + 3] = True
    bars[k:k + 3, :] = True
  wires = np.where(bars, 0.3, background)
  a = np.where(bars, 0.3, _blur(background, 2.5))  # Focused on the wires: background blurred.
  b = np.where(ndimage.binary_dilation(bars, iterations=4), _blur(wires, 2.5), background)
  images = jnp.asarray(np.stack([a, b])[..., None].astype(np.float32))
  openings = ~ndimage.binary_dilation(bars, iterations=3)  # Background well away from the wires.
  share = {}
  for name, cfg in (('default', focus.FocusConfig()),
                    ('single', focus.FocusConfig(measure='laplacian_energy', window=1.0))):
    m = np.asarray(_maps_jit(images, cfg))[0] > 0.5
    share[name] = (m[bars].mean(), m[openings].mean())
  old = np.asarray(_decision_maps(images, focus.DoubleReblurParams()))[0] > 0.5
  assert old[openings].mean() > 0.7  # Most openings filled: "everything is foreground".
  assert share["default"][0] > 0.95 and share["default"][1] < 0.4, share
  assert share['single'][0] > 0.95 and share['single'][1] < 0.1, share


def test_small_regions_are_relabelled_from_their_surroundings():
  index = np.zeros((20, 20), np.int32)
  index[:, 10:] = 1
  index[3:5, 3:5] = 2  # A 4-pixel island of input 2 inside input 0's region.
  index[12:14, 14] = 0  # A 2-pixel island of input 0 inside input 1's region.
  out = np.asarray(focus.remove_small_regions(jnp.asarray(index), 3, min_pixels=5))
  want = np.zeros((20, 20), np.int32)
  want[:, 10:] = 1
  np.testing.assert_array_equal(out, want)
  same = np.asarray(focus.remove_small_regions(jnp.asarray(index), 3, min_pixels=2))
  np.testing.assert_array_equal(same, index)  # Nothing below 2 pixels.


def test_focus_config_rejects_unknown_names():
  for bad in (dict(measure='entropy'), dict(cleanup='erode'), dict(window=0.0), dict(levels=0),
              dict(min_region=1.5)):
    with pytest.raises(ValueError):
      focus.FocusConfig(**bad)


@pytest.mark.parametrize('cfg', [focus.FocusConfig(), focus.FocusConfig(measure='doublereblur', cleanup='regions'),
                                 focus.FocusConfig(cleanup='small_regions')])
def test_an_input_is_never_chosen_where_it_does_not_cover_the_image(cfg):
  """After registration an input may not cover part of the reference grid (valid False there): the maps
  give those pixels to an input that does, and change nothing else."""
  images, stripe = _focal_stack(3, size=48)
  valid = np.ones((3, 48, 48), bool)
  valid[1, 10:30, :] = False  # Input 1 misses a band, across its own sharp stripe.
  free = np.asarray(_maps_jit(jnp.asarray(images), cfg))
  maps = np.asarray(jax.jit(focus.decision_maps, static_argnums=1)(jnp.asarray(images), cfg, jnp.asarray(valid)))
  np.testing.assert_array_equal(maps.sum(0), 1.0)
  assert not maps[1][~valid[1]].any()
  np.testing.assert_array_equal(maps[:, valid[1]], free[:, valid[1]])  # Where all cover: as before.
