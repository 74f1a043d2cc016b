"""Pictures: shapes, and that the curves land where their values say."""

import numpy as np

from dfp_jax import viz


def _pixels_of(img, colour, tol=80):
  """(row, col) of the pixels within `tol` (sum of absolute differences) of `colour` (anti-aliasing)."""
  d = np.abs(img.astype(np.int32) - np.asarray(colour, np.int32)).sum(-1)
  return np.argwhere(d <= tol)


def test_line_plot_draws_a_rising_curve_rising_and_the_mark_at_its_x():
  x = np.arange(0, 1001, 50)
  img = viz.line_plot({'up': (x, 20 + x / 100.0)}, 'title', marks={'up': 500}, width=600, height=300)
  assert img.shape == (300, 600, 3) and img.dtype == np.uint8
  pts = _pixels_of(img, viz._TAB10[0])  # pylint: disable=protected-access
  pts = pts[(pts[:, 1] > 61) & (pts[:, 1] < 399)]  # Inside the plot box (x 60..400), not the legend.
  assert len(pts) > 100
  left, right = pts[pts[:, 1] < pts[:, 1].min() + 10], pts[pts[:, 1] > pts[:, 1].max() - 10]
  # Rows grow downwards: the start of a rising curve is lower in the picture than its end.
  assert left[:, 0].mean() > right[:, 0].mean() + 100
  # The mark is a vertical line at x = 500, halfway along the 0..1000 axis (box 60..400 px).
  cols, counts = np.unique(pts[:, 1], return_counts=True)
  tallest = cols[np.argmax(counts)]
  assert abs(tallest - (60 + 0.5 * (600 - 60 - 200))) <= 2


def test_line_plot_two_series_and_empty_input():
  img = viz.line_plot({'a': ([0, 1], [1, 2]), 'b': ([0, 2], [3, 1])}, 't', width=500, height=250)
  for colour in viz._TAB10[:2]:  # pylint: disable=protected-access
    assert len(_pixels_of(img, colour)) > 20
  blank = viz.line_plot({}, 'nothing', width=300, height=200)
  assert blank.shape == (200, 300, 3)
  assert len(_pixels_of(blank, viz._TAB10[0])) == 0  # pylint: disable=protected-access


def test_loss_plot_one_panel_per_stage():
  hist = {'mask': {'total': np.geomspace(1, 0.1, 20)}, 'main': {'total': np.geomspace(2, 0.01, 30),
                                                                 'content': np.geomspace(1, 0.01, 30)}}
  img = viz.loss_plot(hist, width=600, panel_height=200)
  assert img.shape == (400, 600, 3) and img.dtype == np.uint8


def test_label_never_cuts_a_caption_off():
  im = np.zeros((40, 48, 3), np.uint8)
  for text in ('DFP', 'bicubic of the average', 'a_long_file_name_without_spaces.png'):
    out = viz.label(im, text)
    bar = out[:out.shape[0] - 40]
    np.testing.assert_array_equal(out[bar.shape[0]:], im)  # The image itself is untouched below.
    ink = bar.min(axis=2) < 128
    cols = np.nonzero(ink.any(axis=0))[0]
    assert ink.any() and cols.max() < 48 - 2, text  # Text ends before the right edge: nothing clipped.
  assert viz.label(im, 'DFP').shape == (62, 48, 3)  # A short caption: one bar of the usual height.
  assert viz.label(im, 'a_long_file_name_without_spaces.png').shape[0] > 62  # Wrapped onto more lines.


def test_index_map_partition_and_colours():
  n = 4
  index = np.random.default_rng(3).integers(0, n, (12, 9))
  decisions = (np.arange(n)[:, None, None] == index[None]).astype(np.float32)  # Partition.
  np.testing.assert_array_equal(decisions.sum(0), 1.0)
  got = np.asarray(viz.index_map(decisions))
  np.testing.assert_array_equal(got, index)
  image = np.asarray(viz.index_map_image(got, n))
  assert image.dtype == np.uint8
  np.testing.assert_array_equal(image, viz.palette(n)[index])


def test_palette_distinct_for_ten():
  colours = viz.palette(10).astype(float)
  dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
  assert dist[~np.eye(10, dtype=bool)].min() > 40
  assert len(np.unique(viz.palette(14), axis=0)) == 14


def test_legend_strip():
  labels = [f'd={d:+.2f}' for d in (-1.25, 0.0, 0.5, 1.75)]
  strip = viz.index_map_legend(4, labels, width=200)
  assert strip.dtype == np.uint8
  assert strip.shape[1:] == (200, 3)
  for colour in viz.palette(4):  # Every swatch is drawn.
    assert np.any(np.all(strip == colour, axis=-1))
  assert np.any(strip.sum(-1) < 100)  # Black text and borders.


def test_legend_long_labels_are_shortened_not_cut_off():
  strip = viz.index_map_legend(2, ['near_focus_photo.png', 'far_focus_photo.png'], width=48)
  ink = strip.sum(-1) < 3 * 128
  assert ink[:, 20:].any()  # Some text is drawn next to the swatches...
  assert not ink[:, -2:].any()  # ...and it ends before the right edge.
