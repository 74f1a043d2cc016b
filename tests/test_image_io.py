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


def _jpeg_with_orientation(image_bgr, orientation, big_endian=False):
  """A JPEG (OpenCV-encoded) with an APP1 Exif segment holding only IFD0's Orientation tag."""
  ok, buf = cv2.imencode('.jpg', image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
  assert ok
  e = '>' if big_endian else '<'
  tiff = (b'MM\x00*' if big_endian else b'II*\x00') + np.array([8], e + 'u4').tobytes()
  tiff += np.array([1], e + 'u2').tobytes()  # One IFD entry:
  tiff += np.array([0x0112, 3], e + 'u2').tobytes() + np.array([1], e + 'u4').tobytes()
  tiff += np.array([orientation, 0], e + 'u2').tobytes() + np.array([0], e + 'u4').tobytes()
  app1 = b'Exif\x00\x00' + tiff
  seg = b'\xff\xe1' + (len(app1) + 2).to_bytes(2, 'big') + app1
  data = buf.tobytes()
  return data[:2] + seg + data[2:]


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(tmp_path, orientation):
  rng = np.random.default_rng(orientation)
  im = cv2.GaussianBlur(rng.integers(0, 256, (24, 40, 3)).astype(np.uint8), (5, 5), 1.0)
  im[:4, :8] = (0, 0, 255)  # A red corner, so every flip and turn is visible.
  path = tmp_path / 'o.jpg'
  path.write_bytes(_jpeg_with_orientation(im, orientation, big_endian=orientation % 2 == 0))
  assert image_io.read_header(str(path)).orientation == orientation
  got, info = image_io.read_image(str(path))
  ref = cv2.imread(str(path), cv2.IMREAD_COLOR)  # OpenCV applies the EXIF orientation here.
  assert got.shape == ref.shape and (info.height, info.width) == ref.shape[:2]
  np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), ref[..., ::-1])
  if orientation >= 5:
    assert got.shape[:2] == (40, 24)  # Turned a quarter.


def _tiff_with_orientation(grey, orientation, big_endian=False, ifd_last=False):
  """A minimal uncompressed single-strip grey TIFF (8 or 16 bit) whose IFD0 has an Orientation tag;
  IFD0 right after the header, or after the pixels (`ifd_last`, as libtiff writes it)."""
  e = '>' if big_endian else '<'
  h, w = grey.shape
  bits = grey.dtype.itemsize * 8
  pixels = grey.astype(e + ('u1' if bits == 8 else 'u2')).tobytes()
  entries = [(0x0100, 4, w), (0x0101, 4, h), (0x0102, 3, bits), (0x0103, 3, 1), (0x0106, 3, 1),
             (0x0111, 4, 0), (0x0112, 3, orientation), (0x0115, 3, 1), (0x0116, 4, h),
             (0x0117, 4, len(pixels))]
  ifd_size = 2 + 12 * len(entries) + 4
  data_at = 8 if ifd_last else 8 + ifd_size
  ifd_at = 8 + len(pixels) if ifd_last else 8
  ifd = np.array([len(entries)], e + 'u2').tobytes()
  for tag, typ, value in entries:
    value = data_at if tag == 0x0111 else value
    ifd += np.array([tag, typ], e + 'u2').tobytes() + np.array([1], e + 'u4').tobytes()
    ifd += (np.array([value, 0], e + 'u2').tobytes() if typ == 3 else np.array([value], e + 'u4').tobytes())
  ifd += np.array([0], e + 'u4').tobytes()  # No next IFD.
  head = (b'MM\x00*' if big_endian else b'II*\x00') + np.array([ifd_at], e + 'u4').tobytes()
  return head + (pixels + ifd if ifd_last else ifd + pixels)


@pytest.mark.parametrize('orientation', [1, 2, 3, 6, 8])
@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_tiff_exif_orientation_is_applied_once(tmp_path, orientation, dtype):
  """OpenCV 5's TIFF decoder turns the pixels upright itself, its JPEG decoder does not (IMREAD_UNCHANGED):
  either way the image must be turned exactly once (it was turned twice for TIFF)."""
  rng = np.random.default_rng(orientation)
  top = np.iinfo(dtype).max
  stored = (rng.random((12, 20)) * top).astype(dtype)
  stored[:3, :5] = top  # A bright corner, so every flip and turn is visible.
  path = tmp_path / 'o.tif'
  path.write_bytes(_tiff_with_orientation(stored, orientation, big_endian=orientation % 2 == 0))
  assert image_io.read_header(str(path)).orientation == orientation
  got, info = image_io.read_image(str(path))
  upright = image_io.apply_orientation(stored, orientation)
  assert got.shape == upright.shape + (1,) and (info.height, info.width) == upright.shape
  assert info.bit_depth == (8 if dtype == np.uint8 else 16)
  np.testing.assert_array_equal(np.round(got[..., 0] * top).astype(dtype), upright)
  if orientation == 1:  # The hand-made file decodes to the stored pixels when nothing is to be turned.
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), stored)


def test_tiff_orientation_found_after_more_than_a_mebibyte_of_pixels(tmp_path):
  stored = (np.random.default_rng(0).random((1100, 1000)) * 255).astype(np.uint8)
  stored[:40, :90] = 255
  path = tmp_path / 'big.tif'
  path.write_bytes(_tiff_with_orientation(stored, 6, ifd_last=True))
  assert path.stat().st_size > 2 ** 20
  assert image_io.read_header(str(path)).orientation == 6
  got, _ = image_io.read_image(str(path))
  np.testing.assert_array_equal(np.round(got[..., 0] * 255).astype(np.uint8),
                                image_io.apply_orientation(stored, 6))


def test_orientation_absent_or_out_of_range_is_1(tmp_path):
  plain = tmp_path / 'plain.jpg'
  assert cv2.imwrite(str(plain), _rgb(16, 16))
  assert image_io.read_header(str(plain)).orientation == 1
  odd = tmp_path / 'odd.tif'
  odd.write_bytes(_tiff_with_orientation(np.zeros((6, 8), np.uint8), 9))  # Not an orientation.
  header = image_io.read_header(str(odd))
  assert (header.orientation, header.height, header.width) == (1, 6, 8)
  got, _ = image_io.read_image(str(odd))
  assert got.shape == (6, 8, 1)


def test_header_gives_size_channels_and_pages_without_decoding(tmp_path):
  """Pillow reads the header of a file whose pixels would need gigabytes: a PNG that claims 60000 x
  60000 (no pixel data at all) is measured in milliseconds, above Pillow's decompression-bomb limit."""
  huge = tmp_path / 'huge.png'
  huge.write_bytes(_png(60000, 60000, 2, b''))
  header = image_io.read_header(str(huge))
  assert (header.height, header.width, header.channels, header.format) == (60000, 60000, 3, 'PNG')
  grey = tmp_path / 'grey.png'
  assert cv2.imwrite(str(grey), np.zeros((5, 7), np.uint16))
  h = image_io.read_header(str(grey))
  assert (h.height, h.width, h.channels, h.pages) == (5, 7, 1, 1)


def test_fifo_and_other_special_files_are_refused_before_reading(tmp_path):
  fifo = tmp_path / 'f.png'
  os.mkfifo(fifo)  # Opening it for reading would block forever.
  with pytest.raises(InputError, match='f.png: is a FIFO'):
    image_io.read_header(str(fifo))
  with pytest.raises(InputError, match='is a FIFO'):
    image_io.load_inputs([str(fifo), str(tmp_path / 'other.png')])


def test_truncated_jpeg_and_png_say_so(tmp_path):
  for ext in ('.jpg', '.png'):
    whole = tmp_path / f'whole{ext}'
    assert cv2.imwrite(str(whole), (_rgb(64, 64) * 255).astype(np.uint8))
    cut = tmp_path / f'cut{ext}'
    cut.write_bytes(whole.read_bytes()[:-300])
    with pytest.raises(InputError, match=r'cut\.(jpg|png): the (JPEG|PNG) file is truncated'):
      image_io.read_image(str(cut))
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
  with pytest.raises(InputError, match='bad.png: not an image this tool can read'):
    image_io.read_image(str(bad))


def test_sizes_are_compared_from_the_headers_before_decoding(tmp_path, monkeypatch):
  a, b = tmp_path / 'a.png', tmp_path / 'b.png'
  assert cv2.imwrite(str(a), np.zeros((8, 8, 3), np.uint8))
  b.write_bytes(_png(60000, 60000, 2, b''))
  monkeypatch.setattr(image_io.cv2, 'imdecode', lambda *a, **k: pytest.fail('decoded'))
  with pytest.raises(InputError, match='b.png: size 60000x60000 .* differs from'):
    image_io.read_headers([str(a), str(b)])


def test_same_file_twice_is_refused_identical_pixels_warned(tmp_path, caplog):
  a = tmp_path / 'a.png'
  assert cv2.imwrite(str(a), _rgb())
  with pytest.raises(InputError, match=r'a.png: given twice \(also as'):
    image_io.load_inputs([str(a), str(tmp_path / '.' / 'a.png')])
  os.link(a, tmp_path / 'hard.png')  # A hard link is the same file too.
  with pytest.raises(InputError, match=r'hard.png: given twice \(also as'):
    image_io.load_inputs([str(a), str(tmp_path / 'hard.png')])
  b = tmp_path / 'b.png'
  b.write_bytes(a.read_bytes())
  with caplog.at_level('WARNING'):
    image_io.load_inputs([str(a), str(b)])
  assert 'identical pixels' in caplog.text


def _png(width, height, colour_type, rows: bytes) -> bytes:
  """A minimal 8-bit PNG (one IDAT; rows with their filter bytes)."""
  import struct
  import zlib

  def chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))

  ihdr = struct.pack('>IIBBBBB', width, height, 8, colour_type, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(rows))
          + chunk(b'IEND', b''))


def test_grey_alpha_png_stays_grey(tmp_path, caplog):
  """OpenCV decodes a grey + alpha PNG as BGRA; after the alpha is dropped it must be grey again (it
  used to turn colour and a grey partner was then converted to colour)."""
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  rows = b''.join(b'\x00' + bytes(np.stack([r, np.full(4, 255, np.uint8)], -1).ravel()) for r in grey)
  path = tmp_path / 'la.png'
  path.write_bytes(_png(4, 3, 4, rows))
  with caplog.at_level('WARNING'):
    im, info = image_io.read_image(str(path))
  assert 'dropping the alpha channel' in caplog.text
  assert im.shape == (3, 4, 1) and info.channels == 1 and info.had_alpha
  np.testing.assert_array_equal(np.round(im[..., 0] * 255).astype(np.uint8), grey)


def test_float_tiff_with_nan_names_the_problem_and_multipage_tiff_is_warned(tmp_path, caplog):
  bad = np.full((4, 5), 0.5, np.float32)
  bad[1, 2] = np.nan
  assert cv2.imwrite(str(tmp_path / 'nan.tif'), bad)
  with pytest.raises(InputError, match=r'nan.tif: floating-point image must have finite values in \[0, 1\], '
                     r'got 1 NaN or infinite value'):
    image_io.read_image(str(tmp_path / 'nan.tif'))
  pages = [np.full((4, 5), 10 * k, np.uint8) for k in range(3)]
  assert cv2.imwritemulti(str(tmp_path / 'multi.tif'), pages)
  with caplog.at_level('WARNING'):
    im, _ = image_io.read_image(str(tmp_path / 'multi.tif'))
  assert 'multi.tif: a TIFF of 3 pages; using the first' in caplog.text
  assert np.all(im == 0)


def test_empty_entry_in_inputs_is_named_by_position(tmp_path):
  a, b = tmp_path / 'a.png', tmp_path / 'b.png'
  assert cv2.imwrite(str(a), _rgb()) and cv2.imwrite(str(b), _rgb())
  with pytest.raises(InputError, match=r'input 2 of 3 is an empty path'):
    image_io.load_inputs([str(a), '', str(b)])
  with pytest.raises(InputError, match=r'input 2 of 2 is an empty path'):
    image_io.load_inputs([str(a), ' '])
