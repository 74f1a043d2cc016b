"""Tests for dfp_jax.lightfield: loaders, sub-pixel shifts, refocusing, plane choice, index maps.

The synthetic light field: a random texture T (the all-in-focus answer, also the centre view)
whose left half lies at disparity -1 and right half at +1 (pixels per view step), rendered into
5 x 5 views with the module's sign convention (a point at p in the centre view is at
p - d * (dr, dc) in view (r0 + dr, c0 + dc)). Integer disparities make the rendering exact away
from the depth edge and the image border, which is where the checks look.
"""

import json
from unittest import mock
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import cv2
import jax.numpy as jnp
import numpy as np

from dfp_jax import errors
from dfp_jax import lightfield

SIZE = 48
GRID = 5
LEFT = (slice(4, SIZE - 4), slice(4, SIZE // 2 - 4))  # Interior of the d = -1 half.
RIGHT = (slice(4, SIZE - 4), slice(SIZE // 2 + 4, SIZE - 4))  # Interior of the d = +1 half.


def _texture(seed=0, size=SIZE):
  return np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)


def _two_depth_light_field(d_left=-1, d_right=1, seed=0):
  """(LightField, texture): 5 x 5 views, left half at d_left, right half at d_right (integers)."""
  tex = _texture(seed)
  left = (np.arange(SIZE) < SIZE // 2)[None, :, None]
  views, rows, cols = [], [], []
  c0 = GRID // 2
  for r in range(GRID):
    for c in range(GRID):
      dr, dc = r - c0, c - c0
      # view(q) = T(q + d * (dr, dc)): np.roll by -d * offset.
      a = np.roll(tex, (-d_left * dr, -d_left * dc), axis=(0, 1))
      b = np.roll(tex, (-d_right * dr, -d_right * dc), axis=(0, 1))
      views.append(np.where(left, a, b))
      rows.append(r)
      cols.append(c)
  return lightfield.make_light_field(np.stack(views), rows, cols, (c0, c0)), tex


def _smooth_odd(n):
  """The documented Fourier FFT size: smallest odd 7-smooth number >= n."""
  m = n if n % 2 else n + 1
  while True:
    k = m
    for p in (3, 5, 7):
      while k % p == 0:
        k //= p
    if k == 1:
      return m
    m += 2


def _reference_shift(image, dy, dx, method, pad=lightfield.DEFAULT_PAD):
  """float64 NumPy out(y, x) = image(y - dy, x - dx), reflect-101 boundary."""
  img = image.astype(np.float64)
  h, w, _ = img.shape
  if method == 'fourier':
    hp, wp = _smooth_odd(h + 2 * pad), _smooth_odd(w + 2 * pad)
    padded = np.pad(img, ((pad, hp - h - pad), (pad, wp - w - pad), (0, 0)), mode='reflect')
    fy = np.fft.fftfreq(hp)[:, None, None]
    fx = np.fft.fftfreq(wp)[None, :, None]
    spec = np.fft.fft2(padded, axes=(0, 1)) * np.exp(-2j * np.pi * (fy * dy + fx * dx))
    return np.real(np.fft.ifft2(spec, axes=(0, 1)))[pad:pad + h, pad:pad + w]

  def reflect(i, n):
    i = np.mod(i, 2 * (n - 1))
    return np.where(i > n - 1, 2 * (n - 1) - i, i)

  sy, sx = np.arange(h) - dy, np.arange(w) - dx
  y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
  fy, fx = (sy - y0)[:, None, None], (sx - x0)[None, :, None]
  ya, yb, xa, xb = reflect(y0, h), reflect(y0 + 1, h), reflect(x0, w), reflect(x0 + 1, w)
  return ((1 - fy) * (1 - fx) * img[ya][:, xa] + (1 - fy) * fx * img[ya][:, xb]
          + fy * (1 - fx) * img[yb][:, xa] + fy * fx * img[yb][:, xb])


def _write(path, rgb01):
  """Writes a float RGB/grey image in [0, 1] as an 8-bit PNG (cv2 wants BGR)."""
  img = np.round(rgb01 * 255).astype(np.uint8)
  if img.shape[-1] == 3:
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
  assert cv2.imwrite(path, img)


class LoaderTest(parameterized.TestCase):

  def _folder(self):
    # tempfile rather than absl's create_tempdir, which needs parsed flags (absent under pytest).
    folder = tempfile.mkdtemp(prefix='lf_test_')
    self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder

  def _view(self, seed, h=8, w=10):
    # Quantised to 8 bits so the loaded value equals the written one exactly.
    return np.round(np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.float32) / 255

  def test_hci_subset_cross_and_diagonals(self):
    folder = self._folder()
    idx = sorted({9 * r + c for r in range(9) for c in range(9)
                  if r == 4 or c == 4 or r == c or r + c == 8})
    self.assertLen(idx, 33)
    for i in idx:
      _write(os.path.join(folder, f'input_Cam{i:03d}.png'), self._view(i))
    _write(os.path.join(folder, 'valid_mask.png'), self._view(999))  # Ignored: no view naming.
    with open(os.path.join(folder, 'license.txt'), 'w') as f:
      f.write('not an image')
    lf = lightfield.load_light_field(folder)
    self.assertEqual(lf.views.shape, (33, 8, 10, 3))
    self.assertEqual(lf.views.dtype, jnp.float32)
    self.assertEqual(lf.center, (4, 4))
    np.testing.assert_array_equal(np.asarray(lf.rows), [i // 9 for i in idx])
    np.testing.assert_array_equal(np.asarray(lf.cols), [i % 9 for i in idx])
    self.assertEqual(lf.names, tuple(f'input_Cam{i:03d}.png' for i in idx))
    np.testing.assert_allclose(np.asarray(lf.center_view), self._view(40), atol=1e-6)  # RGB order.
    self.assertEqual(int(lf.center_index), idx.index(40))

  def test_lytro_naming_and_uint16_grey(self):
    folder = self._folder()
    expected = {}
    for r in range(3, 6):
      for c in range(3, 6):
        img = np.random.default_rng(10 * r + c).integers(0, 65536, (6, 7), dtype=np.uint16)
        cv2.imwrite(os.path.join(folder, f'2067_{r:02d}_{c:02d}.png'), img)
        expected[(r, c)] = img.astype(np.float32) / 65535
    lf = lightfield.load_light_field(folder)
    self.assertEqual(lf.views.shape, (9, 6, 7, 1))
    self.assertEqual(lf.center, (4, 4))
    self.assertEqual(lf.names[0], '2067_03_03.png')
    np.testing.assert_allclose(np.asarray(lf.center_view)[..., 0], expected[(4, 4)], atol=1e-7)
    np.testing.assert_allclose(np.asarray(lf.views[5])[..., 0], expected[(4, 5)], atol=1e-7)

  def test_views_json(self):
    folder = self._folder()
    spec = []
    for k, (r, c) in enumerate([(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]):
      _write(os.path.join(folder, f'shot{k}.png'), self._view(k))
      spec.append({'file': f'shot{k}.png', 'row': r, 'col': c})
    with open(os.path.join(folder, 'views.json'), 'w') as f:
      json.dump({'views': spec}, f)
    lf = lightfield.load_light_field(folder)
    self.assertEqual(lf.center, (1, 1))  # Nearest the mean position.
    np.testing.assert_allclose(np.asarray(lf.center_view), self._view(2), atol=1e-6)
    with open(os.path.join(folder, 'views.json'), 'w') as f:
      json.dump({'views': spec, 'center': [0, 2]}, f)
    self.assertEqual(lightfield.load_light_field(folder).center, (0, 2))
    self.assertEqual(lightfield.load_light_field(folder, center=(2, 0)).center, (2, 0))

  @parameterized.named_parameters(
      ('empty', 'empty', lightfield.NoViewsError),
      ('no_image_names', 'other_names', lightfield.NoViewsError),
      ('unreadable', 'unreadable', lightfield.UnreadableViewError),
      ('unequal_sizes', 'sizes', lightfield.ViewShapeError),
      ('hci_without_centre', 'no_centre', lightfield.MissingCenterViewError),
      ('lytro_no_middle', 'lytro_even', lightfield.MissingCenterViewError),
      ('json_centre_absent', 'json_centre', lightfield.MissingCenterViewError),
      ('mixed_naming', 'mixed', lightfield.MixedNamingError),
      ('two_scenes', 'scenes', lightfield.MixedNamingError),
      ('json_duplicate', 'duplicate', lightfield.DuplicateViewError),
      ('json_malformed', 'bad_json', lightfield.ViewsJsonError),
      ('json_missing_file', 'json_missing', lightfield.UnreadableViewError),
  )
  def test_validation_errors(self, case, error):
    folder = self._folder()
    put = lambda name, seed=0, h=8, w=10: _write(os.path.join(folder, name), self._view(seed, h, w))
    culprit = folder
    if case == 'other_names':
      put('photo.png')
    elif case == 'unreadable':
      put('input_Cam040.png')
      with open(os.path.join(folder, 'input_Cam041.png'), 'wb') as f:
        f.write(b'\x89PNG not really')
      culprit = 'input_Cam041.png'
    elif case == 'sizes':
      put('input_Cam040.png')
      put('input_Cam041.png', h=9)
      culprit = 'input_Cam041.png'
    elif case == 'no_centre':
      put('input_Cam039.png')
      put('input_Cam041.png')
    elif case == 'lytro_even':
      for c in (1, 2):
        put(f's_01_{c:02d}.png')
    elif case in ('json_centre', 'duplicate', 'bad_json', 'json_missing'):
      put('a.png')
      put('b.png')
      views = [{'file': 'a.png', 'row': 0, 'col': 0}, {'file': 'b.png', 'row': 0, 'col': 1}]
      spec = {'views': views, 'center': [5, 5]} if case == 'json_centre' else {'views': views}
      if case == 'duplicate':
        views[1]['row'], views[1]['col'] = 0, 0
      if case == 'json_missing':
        views[1]['file'] = culprit = 'gone.png'
      text = json.dumps(spec) if case != 'bad_json' else '{"views": [oops'
      with open(os.path.join(folder, 'views.json'), 'w') as f:
        f.write(text)
    elif case == 'mixed':
      put('input_Cam040.png')
      put('scene_01_01.png')
    elif case == 'scenes':
      put('a_01_01.png')
      put('b_01_01.png')
    with self.assertRaises(error) as ctx:
      lightfield.load_light_field(folder)
    self.assertIsInstance(ctx.exception, ValueError)
    self.assertIsInstance(ctx.exception, errors.InputError)
    self.assertIn(culprit, str(ctx.exception))

  def test_grey_view_among_colour_ones_is_converted_and_bit_depth_is_the_deepest(self):
    """The rule of --inputs (grey becomes colour, with a warning); a 16-bit view anywhere gives 16."""
    folder = self._folder()
    for i in (39, 41):
      _write(os.path.join(folder, f'input_Cam{i:03d}.png'), self._view(i))
    grey = np.round(self._view(40)[..., 0] * 255).astype(np.uint8)
    cv2.imwrite(os.path.join(folder, 'input_Cam040.png'), grey)
    cv2.imwrite(os.path.join(folder, 'input_Cam031.png'),
                (self._view(31)[..., ::-1] * 65535).round().astype(np.uint16))
    lf = lightfield.load_light_field(folder)
    self.assertEqual(lf.views.shape, (4, 8, 10, 3))
    np.testing.assert_allclose(np.asarray(lf.center_view), np.repeat(grey[..., None] / 255, 3, 2),
                               atol=1e-6)
    self.assertEqual(lf.bit_depth, 16)

  def test_views_json_with_absurd_grid_positions_names_the_file(self):
    folder = self._folder()
    for k in range(2):
      _write(os.path.join(folder, f'v{k}.png'), self._view(k))
    with open(os.path.join(folder, 'views.json'), 'w') as f:
      json.dump({'views': [{'file': 'v0.png', 'row': 0, 'col': 0},
                           {'file': 'v1.png', 'row': 0, 'col': 100000}]}, f)
    with self.assertRaisesRegex(lightfield.ViewsJsonError, r'views.json: the views\' cols span 0 to '
                                r'100000.*grid positions'):
      lightfield.load_light_field(folder)

  def test_memory_is_checked_before_any_view_is_decoded(self):
    folder = self._folder()
    for i in (39, 40, 41):
      _write(os.path.join(folder, f'input_Cam{i:03d}.png'), self._view(i, 13, 17))
    seen = []

    def refuse(num_views, shape, reach):
      seen.append((num_views, shape, reach))
      raise errors.MemoryBudgetError('too big')

    with mock.patch.object(lightfield.image_io, 'read_image', side_effect=AssertionError('decoded')):
      with self.assertRaisesRegex(errors.MemoryBudgetError, 'too big'):
        lightfield.load_light_field(folder, crop=(1, 2, 11, 13), downsample=2, before_decoding=refuse)
    self.assertEqual(seen, [(3, (5, 6, 3), 1)])

  def test_crop_then_downsample_matches_inter_area(self):
    folder = self._folder()
    for i in (39, 40, 41):
      _write(os.path.join(folder, f'input_Cam{i:03d}.png'), self._view(i, 13, 17))
    full = np.asarray(lightfield.load_light_field(folder).views)
    lf = lightfield.load_light_field(folder, crop=(1, 2, 11, 13), downsample=2)
    self.assertEqual(lf.views.shape, (3, 5, 6, 3))  # 11 x 13 -> 10 x 12 -> 5 x 6.
    for v in range(3):
      want = cv2.resize(full[v, 1:11, 2:14], (6, 5), interpolation=cv2.INTER_AREA)
      np.testing.assert_allclose(np.asarray(lf.views[v]), want, atol=1e-6)
    lf3 = lightfield.load_light_field(folder, downsample=3)  # 13 x 17 -> 12 x 15 -> 4 x 5.
    want = cv2.resize(full[1, :12, :15], (5, 4), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(np.asarray(lf3.center_view), want, atol=1e-6)
    for bad in [dict(crop=(5, 0, 9, 4)), dict(crop=(0, -1, 4, 4)), dict(crop=(0, 0, 0, 4)),
                dict(downsample=0), dict(crop=(0, 0, 2, 2), downsample=3)]:
      with self.assertRaises(lightfield.InvalidCropError, msg=str(bad)) as ctx:
        lightfield.load_light_field(folder, **bad)
      self.assertIn(folder, str(ctx.exception))


class RefocusTest(chex.TestCase):

  @parameterized.product(method=('fourier', 'bilinear'), shift=((2.0, -3.0), (0.3, -1.7)))
  def test_shift_matches_float64_reference(self, method, shift):
    img = _texture(1, 20)[:18]  # 18 x 20: odd and even padded sizes handled alike.
    got = np.asarray(lightfield.shift_image(img, shift, method=method))
    np.testing.assert_allclose(got, _reference_shift(img, *shift, method), atol=2e-5)
    if float(shift[0]).is_integer():  # Integer shifts: both methods are an exact reflect-101 roll.
      p = lightfield.DEFAULT_PAD
      padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode='reflect')
      y0, x0 = p - int(shift[0]), p - int(shift[1])
      want = padded[y0:y0 + 18, x0:x0 + 20]
      np.testing.assert_allclose(got, want, atol=2e-6)

  @parameterized.parameters('fourier', 'bilinear')
  def test_refocus_at_true_disparity_reproduces_texture(self, method):
    lf, tex = _two_depth_light_field()
    for d, good, bad in ((-1.0, LEFT, RIGHT), (1.0, RIGHT, LEFT)):
      out = np.asarray(lightfield.refocus(lf.views, lf.rows, lf.cols, lf.center, d, method=method))
      np.testing.assert_allclose(out[good], tex[good], atol=1e-5)
      self.assertGreater(np.abs(out[bad] - tex[bad]).mean(), 0.1)  # Defocused elsewhere.

  def test_sign_convention_sub_pixel(self):
    # A smooth periodic texture at d = +0.5, views rendered by exact Fourier shifts.
    fy = np.fft.fftfreq(32)[:, None, None]
    fx = np.fft.fftfreq(32)[None, :, None]
    gauss = np.exp(-2 * (np.pi * 1.5) ** 2 * (fy**2 + fx**2))
    spec = np.fft.fft2(_texture(2, 32), axes=(0, 1)) * gauss
    tex = np.real(np.fft.ifft2(spec, axes=(0, 1)))  # Periodic, Gaussian-smoothed (sigma 1.5 px).
    views, rows, cols = [], [], []
    for r in range(3):
      for c in range(3):
        s = (-0.5 * (r - 1), -0.5 * (c - 1))  # The point at p is seen at p - d * offset.
        views.append(np.real(np.fft.ifft2(spec * np.exp(-2j * np.pi * (fy * s[0] + fx * s[1])),
                                          axes=(0, 1))))
        rows.append(r)
        cols.append(c)
    lf = lightfield.make_light_field(np.stack(views), rows, cols, (1, 1))
    inner = (slice(6, 26), slice(6, 26))
    err = lambda d: np.abs(np.asarray(lightfield.refocus(
        lf.views, lf.rows, lf.cols, lf.center, d))[inner] - tex[inner]).max()
    self.assertLess(err(0.5), 2e-3)
    self.assertGreater(err(-0.5), 20 * err(0.5))

  @parameterized.parameters('fourier', 'bilinear')
  def test_aperture_zero_at_disparity_zero_is_centre_view(self, method):
    lf, _ = _two_depth_light_field()
    out = np.asarray(lightfield.refocus(lf.views, lf.rows, lf.cols, lf.center, 0.0, 0.0,
                                        method=method))
    atol = 0.0 if method == 'bilinear' else 2e-6  # FFT round trip in float32.
    np.testing.assert_allclose(out, np.asarray(lf.center_view), atol=atol, rtol=0)

  def test_aperture_is_euclidean(self):
    r, c = np.meshgrid(np.arange(5), np.arange(5), indexing='ij')
    off = lightfield.view_offsets(r.ravel(), c.ravel(), (2, 2))
    counts = [int(lightfield.aperture_weights(off, a).sum()) for a in (0, 1, 1.5, 2, jnp.inf)]
    self.assertEqual(counts, [1, 5, 9, 13, 25])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters('fourier', 'bilinear')
  def test_refocus_jit_and_eager_agree(self, method):
    lf, _ = _two_depth_light_field()
    expected = np.asarray(lightfield.refocus(lf.views, lf.rows, lf.cols, lf.center, 0.37, 1.5,
                                             method=method))
    # The LightField itself goes through jit (a pytree: arrays as leaves, centre/names static).
    fn = self.variant(lambda lf, d, a: lightfield.refocus(
        lf.views, lf.rows, lf.cols, lf.center, d, a, method=method))
    got = fn(lf, jnp.float32(0.37), jnp.float32(1.5))
    chex.assert_shape(got, (SIZE, SIZE, 3))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)

  @parameterized.parameters('fourier', 'bilinear')
  def test_focal_stack_equals_python_loop(self, method):
    lf, _ = _two_depth_light_field()
    disparities = [-1.0, -0.3, 0.55, 1.0]
    stack = lightfield.focal_stack(lf, jnp.asarray(disparities), 2.0, method=method)
    chex.assert_shape(stack, (4, SIZE, SIZE, 3))
    loop = np.stack([
        lightfield.refocus(lf.views, lf.rows, lf.cols, lf.center, d, 2.0, method=method)
        for d in disparities])
    np.testing.assert_allclose(np.asarray(stack), loop, atol=1e-5)


class PlaneSelectionTest(parameterized.TestCase):

  def test_automatic_planes_find_both_depths(self):
    lf, _ = _two_depth_light_field()
    sweep = lightfield.disparity_sweep(2.0, 17)  # Step 0.25.
    planes = lightfield.choose_focal_planes(lf, 2, sweep=sweep)
    step = float(sweep[1] - sweep[0])
    np.testing.assert_allclose(np.asarray(planes.disparities), [-1.0, 1.0], atol=step)
    cov = np.asarray(planes.coverage)
    self.assertTrue(np.all((cov >= 0) & (cov <= 1)))
    self.assertGreater(cov[LEFT].min(), 0.95)
    self.assertGreater(cov[RIGHT].min(), 0.95)
    idx = np.asarray(planes.slice_index)
    self.assertTrue(np.all(idx[LEFT] == 0) and np.all(idx[RIGHT] == 1))
    np.testing.assert_allclose(np.asarray(planes.best_disparity)[LEFT], -1.0, atol=step)

  def test_user_planes_and_their_coverage(self):
    lf, _ = _two_depth_light_field()
    # 15 swept + 2 user planes: the same focus-sweep shape (17) as the automatic test, one compile.
    good = lightfield.choose_focal_planes(lf, disparities=[1.0, -1.0], max_disparity=2.0,
                                          num_sweep=15)
    np.testing.assert_array_equal(np.asarray(good.disparities), [-1.0, 1.0])
    self.assertGreater(np.asarray(good.coverage)[LEFT].min(), 0.95)
    self.assertGreater(np.asarray(good.coverage)[RIGHT].min(), 0.95)
    near = lightfield.choose_focal_planes(lf, disparities=[-1.0, -0.75], max_disparity=2.0,
                                          num_sweep=15)
    self.assertLess(np.asarray(near.coverage)[RIGHT].mean(), 0.5)  # The d = +1 half is not covered.

  def test_select_planes_max_coverage_toy(self):
    # Pixel 0 is sharp at slice 0, pixel 1 at slice 3, pixel 2 everywhere the same (flat: weight 0).
    focus = np.array([[1.0, 0.1, 0.5], [0.6, 0.2, 0.5], [0.2, 0.6, 0.5], [0.1, 1.0, 0.5]],
                     np.float32)
    idx, cov, conf = lightfield.select_planes(jnp.asarray(focus)[:, None, :], 2)
    np.testing.assert_array_equal(np.asarray(idx), [0, 3])
    np.testing.assert_allclose(np.asarray(cov)[0], [1.0, 1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(conf)[0, 2], 0.0, atol=1e-6)
    idx1, _, _ = lightfield.select_planes(jnp.asarray(focus)[:, None, :], 1)
    self.assertIn(int(idx1[0]), (0, 3))


if __name__ == '__main__':
  absltest.main()
