"""DoubleReblur focus measure and decision maps, entirely in jnp (DFP_METHOD.md section 4).

For two registered luma images Y_A, Y_B of one scene, DoubleReblur decides where A is in focus:

  1. Relative blur kernel h with B ~ A (*) h, estimated in the Fourier domain with a regularised
     (Wiener-style) division and a Gaussian low-pass window:
        H = conj(F_A) F_B / (|F_A|^2 + eps * mean|F_A|^2),   h = |crop_9x9(fftshift(ifft2(H T)))|,
     normalised to sum 1 (so the reblur keeps brightness). T(f) = exp(-|f|^2 / (2 sigma_f^2)), f in
     cycles/pixel. Convention (tested): the kernel blurs A into B, and the first reblur is applied to A,
     the image whose in-focus region we detect. (The authors' code divides F_A by F_B without
     regularisation; this is the paper's low-pass-filtered reading, stabilised.)
  2. First reblur: d1 = |Y_A - Y_A (*) h| (in-focus regions change a lot when reblurred).
  3. Second (Gaussian) reblur: s = |d1 - G_kg(d1)|, sigma from OpenCV's size rule.
  4. Decision: with rule 'threshold' (the paper's), d = s > t. With rule 'compare', B's second-reblur
     response s_B is computed the same way (kernel blurring B into A, reblur of B) and d = 1 where the
     kd x kd box mean of s_A is at least that of s_B (ties to A): the focal-stack rule below, with its
     box window (argmax_sigma = 0), applied to two inputs.
  5. Closing: dilate with a kd x kd square, then erode with a ke x ke square.
  6. If f = 1: keep the largest 8-connected region, then fill its holes (background pixels that are not
     4-connected to the image border become 1).

Connected components and hole filling are label propagation / morphological reconstruction inside
`lax.while_loop`, so the whole measure jits and vmaps over pairs. An OpenCV/SciPy version of the same
steps lives in `tests/reference_focus.py` as the reference this one is checked against.

For N > 2 inputs (focal stacks) the maps come from an argmax over per-input focus measures (the
"cleaner general rule" of the method): input i's measure is its second-reblur response s_i against the
mean of the other inputs, averaged over a Gaussian window of sigma `argmax_sigma` pixels (3 by default;
0 gives the kd x kd box of the two-input 'compare' rule); ties go to the lower index. The N maps
one-hot encode the argmax, so they partition the image by construction. For N = 2 the binary map m of
the six steps above is used and B gets 1 - m.

Why a wider window for N > 2. The two-input map is cleaned by the closing and the largest-region / hole
filling steps, which have no N-input counterpart, so the N-input argmax over a 3 x 3 box is noisy: on
ground-truth light fields a Gaussian window of sigma 3 pixels scores higher than the box at every
scale (docs/design.md "Departures").

Why two rules for N = 2. The paper's threshold t is absolute (luma units), so it depends on the scene's
brightness and contrast: the authors tuned it per image, and on a low-contrast or dark region the
in-focus input's response never passes it and the whole region goes to B (docs/design.md
"Departures"). 'compare' has no threshold (t is
unused), gives the same map when both images are scaled by a common gain and nearly the same after an
offset or a contrast change (the kernel estimate's regulariser and DC term move a little; tested), and
is the N > 2 rule with its box window (with argmax_sigma = 0 the two give
the same map before the closing; tested); the closing and the largest-region / hole-filling steps (kd, ke, f) apply
to its map as to the paper's. 'compare' is the default; `rule='threshold'` is the paper's rule (`--doublereblur_rule=threshold`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from dfp_jax import filters


RULES = ('threshold', 'compare')


@dataclasses.dataclass(frozen=True)
class DoubleReblurParams:
  """DoubleReblur parameters [k_g, k_d, k_e, t, f] of the paper, the two-input rule and the
  kernel-estimate knobs."""
  kg: int = 5  # Gaussian (second reblur) kernel size, odd.
  kd: int = 3  # Dilation square size of the closing.
  ke: int = 3  # Erosion square size of the closing.
  t: float = 0.01  # Threshold on the second-reblur response (luma in [0, 1]).
  f: int = 1  # 1: keep the largest 8-connected region and fill its holes; 0: skip.
  radius: int = 5  # Kernel support is (2 radius - 1)^2 (9 x 9 for the paper's r = 5).
  wiener_eps: float = 1e-2  # Regulariser of the spectral division, relative to mean |F_A|^2.
  lowpass_sigma: float = 0.25  # Sigma of the Gaussian low-pass window T, in cycles per pixel.
  # Step 4 for N = 2 (help texts: these two are also the flags --doublereblur_rule and
  # --doublereblur_argmax_sigma).
  rule: str = dataclasses.field(default='compare', metadata={
      'flag': 'doublereblur_rule', 'choices': RULES,
      'help': "Two-input decision of --focus_measure=doublereblur: 'compare' = the first input wins where "
              "its second-reblur response (box mean over kd) is at least the second's (no threshold; t "
              "unused); 'threshold' = the papers' s > t (t is absolute: scene-dependent)."})
  argmax_sigma: float = dataclasses.field(default=3.0, metadata={
      'flag': 'doublereblur_argmax_sigma',
      'help': "--focus_measure=doublereblur with N > 2 inputs: sigma (pixels of the inputs) of the "
              "Gaussian window each input's response is averaged over before the argmax; 0 = the kd x kd "
              'box.'})

  def __post_init__(self):
    if self.kg < 1 or self.kg % 2 == 0:
      raise ValueError(f'DoubleReblur k_g must be a positive odd integer, got {self.kg}')
    if self.kd < 1 or self.ke < 1:
      raise ValueError(f'DoubleReblur k_d and k_e must be >= 1, got {self.kd}, {self.ke}')
    if not self.t >= 0:
      raise ValueError(f'DoubleReblur threshold t must be >= 0, got {self.t}')
    if self.f not in (0, 1):
      raise ValueError(f'DoubleReblur f must be 0 or 1, got {self.f}')
    if self.radius < 1:
      raise ValueError(f'DoubleReblur kernel radius must be >= 1, got {self.radius}')
    if not (self.argmax_sigma >= 0 and np.isfinite(self.argmax_sigma)):
      raise ValueError(f'DoubleReblur argmax sigma must be a finite number >= 0, got {self.argmax_sigma}')
    if self.rule not in RULES:
      raise ValueError(f"DoubleReblur rule must be one of {RULES}, got '{self.rule}'")

  @classmethod
  def parse(cls, text: str, **kwargs) -> 'DoubleReblurParams':
    """Parses 'kg,kd,ke,t,f' (the CLI's --doublereblur), e.g. '5,3,3,0.01,1'."""
    parts = [p.strip() for p in str(text).split(',')]
    if len(parts) != 5:
      raise ValueError(
          f"--doublereblur needs 5 comma-separated values kg,kd,ke,t,f (e.g. 5,3,3,0.01,1), got '{text}'")
    try:
      kg, kd, ke = (int(p) for p in parts[:3])
      t = float(parts[3])
      f = float(parts[4])
      if f not in (0.0, 1.0):
        raise ValueError
      f = int(f)
    except ValueError:
      raise ValueError(
          f"--doublereblur values must be integers kg,kd,ke, a number t and f in {{0,1}}, got '{text}'"
      ) from None
    return cls(kg=kg, kd=kd, ke=ke, t=t, f=f, **kwargs)

  def as_list(self) -> list:
    return [self.kg, self.kd, self.ke, self.t, self.f]


class DoubleReblurSteps(NamedTuple):
  """Every intermediate of DoubleReblur for one pair (for tests and pictures)."""
  kernel: jnp.ndarray  # [2r-1, 2r-1] relative blur kernel, sums to 1.
  reblurred: jnp.ndarray  # [H, W] Y_A (*) kernel.
  d1: jnp.ndarray  # [H, W] first-reblur difference.
  s: jnp.ndarray  # [H, W] second-reblur response.
  thresholded: jnp.ndarray  # [H, W] float {0, 1}: step 4's map (s > t, or box(s_A) >= box(s_B)).
  closed: jnp.ndarray  # [H, W] float {0, 1}.
  decision: jnp.ndarray  # [H, W] float {0, 1}: 1 where A is in focus.


def relative_blur_kernel(y_a: jnp.ndarray, y_b: jnp.ndarray, radius: int = 5,
                         wiener_eps: float = 1e-2, lowpass_sigma: float = 0.25) -> jnp.ndarray:
  """Kernel h with Y_B ~ Y_A (*) h, from two [H, W] lumas; returns [2r-1, 2r-1], sum 1, >= 0."""
  h, w = y_a.shape
  size = 2 * radius - 1
  if h < size or w < size:
    raise ValueError(f'image {h}x{w} is smaller than the {size}x{size} blur kernel')
  fa = jnp.fft.fft2(y_a.astype(jnp.float32))
  fb = jnp.fft.fft2(y_b.astype(jnp.float32))
  power = jnp.real(fa * jnp.conj(fa))
  # The tiny floor keeps an all-black image from giving 0 / 0.
  eps = wiener_eps * jnp.mean(power) + 1e-12
  ratio = jnp.conj(fa) * fb / (power + eps)
  fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
  fx = np.fft.fftfreq(w).astype(np.float32)[None, :]
  window = np.exp(-(fy * fy + fx * fx) / (2.0 * lowpass_sigma ** 2)).astype(np.float32)
  k = jnp.real(jnp.fft.ifft2(ratio * window))
  k = jnp.fft.fftshift(k)
  cy, cx = h // 2, w // 2
  k = lax.dynamic_slice(k, (cy - (radius - 1), cx - (radius - 1)), (size, size))
  k = jnp.abs(k)
  total = jnp.sum(k)
  # A black B gives an all-zero kernel: fall back to the identity (no reblur) rather than a zero kernel.
  delta = jnp.zeros((size, size), k.dtype).at[radius - 1, radius - 1].set(1.0)
  return jnp.where(total > 1e-12, k / jnp.maximum(total, 1e-12), delta)


def _propagate_max_labels(mask: jnp.ndarray) -> jnp.ndarray:
  """Labels the 8-connected components of a boolean [H, W] mask (label = max flat index + 1 of the
  component; 0 for background) by propagation to convergence."""
  h, w = mask.shape
  init = jnp.where(mask, jnp.arange(1, h * w + 1, dtype=jnp.int32).reshape(h, w), 0)

  def body(carry):
    labels, _ = carry
    grown = filters.dilate(labels, 3)
    new = jnp.where(mask, grown, 0)
    return new, jnp.any(new != labels)

  labels, _ = lax.while_loop(lambda c: c[1], body, (init, jnp.array(True)))
  return labels


def largest_component(mask: jnp.ndarray) -> jnp.ndarray:
  """Boolean [H, W]: the largest 8-connected region of mask (all False if mask is empty).

  Ties between equally large regions go to the region containing the later pixel in raster order.
  """
  h, w = mask.shape
  labels = _propagate_max_labels(mask)
  sizes = jnp.zeros((h * w + 1,), jnp.int32).at[labels.reshape(-1)].add(1)
  sizes = sizes.at[0].set(0)
  # argmax returns the first maximum; reverse so ties pick the larger label.
  best = h * w - jnp.argmax(sizes[::-1])
  return mask & (labels == best) & (best > 0)


def fill_holes(mask: jnp.ndarray) -> jnp.ndarray:
  """Fills holes of a boolean [H, W] mask: background pixels not 4-connected to the border become
  True (scipy.ndimage.binary_fill_holes with its default cross structure)."""
  bg = ~mask
  border = jnp.zeros_like(mask).at[0, :].set(True).at[-1, :].set(True)
  border = border.at[:, 0].set(True).at[:, -1].set(True)
  init = bg & border

  def body(carry):
    reach, _ = carry
    p = jnp.pad(reach, 1)
    grown = reach | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    new = grown & bg
    return new, jnp.any(new != reach)

  reach, _ = lax.while_loop(lambda c: c[1], body, (init, jnp.array(True)))
  return ~reach


def reblur_response(y: jnp.ndarray, kernel: jnp.ndarray, kg: int):
  """First and second reblur of y [H, W]: returns (reblurred, d1, s)."""
  reblurred = filters.convolve2d(y, kernel, 'reflect')
  d1 = jnp.abs(y - reblurred)
  s = jnp.abs(d1 - filters.gaussian_blur(d1, kg))
  return reblurred, d1, s


def _response(y: jnp.ndarray, other: jnp.ndarray, params: DoubleReblurParams) -> jnp.ndarray:
  """Second-reblur response s [H, W] of y, reblurred with the kernel that blurs y into `other`."""
  kernel = relative_blur_kernel(y, other, params.radius, params.wiener_eps, params.lowpass_sigma)
  return reblur_response(y, kernel, params.kg)[2]


def double_reblur_steps(y_a: jnp.ndarray, y_b: jnp.ndarray,
                        params: DoubleReblurParams = DoubleReblurParams()) -> DoubleReblurSteps:
  """All six steps of DoubleReblur on two [H, W] lumas in [0, 1] (see the module docstring)."""
  kernel = relative_blur_kernel(y_a, y_b, params.radius, params.wiener_eps, params.lowpass_sigma)
  reblurred, d1, s = reblur_response(y_a, kernel, params.kg)
  if params.rule == 'compare':
    s_b = _response(y_b, y_a, params)
    thresholded = filters.box_mean(s, params.kd) >= filters.box_mean(s_b, params.kd)  # Ties: A.
  else:
    thresholded = s > params.t
  closed = filters.erode(filters.dilate(thresholded.astype(jnp.uint8), params.kd), params.ke) > 0
  decision = closed
  if params.f == 1:
    decision = fill_holes(largest_component(closed))
  f32 = lambda x: x.astype(jnp.float32)
  return DoubleReblurSteps(kernel, reblurred, d1, s, f32(thresholded), f32(closed), f32(decision))


def double_reblur(y_a: jnp.ndarray, y_b: jnp.ndarray,
                  params: DoubleReblurParams = DoubleReblurParams()) -> jnp.ndarray:
  """Binary decision map [H, W] (float32 {0, 1}): 1 where A is in focus."""
  return double_reblur_steps(y_a, y_b, params).decision


def argmax_window_size(sigma: float) -> int:
  """Side of the Gaussian window of the N-input argmax: cv2.GaussianBlur's rule for float images with
  ksize (0, 0), cvRound(8 sigma + 1) | 1 (tested against OpenCV's impulse response)."""
  return int(np.rint(8.0 * sigma + 1.0)) | 1


def focus_window(s: jnp.ndarray, params: DoubleReblurParams) -> jnp.ndarray:
  """The N-input rule's local average of a response [..., H, W]: Gaussian of sigma params.argmax_sigma,
  or the kd x kd box when it is 0 (reflect-101 borders either way)."""
  if params.argmax_sigma > 0:
    return filters.gaussian_blur(s, argmax_window_size(params.argmax_sigma), params.argmax_sigma)
  return filters.box_mean(s, params.kd)


def focus_measures(lumas: jnp.ndarray, params: DoubleReblurParams = DoubleReblurParams()) -> jnp.ndarray:
  """Per-input focus measure [N, H, W] for N lumas [N, H, W]: each input's second-reblur response
  against the mean of the others, averaged over the window of `focus_window`."""
  n = lumas.shape[0]
  total = jnp.sum(lumas, axis=0)

  def one(y):
    return focus_window(_response(y, (total - y) / (n - 1), params), params)

  return jax.vmap(one)(lumas)


# ---------------------------------------------------------------------------------------------------
# Focus measures: a luma stack [N, H, W] -> a per-input response [N, H, W] (larger: more in focus).
# Each is a pure jnp function of the lumas and the FocusConfig; register a new one in MEASURES.


def _window(x: jnp.ndarray, sigma: float) -> jnp.ndarray:
  """Gaussian local mean of x [..., H, W] (cv2.GaussianBlur's support for sigma; reflect-101)."""
  return filters.gaussian_blur(x, argmax_window_size(sigma), sigma)


def laplacian_energy(lumas: jnp.ndarray, window: str = 'gauss', size: float = 1.0) -> jnp.ndarray:
  """Local energy of the 4-neighbour Laplacian: mean of laplacian(y)^2 over a Gaussian window of sigma
  `size` ('gauss') or a size x size box ('box'). lightfield.focus_measure (the focal-plane chooser's
  measure) is this with a 9 x 9 box."""
  lap = filters.laplacian(lumas)
  energy = lap * lap
  return filters.box_mean(energy, int(size)) if window == 'box' else _window(energy, size)


def sum_modified_laplacian(lumas: jnp.ndarray, size: float = 1.0) -> jnp.ndarray:
  """Sum-modified-Laplacian (Nayar & Nakagawa 1994), |2y - y_left - y_right| + |2y - y_up - y_down|,
  averaged over a Gaussian window of sigma `size` (reflect-101 borders)."""
  p = jnp.pad(lumas, [(0, 0)] * (lumas.ndim - 2) + [(1, 1), (1, 1)], mode='reflect')
  ml = (jnp.abs(2.0 * lumas - p[..., 1:-1, :-2] - p[..., 1:-1, 2:])
        + jnp.abs(2.0 * lumas - p[..., :-2, 1:-1] - p[..., 2:, 1:-1]))
  return _window(ml, size)


def _pyr_down(x: jnp.ndarray) -> jnp.ndarray:
  """cv2.pyrDown of [..., H, W]: the 5-tap binomial (reflect-101), then every second pixel."""
  k = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
  return filters.separable_correlate(x, k, k, 'reflect')[..., ::2, ::2]


def multiscale_laplacian(lumas: jnp.ndarray, size: float = 1.0, levels: int = 3) -> jnp.ndarray:
  """Laplacian energy summed over a Gaussian pyramid (cv2.pyrDown levels 0 .. levels - 1): each level's
  energy averaged over a Gaussian window of sigma `size` at that level's resolution (so the window
  doubles per level), resized back to full size (bilinear, half-pixel centres) and summed as it is
  (fine scales weigh most where there is fine texture; coarse ones decide where there is none)."""
  h, w = lumas.shape[-2:]
  total, level = jnp.zeros_like(lumas), lumas
  for _ in range(levels):
    e = laplacian_energy(level, 'gauss', size)
    total = total + (e if e.shape[-2:] == (h, w) else
                     jax.image.resize(e, e.shape[:-2] + (h, w), 'linear'))
    level = _pyr_down(level)
  return total


def doublereblur_response(lumas: jnp.ndarray, params: DoubleReblurParams) -> jnp.ndarray:
  """DoubleReblur as a focus measure: each input's second-reblur response (reblurred with the kernel
  that blurs it into the other input, or into the mean of the others for N > 2), averaged over the kd
  x kd box for two inputs (the 'compare' rule), over `focus_window` for N > 2."""
  n = lumas.shape[0]
  if n == 2:
    s = jnp.stack([_response(lumas[0], lumas[1], params), _response(lumas[1], lumas[0], params)])
    return filters.box_mean(s, params.kd)
  return focus_measures(lumas, params)


MEASURES = {
    'multiscale_laplacian': lambda lumas, cfg: multiscale_laplacian(lumas, cfg.window, cfg.levels),
    'laplacian_energy': lambda lumas, cfg: laplacian_energy(lumas, 'gauss', cfg.window),
    'sum_modified_laplacian': lambda lumas, cfg: sum_modified_laplacian(lumas, cfg.window),
    'doublereblur': lambda lumas, cfg: doublereblur_response(lumas, cfg.doublereblur),
}
CLEANUPS = ('none', 'regions', 'small_regions')


# ---------------------------------------------------------------------------------------------------
# Clean-ups of an index map (int32 [H, W], values in [0, N)).


def regions_cleanup(index: jnp.ndarray, params: DoubleReblurParams) -> jnp.ndarray:
  """DoubleReblur's clean-up of a two-input map (steps 5-6): input 0's region is closed (dilate kd x
  kd, erode ke x ke) and, with f = 1, reduced to its largest 8-connected region with its holes filled.
  Maps of more than two inputs are returned as they are (the steps have no N-input form)."""
  if params.kd == 1 and params.ke == 1 and params.f == 0:
    return index
  m = filters.erode(filters.dilate((index == 0).astype(jnp.uint8), params.kd), params.ke) > 0
  if params.f == 1:
    m = fill_holes(largest_component(m))
  return jnp.where(m, 0, 1).astype(jnp.int32)


_NEIGHBOURS8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _neighbour(x: jnp.ndarray, dy: int, dx: int, fill) -> jnp.ndarray:
  """x[i + dy, j + dx] of [H, W], `fill` outside the image."""
  h, w = x.shape
  return jnp.pad(x, 1, constant_values=fill)[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def region_labels(index: jnp.ndarray) -> jnp.ndarray:
  """Labels the 8-connected regions of equal index, all labels at once: each pixel gets the largest
  flat position + 1 of its region (label propagation to convergence in lax.while_loop)."""
  h, w = index.shape
  same = [_neighbour(index, dy, dx, -1) == index for dy, dx in _NEIGHBOURS8]

  def body(carry):
    labels, _ = carry
    new = labels
    for (dy, dx), s in zip(_NEIGHBOURS8, same):
      new = jnp.maximum(new, jnp.where(s, _neighbour(labels, dy, dx, 0), 0))
    return new, jnp.any(new != labels)

  init = jnp.arange(1, h * w + 1, dtype=jnp.int32).reshape(h, w)
  return lax.while_loop(lambda c: c[1], body, (init, jnp.array(True)))[0]


def remove_small_regions(index: jnp.ndarray, n: int, min_pixels: int) -> jnp.ndarray:
  """Every 8-connected region of one label with fewer than `min_pixels` pixels is relabelled from its
  surroundings: growing inwards, each of its pixels takes the most frequent label among its decided
  8-neighbours (ties to the lower index). A map whose regions are all small is returned as it is."""
  h, w = index.shape
  labels = region_labels(index)
  sizes = jnp.zeros((h * w + 1,), jnp.int32).at[labels.reshape(-1)].add(1)
  known = sizes[labels] >= min_pixels
  known = known | ~jnp.any(known)

  def body(carry):
    idx, kn = carry
    onehot = jax.nn.one_hot(idx, n, axis=0, dtype=jnp.float32) * kn[None]
    votes = sum(jnp.stack([_neighbour(onehot[c], dy, dx, 0.0) for c in range(n)])
                for dy, dx in _NEIGHBOURS8)
    grow = ~kn & (jnp.sum(votes, axis=0) > 0)
    return jnp.where(grow, jnp.argmax(votes, axis=0).astype(jnp.int32), idx), kn | grow

  return lax.while_loop(lambda c: ~jnp.all(c[1]), body, (index, known))[0]


# ---------------------------------------------------------------------------------------------------
# The decision maps.


@dataclasses.dataclass(frozen=True)
class FocusConfig:
  """How the decision maps are made: a focus measure, the argmax over the inputs, a clean-up."""
  measure: str = dataclasses.field(default='multiscale_laplacian', metadata={
      'flag': 'focus_measure', 'choices': tuple(MEASURES),
      'help': "Focus measure of the decision maps (each pixel goes to the input with the largest "
              "response): 'multiscale_laplacian' (Laplacian energy summed over a 3-level Gaussian "
              "pyramid), 'laplacian_energy', 'sum_modified_laplacian', or 'doublereblur' (the papers', "
              'with --doublereblur*). docs/design.md "Departures".'})
  window: float = dataclasses.field(default=1.0, metadata={
      'flag': 'focus_window',
      'help': 'Sigma (pixels of the inputs) of the Gaussian window the Laplacian-family measures are '
              'averaged over (at each pyramid level for multiscale_laplacian).'})
  levels: int = dataclasses.field(default=3, metadata={
      'flag': 'focus_levels', 'help': 'Pyramid levels of multiscale_laplacian.'})
  cleanup: str = dataclasses.field(default='none', metadata={
      'flag': 'focus_cleanup', 'choices': CLEANUPS,
      'help': "Clean-up of the decision map: 'none'; 'regions' (DoubleReblur's steps 5-6 for two inputs: "
              'closing kd, ke, then with f = 1 the largest region with its holes filled; wrong by '
              "construction on thin structures such as fences or leaves); 'small_regions' (regions "
              'smaller than --focus_min_region of the image take their surroundings\' label).'})
  min_region: float = dataclasses.field(default=0.001, metadata={
      'flag': 'focus_min_region',
      'help': "Smallest region kept by --focus_cleanup=small_regions, as a fraction of the image."})
  # DoubleReblur's parameters: its measure (--focus_measure=doublereblur), its absolute-threshold rule
  # and the kd, ke, f of the 'regions' clean-up (--doublereblur, --doublereblur_rule,
  # --doublereblur_argmax_sigma).
  doublereblur: DoubleReblurParams = dataclasses.field(default=DoubleReblurParams(),
                                                      metadata={'nested': True})

  def __post_init__(self):
    if self.measure not in MEASURES:
      raise ValueError(f"focus measure must be one of {tuple(MEASURES)}, got '{self.measure}'")
    if self.cleanup not in CLEANUPS:
      raise ValueError(f"focus clean-up must be one of {CLEANUPS}, got '{self.cleanup}'")
    if not (0 < self.window < 64 and np.isfinite(self.window)):
      raise ValueError(f'focus window must be a sigma in (0, 64) pixels, got {self.window}')
    if not 1 <= self.levels <= 8:
      raise ValueError(f'focus levels must be in [1, 8], got {self.levels}')
    if not 0 <= self.min_region < 1:
      raise ValueError(f'focus min_region must be a fraction in [0, 1), got {self.min_region}')


PAPERS_FOCUS = FocusConfig(measure='doublereblur', cleanup='regions',
                           doublereblur=DoubleReblurParams(rule='threshold'))


def restrict_to_valid(index: jnp.ndarray, valid: jnp.ndarray | None) -> jnp.ndarray:
  """`index` [H, W] with every pixel whose chosen input does not cover it (valid [N, H, W] False there:
  registration brought it in from outside that frame) given to the first input that does."""
  if valid is None:
    return index
  covered = jnp.take_along_axis(valid, index[None], axis=0)[0]
  return jnp.where(covered, index, jnp.argmax(valid, axis=0).astype(index.dtype))


def decision_index(images: jnp.ndarray, cfg: FocusConfig = FocusConfig(),
                   valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Which input each pixel takes, int32 [H, W], for N registered images [N, H, W, C] in [0, 1]: the
  argmax over the inputs of `cfg.measure` (ties to the lower index), or DoubleReblur's absolute
  threshold for two inputs (rule 'threshold'), then `cfg.cleanup`. `valid` [N, H, W] (bool, optional):
  where each input covers the image (after registration); an input is never chosen where it does not."""
  n = images.shape[0]
  if n < 2:
    raise ValueError(f'decision maps need at least 2 images, got {n}')
  lumas = filters.luma(images)
  dr = cfg.doublereblur
  if cfg.measure == 'doublereblur' and n == 2 and dr.rule == 'threshold':
    index = jnp.where(_response(lumas[0], lumas[1], dr) > dr.t, 0, 1).astype(jnp.int32)
  else:
    response = MEASURES[cfg.measure](lumas, cfg)
    if valid is not None:
      response = jnp.where(valid, response, -jnp.inf)
    index = jnp.argmax(response, axis=0).astype(jnp.int32)
  if cfg.cleanup == 'regions' and n == 2:
    index = regions_cleanup(index, dr)
  elif cfg.cleanup == 'small_regions':
    h, w = index.shape
    index = remove_small_regions(index, n, int(np.ceil(cfg.min_region * h * w)))
  return restrict_to_valid(index, valid)


def decision_maps(images: jnp.ndarray, cfg: FocusConfig = FocusConfig(),
                  valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Decision maps [N, H, W] (float32, one-hot along N: they partition the image) for N registered
  images [N, H, W, C] in [0, 1] (`decision_index`; `valid` as there)."""
  return jax.nn.one_hot(decision_index(images, cfg, valid), images.shape[0], axis=0, dtype=jnp.float32)
