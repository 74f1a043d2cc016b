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
      'help': "Two-input decision of DoubleReblur: 'compare' = the first input wins where its "
              "second-reblur response (box mean over kd) is at least the second's (no threshold; t "
              "unused); 'threshold' = the papers' s > t (t is absolute: scene-dependent). "
              'docs/design.md "Departures".', 'choices': RULES})
  argmax_sigma: float = dataclasses.field(default=3.0, metadata={
      'help': "N > 2 inputs: sigma (pixels at the input size) of the Gaussian window each input's focus "
              'measure is averaged over before the argmax that makes the decision maps; 0 = the kd x kd '
              'box. Not used for N = 2. docs/design.md "Departures".'})

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


def decision_maps(images: jnp.ndarray, params: DoubleReblurParams = DoubleReblurParams()) -> jnp.ndarray:
  """Decision maps [N, H, W] for N registered images [N, H, W, C] in [0, 1]; they partition the image
  (one-hot along N at every pixel). N = 2: DoubleReblur's map m and 1 - m. N > 2: argmax rule."""
  n = images.shape[0]
  if n < 2:
    raise ValueError(f'decision maps need at least 2 images, got {n}')
  lumas = filters.luma(images)
  if n == 2:
    m = double_reblur(lumas[0], lumas[1], params)
    return jnp.stack([m, 1.0 - m])
  index = jnp.argmax(focus_measures(lumas, params), axis=0)
  return jax.nn.one_hot(index, n, axis=0, dtype=jnp.float32)
