"""Tests of dfp_jax.image_io: formats, bit depths, grey/colour, errors, atomic writes."""

import os

import cv2
import numpy as np
import pytest

from dfp_jax import image_io
from dfp_jax.errors import InputError


def _rgb(h=12, w=10, seed=0):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


@pytest.mark.parametrize('ext', ['.png', '.bmp', '.tif'])
def test_8bit_roundtrip_is_exact_and_rgb_ordered(tmp_path, ext):
  im = (np.random.default_rng(1).integers(0, 256, (9, 7, 3))).astype(np.uint8)
  path = str(tmp_path / f'a{ext}')
  cv2.imwrite(path, im[..., ::-1])  # OpenCV writes BGR: store RGB `im` as a normal file.
  out, info = image_io.read_image(path)
  np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), im)
  assert (info.bit_depth, info.channels, info.height, info.width) == (8, 3, 9, 7)


def test_16bit_roundtrip_keeps_16_bits(tmp_path):
  im = np.random.default_rng(2).integers(0, 65536, (8, 6, 3)).astype(np.uint16)
  path = str(tmp_path / 'a.png')
  cv2.imwrite(path, im[..., ::-1])
  out, info = image_io.read_image(path)
  assert info.bit_depth == 16
  np.testing.assert_array_equal(np.round(out * 65535).astype(np.uint16), im)
  image_io.write_image(str(tmp_path / 'b.png'), out, bit_depth=16)
  back = cv2.imread(str(tmp_path / 'b.png'), cv2.IMREAD_UNCHANGED)
  assert back.dtype == np.uint16
  np.testing.assert_array_equal(back[..., ::-1], im)


def test_grey_stays_grey(tmp_path):
  g = np.random.default_rng(3).integers(0, 256, (8, 8)).astype(np.uint8)
  cv2.imwrite(str(tmp_path / 'g.png'), g)
  out, info = image_io.read_image(str(tmp_path / 'g.png'))
  assert out.shape == (8, 8, 1) and info.channels == 1
  image_io.write_image(str(tmp_path / 'h.png'), out)
  back = cv2.imread(str(tmp_path / 'h.png'), cv2.IMREAD_UNCHANGED)
  assert back.ndim == 2
  np.testing.assert_array_equal(back, g)


def test_alpha_is_dropped(tmp_path):
  im = np.random.default_rng(4).integers(0, 256, (5, 5, 4)).astype(np.uint8)
  cv2.imwrite(str(tmp_path / 'a.png'), im)
  out, info = image_io.read_image(str(tmp_path / 'a.png'))
  assert out.shape == (5, 5, 3) and info.had_alpha
  np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), im[..., 2::-1])


def test_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'nope.png')
  with pytest.raises(InputError, match='nope.png: file not found'):
    image_io.read_image(missing)
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  with pytest.raises(InputError, match='notes.png: not an image'):
    image_io.read_image(str(text))
  empty = tmp_path / 'empty.png'
  empty.write_bytes(b'')
  with pytest.raises(InputError, match='empty.png: file is empty'):
    image_io.read_image(str(empty))
  with pytest.raises(InputError, match='is a folder'):
    image_io.read_image(str(tmp_path))


def test_load_inputs_checks_sizes_and_converts_grey(tmp_path):
  a = (np.full((8, 8, 3), 100)).astype(np.uint8)
  cv2.imwrite(str(tmp_path / 'a.png'), a)
  cv2.imwrite(str(tmp_path / 'g.png'), np.full((8, 8), 50, np.uint8))
  cv2.imwrite(str(tmp_path / 'small.png'), np.zeros((6, 8, 3), np.uint8))
  images, _ = image_io.load_inputs([str(tmp_path / 'a.png'), str(tmp_path / 'g.png')])
  assert images[1].shape == (8, 8, 3)
  np.testing.assert_allclose(images[1], 50 / 255, atol=1e-7)
  with pytest.raises(InputError, match=r'small.png: size 6x8 .* differs'):
    image_io.load_inputs([str(tmp_path / 'a.png'), str(tmp_path / 'small.png')])
  with pytest.raises(InputError, match='at least 2'):
    image_io.load_inputs([str(tmp_path / 'a.png')])


def test_staging_dir_replaces_only_on_success(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'old.txt').write_text('old')
  with pytest.raises(RuntimeError):
    with image_io.StagingDir(str(out)) as tmp:
      image_io.write_json(os.path.join(tmp, 'summary.json'), {'a': 1})
      raise RuntimeError('interrupted')
  assert sorted(os.listdir(out)) == ['old.txt']
  assert sorted(os.listdir(tmp_path)) == ['out']  # No temporary folder left behind.
  with image_io.StagingDir(str(out)) as tmp:
    image_io.write_image(os.path.join(tmp, 'x.png'), _rgb())
  assert sorted(os.listdir(out)) == ['x.png']
  assert sorted(os.listdir(tmp_path)) == ['out']
  assert os.stat(out / 'x.png').st_mode & 0o044  # Readable by others (not mkstemp's 0600).


def test_staging_dir_unwritable_parent(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(InputError, match='cannot write the output folder'):
    image_io.StagingDir(str(blocker / 'out'))
