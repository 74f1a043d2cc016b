"""Pictures as arrays (uint8 RGB), drawn with OpenCV: loss curves, side-by-side comparisons, decision
maps, index maps (which of N inputs each pixel takes) with legends, contact sheets. Nothing here shows
a window or writes a file; the application's outputs writer (`dfp_jax.app.outputs`) and `experiments/`
write what these return.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# Tableau-10 (matplotlib 'tab10'), RGB: distinguishable for up to 10 inputs.
_TAB10 = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
  """float [H, W], [H, W, 1] or [H, W, 3] in [0, 1] -> uint8 [H, W, 3]."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[2] == 1:
    image = np.repeat(image, 3, axis=2)
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def label(image: np.ndarray, text: str, height: int = 22) -> np.ndarray:
  """A uint8 RGB image with a white caption bar above it.

  A caption wider than the image is set smaller (down to 2/3 size) and then wrapped at spaces (or, for
  a single long word, at the image's width), so that it is never cut off.
  """
  width = image.shape[1]
  scale, min_scale = 0.45, 0.3
  text_w = cv2.getTextSize(text, _FONT, scale, 1)[0][0]
  if text_w > width - 8:
    scale = max(min_scale, scale * (width - 8) / max(text_w, 1))
  fits = lambda s: cv2.getTextSize(s, _FONT, scale, 1)[0][0] <= width - 8
  lines, current = [], ''
  for word in text.split(' '):
    trial = f'{current} {word}'.strip()
    if fits(trial) or not current:
      current = trial
    else:
      lines.append(current)
      current = word
  lines.append(current)
  wrapped = []
  for line in lines:  # A single word still too wide: cut it into pieces that fit.
    while not fits(line) and len(line) > 1:
      k = len(line) - 1
      while k > 1 and not fits(line[:k]):
        k -= 1
      wrapped.append(line[:k])
      line = line[k:]
    wrapped.append(line)
  line_h = max(height - 8, int(round(32 * scale)))
  bar = np.full((max(height, 8 + line_h * len(wrapped)), width, 3), 255, np.uint8)
  for i, line in enumerate(wrapped):
    cv2.putText(bar, line, (4, line_h * (i + 1)), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
  return np.concatenate([bar, image], axis=0)


def resize_to(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
  interp = cv2.INTER_NEAREST if nearest else cv2.INTER_CUBIC
  if image.shape[:2] == (height, width):
    return image
  return cv2.resize(image, (width, height), interpolation=interp)


def side_by_side(images: Sequence[np.ndarray], captions: Sequence[str], gap: int = 4,
                 max_width: int = 2400) -> np.ndarray:
  """Captioned images (float in [0, 1] or uint8 RGB) of one height in a row (a contact sheet)."""
  tiles = [label(im if im.dtype == np.uint8 else to_uint8_rgb(im), c) for im, c in zip(images, captions)]
  h = max(t.shape[0] for t in tiles)
  row = []
  for t in tiles:
    if t.shape[0] < h:
      t = np.concatenate([t, np.full((h - t.shape[0], t.shape[1], 3), 255, np.uint8)], 0)
    row += [t, np.full((h, gap, 3), 255, np.uint8)]
  out = np.concatenate(row[:-1], axis=1)
  if out.shape[1] > max_width:
    f = max_width / out.shape[1]
    out = cv2.resize(out, (max_width, int(out.shape[0] * f)), interpolation=cv2.INTER_AREA)
  return out


def comparison(inputs: Sequence[np.ndarray], bicubic: np.ndarray, fused: np.ndarray,
               names: Sequence[str] | None = None) -> np.ndarray:
  """Inputs (upsampled by pixel replication to the output size), the bicubic of the naive average,
  and the DFP result, side by side."""
  h, w = fused.shape[:2]
  names = names or [f'input {i}' for i in range(len(inputs))]
  tiles = [resize_to(to_uint8_rgb(x), h, w, nearest=True) for x in inputs]
  tiles += [to_uint8_rgb(bicubic), to_uint8_rgb(fused)]
  return side_by_side(tiles, list(names) + ['bicubic of the average', 'DFP'])


def decision_map_image(m: np.ndarray) -> np.ndarray:
  """[H, W] map in [0, 1] -> uint8 grey [H, W] (white where the input is chosen)."""
  return np.round(np.clip(np.asarray(m, np.float32), 0, 1) * 255).astype(np.uint8)


def loss_plot(history: dict, width: int = 900, panel_height: int = 300) -> np.ndarray:
  """Each loss term against iteration (log scale), one panel per stage; uint8 RGB."""
  panels = []
  for stage, terms in history.items():
    panels.append(_panel(f'{stage} stage', terms, width, panel_height))
  if not panels:
    panels.append(_panel('no optimisation', {}, width, panel_height))
  return np.concatenate(panels, axis=0)


def _panel(title, terms, width, height):
  img = np.full((height, width, 3), 255, np.uint8)
  left, right, top, bottom = 70, 170, 28, 36
  pw, ph = width - left - right, height - top - bottom
  cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
  cv2.putText(img, title, (left, 18), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  series = {k: np.asarray(v, np.float64) for k, v in terms.items() if len(v)}
  vals = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in series.values()]) if series else np.array([])
  if vals.size == 0:
    return img
  lo, hi = np.log10(vals.min()), np.log10(vals.max())
  if hi - lo < 1e-6:
    lo, hi = lo - 0.5, hi + 0.5
  n = max(len(v) for v in series.values())
  for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
    y = top + ph - (e - lo) / (hi - lo) * ph
    if top <= y <= top + ph:
      cv2.line(img, (left - 4, int(y)), (left, int(y)), (0, 0, 0), 1)
      cv2.putText(img, f'1e{e}', (8, int(y) + 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  for frac in (0, 0.25, 0.5, 0.75, 1.0):
    x = left + frac * pw
    cv2.putText(img, str(int(round(frac * (n - 1)))) if n > 1 else '0', (int(x) - 10, top + ph + 16),
                _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(img, 'iteration', (left + pw // 2 - 30, height - 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  for i, (name, v) in enumerate(series.items()):
    colour = tuple(int(c) for c in _TAB10[i % len(_TAB10)])
    x = left + np.arange(len(v)) / max(n - 1, 1) * pw
    y = top + ph - (np.log10(np.clip(v, 10 ** lo, None)) - lo) / (hi - lo) * ph
    pts = np.stack([x, y], 1)[np.isfinite(y)].round().astype(np.int32)
    if len(pts) > 1:
      cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA)
    cv2.line(img, (left + pw + 10, top + 12 + 18 * i), (left + pw + 30, top + 12 + 18 * i), colour, 2)
    cv2.putText(img, f'{name} {v[-1]:.3g}', (left + pw + 34, top + 16 + 18 * i), _FONT, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
  return img


def line_plot(series: dict, title: str, xlabel: str = 'iteration', ylabel: str = '',
              marks: dict | None = None, width: int = 760, height: int = 360) -> np.ndarray:
  """Curves on linear axes: `series` maps a name to (x, y) arrays; `marks` maps a name to an x value
  drawn as a vertical line of that series' colour. uint8 RGB."""
  img = np.full((height, width, 3), 255, np.uint8)
  left, right, top, bottom = 60, 200, 28, 40
  pw, ph = width - left - right, height - top - bottom
  cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
  cv2.putText(img, title, (left, 18), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  data = {k: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for k, (x, y) in series.items()
          if len(x)}
  if not data:
    return img
  xs = np.concatenate([x for x, _ in data.values()])
  ys = np.concatenate([y[np.isfinite(y)] for _, y in data.values()])
  x0, x1 = 0.0, max(float(xs.max()), 1.0)
  y0, y1 = float(np.floor(ys.min())), float(np.ceil(ys.max()))
  if y1 - y0 < 1e-6:
    y0, y1 = y0 - 1, y1 + 1

  def px(x, y):
    return (left + (np.asarray(x) - x0) / (x1 - x0) * pw, top + ph - (np.asarray(y) - y0) / (y1 - y0) * ph)

  for frac in (0, 0.25, 0.5, 0.75, 1.0):
    xv, yv = x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)
    cv2.putText(img, f'{xv:.0f}', (int(px(xv, y0)[0]) - 12, top + ph + 16), _FONT, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(img, f'{yv:.1f}', (6, int(px(x0, yv)[1]) + 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(img, xlabel, (left + pw // 2 - 30, height - 6), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
  if ylabel:
    cv2.putText(img, ylabel, (left + 4, top + 14), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  for i, (name, (x, y)) in enumerate(data.items()):
    colour = tuple(int(c) for c in _TAB10[i % len(_TAB10)])
    u, v = px(x, y)
    pts = np.stack([u, v], 1)[np.isfinite(v)].round().astype(np.int32)
    if len(pts) > 1:
      cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
    if marks and name in marks and marks[name] is not None:
      mx = int(round(float(px(marks[name], y0)[0])))
      cv2.line(img, (mx, top), (mx, top + ph), colour, 1, cv2.LINE_AA)
    cv2.line(img, (left + pw + 10, top + 12 + 18 * i), (left + pw + 30, top + 12 + 18 * i), colour, 2)
    cv2.putText(img, name, (left + pw + 34, top + 16 + 18 * i), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  return img


# ---------------------------------------------------------------------------------------------------
# Index maps for N inputs: which input each pixel takes.

def palette(n: int) -> np.ndarray:
  """n RGB colours, uint8 [n, 3]: Tableau-10, then golden-angle hues (less distinct) beyond 10."""
  if n < 1:
    raise ValueError(f'palette needs n >= 1, got {n}')
  colours = [_TAB10[i] for i in range(min(n, 10))]
  for i in range(10, n):
    hue = int((i * 137.508) % 360) // 2  # OpenCV hue is 0..179.
    sat = 255 if i % 2 else 170
    hsv = np.array([[[hue, sat, 230]]], np.uint8)
    colours.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
  return np.stack(colours).astype(np.uint8)


def index_map(decisions: np.ndarray) -> np.ndarray:
  """Index of the winning input at each pixel: decision maps [N, H, W] -> int32 [H, W].

  For maps that partition the image (one-hot over N) this is the input that owns each pixel; for
  soft maps it is the argmax (ties: lowest index).
  """
  return np.argmax(np.asarray(decisions), axis=0).astype(np.int32)


def index_map_image(index: np.ndarray, n: int) -> np.ndarray:
  """Colours an index map: int [H, W] with values in [0, n) -> uint8 [H, W, 3] RGB (`palette(n)`).

  Out-of-range values are clipped to [0, n - 1].
  """
  return palette(n)[np.clip(np.asarray(index, np.int64), 0, n - 1)]


def index_map_legend(n: int, labels: Sequence[str] | None = None, width: int = 256,
                     row_height: int = 18) -> np.ndarray:
  """A legend strip for `index_map_image`, uint8 [h, width, 3] RGB, white background.

  Entries (colour swatch + label, default '0', '1', ...) are laid out in as many columns as fit the
  width, so the strip can be stacked under an index-map image of the same width.

  Args:
    n: number of inputs.
    labels: optional [n] labels, e.g. ['d=-1.25', 'd=0.50'].
    width: strip width in pixels.
    row_height: height of one entry row in pixels.

  Returns:
    uint8 [rows * row_height, width, 3].
  """
  labels = [str(i) for i in range(n)] if labels is None else [str(s) for s in labels]
  if len(labels) != n:
    raise ValueError(f'{len(labels)} labels for {n} inputs')
  colours = palette(n)
  font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, row_height / 45.0), 1
  swatch = row_height - 6
  avail = width - (4 + swatch + 6) - 3  # Text room in a one-column legend.

  def fit(s):  # A label too wide for the strip is shortened ('name..'), never cut off at the edge.
    if cv2.getTextSize(s, font, scale, thick)[0][0] <= avail:
      return s
    k = len(s)
    while k > 1 and cv2.getTextSize(s[:k] + '..', font, scale, thick)[0][0] > avail:
      k -= 1
    return s[:k] + '..'

  labels = [fit(s) for s in labels]
  text_w = max(cv2.getTextSize(s, font, scale, thick)[0][0] for s in labels)
  cell_w = swatch + 8 + text_w + 10
  ncols = max(1, min(n, width // cell_w))
  nrows = -(-n // ncols)
  strip = np.full((nrows * row_height, width, 3), 255, np.uint8)
  for i, (label, colour) in enumerate(zip(labels, colours)):
    r, c = divmod(i, ncols)
    x0, y0 = c * cell_w + 4, r * row_height + 3
    col = tuple(int(v) for v in colour)
    cv2.rectangle(strip, (x0, y0), (x0 + swatch, y0 + swatch), col, thickness=-1)
    cv2.rectangle(strip, (x0, y0), (x0 + swatch, y0 + swatch), (0, 0, 0), thickness=1)
    baseline = y0 + swatch - max(1, swatch // 6)
    cv2.putText(strip, label, (x0 + swatch + 6, baseline), font, scale, (0, 0, 0), thick,
                cv2.LINE_AA)
  return strip


def index_map_picture(maps: np.ndarray, labels: Sequence[str], min_width: int = 256) -> np.ndarray:
  """Colour index map of decision maps [N, H, W] with a legend of `labels` below it, uint8 RGB; enlarged
  by pixel replication to at least `min_width` so the legend stays legible."""
  n = maps.shape[0]
  colour = index_map_image(index_map(maps), n)
  k = max(1, -(-min_width // colour.shape[1]))
  colour = np.repeat(np.repeat(colour, k, axis=0), k, axis=1)
  return np.concatenate([colour, index_map_legend(n, labels, width=colour.shape[1])], axis=0)


def contact_sheet(stack, maps, fused, captions: Sequence[str], max_width: int = 2400) -> np.ndarray:
  """One picture of a focal-stack fusion: two rows at the output size, the slices (pixel replication)
  with the index map and the result, then each slice's decision map. `captions`: one per slice. uint8
  RGB, at most `max_width` wide."""
  h, w = fused.shape[:2]
  n = len(stack)
  index = index_map_image(index_map(maps), n)
  top = ([resize_to(to_uint8_rgb(x), h, w, nearest=True) for x in stack]
         + [resize_to(index, h, w, nearest=True), to_uint8_rgb(fused)])
  bottom = [resize_to(to_uint8_rgb(np.asarray(m, np.float32)), h, w, nearest=True) for m in maps]
  rows = [side_by_side(top, list(captions) + ['index map', 'DFP'], max_width=10 ** 6),
          side_by_side(bottom, [f'decision map {i:02d}' for i in range(n)], max_width=10 ** 6)]
  width = max(r.shape[1] for r in rows)
  rows = [np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)], 1) for r in rows]
  sheet = np.concatenate([rows[0], np.full((6, width, 3), 255, np.uint8), rows[1]], 0)
  return resize_to(sheet, int(sheet.shape[0] * min(1.0, max_width / width)), min(width, max_width))
