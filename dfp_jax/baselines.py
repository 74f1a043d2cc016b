"""Baseline fusions to compare DFP with ("MFIF method + SR method", as the papers do).

Fusion (at the inputs' resolution): the average; selection by the DoubleReblur decision maps;
Laplacian-pyramid fusion (Burt & Adelson 1983: max-absolute detail coefficients, averaged base).
Upsampling: bicubic (OpenCV's INTER_CUBIC), Lanczos-3 or nearest. All pure jnp on [N, H, W, C] stacks in [0, 1].
Super-resolution of one image by a plain deep image prior (`dip_superresolve`, "fusion, then DIP"): the
image SKIPnet of a FusionConfig fitted to the image alone.
"""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp
import optax

from dfp_jax import filters
from dfp_jax import focus
from dfp_jax import optimize
from dfp_jax import resample

_PYR_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # OpenCV's pyrDown/pyrUp 5-tap binomial.
_LUMA = np.array([0.299, 0.587, 0.114])


def average_fusion(images: jnp.ndarray) -> jnp.ndarray:
  """Per-pixel mean of N inputs [N, H, W, C] -> [H, W, C]."""
  return jnp.mean(images, axis=0)


def decision_map_fusion(images: jnp.ndarray, maps: jnp.ndarray | None = None,
                        focus_config: focus.FocusConfig = focus.FocusConfig()) -> jnp.ndarray:
  """sum_i M_i X_i with the decision maps (computed with `focus_config` if not given) -> [H, W, C]."""
  if maps is None:
    maps = focus.decision_maps(images, focus_config)
  return jnp.sum(maps[..., None] * images, axis=0)


def upsample(image: jnp.ndarray, scale: int, method: str = 'bicubic') -> jnp.ndarray:
  """Upsamples [H, W, C] by `scale` ('bicubic' clipped to [0, 1], or 'nearest')."""
  if scale == 1:
    return image
  if method == 'bicubic':
    return jnp.clip(resample.bicubic_upsample(image, scale), 0.0, 1.0)
  if method == 'lanczos':  # Lanczos-3, half-pixel centres (as cv2.resize), clipped to [0, 1].
    h, w, c = image.shape
    return jnp.clip(jax.image.resize(image, (scale * h, scale * w, c), 'lanczos3'), 0.0, 1.0)
  if method == 'nearest':
    return jnp.repeat(jnp.repeat(image, scale, axis=0), scale, axis=1)
  raise ValueError(f"unknown upsampling method '{method}' (use 'bicubic', 'lanczos' or 'nearest')")


def pyr_down(x: jnp.ndarray) -> jnp.ndarray:
  """cv2.pyrDown on [..., H, W]: 5x5 binomial blur (BORDER_REFLECT_101), every second pixel ->
  [..., ceil(H/2), ceil(W/2)]."""
  y = filters.separable_correlate(x, _PYR_KERNEL, _PYR_KERNEL, 'reflect')
  return y[..., ::2, ::2]


def pyr_up(x: jnp.ndarray, shape: tuple[int, int]) -> jnp.ndarray:
  """cv2.pyrUp on [..., h, w] to `shape` (H, W) with H in {2h - 1, 2h}: zeros inserted, 5x5 binomial
  x 4. At the borders OpenCV mirrors the source (reflect-101) at the top/left and repeats its last
  row/column at the bottom/right; this matches it exactly (tests/test_baselines.py)."""
  h, w = x.shape[-2:]
  lead = [(0, 0)] * (x.ndim - 2)
  xp = jnp.pad(x, lead + [(1, 0), (1, 0)], mode='reflect')
  xp = jnp.pad(xp, lead + [(0, 1), (0, 1)], mode='edge')
  z = jnp.zeros(x.shape[:-2] + (2 * (h + 2), 2 * (w + 2)), x.dtype).at[..., ::2, ::2].set(xp)
  k = 2.0 * _PYR_KERNEL
  y = filters.separable_correlate(z, k, k, 'constant')
  return y[..., 2:2 + shape[0], 2:2 + shape[1]]


def laplacian_pyramid_fusion(images: jnp.ndarray, levels: int = 4) -> jnp.ndarray:
  """Laplacian-pyramid fusion of N inputs [N, H, W, C] -> [H, W, C] (Burt & Adelson 1983).

  Each input's Laplacian pyramid (cv2.pyrDown / pyrUp conventions, `levels` detail levels, fewer if
  the coarsest level would drop below 8 pixels); at every detail level and pixel the coefficients of
  the input whose luma coefficient has the largest magnitude are taken (all channels together, so no
  colour is mixed from two sources); the coarsest level is averaged; the result is reconstructed and
  clipped to [0, 1].
  """
  n, h, w, c = images.shape
  levels = max(0, min(levels, int(np.floor(np.log2(max(min(h, w), 1) / 8.0)))))
  x = jnp.moveaxis(images, -1, 1)  # [N, C, H, W]
  gauss = [x]
  for _ in range(levels):
    gauss.append(pyr_down(gauss[-1]))
  weights = jnp.asarray(_LUMA if c == 3 else np.ones(c) / c, x.dtype)
  fused = []
  for fine, coarse in zip(gauss[:-1], gauss[1:]):
    lap = fine - pyr_up(coarse, fine.shape[-2:])  # [N, C, h, w]
    activity = jnp.abs(jnp.einsum('nchw,c->nhw', lap, weights))
    pick = jnp.argmax(activity, axis=0)  # [h, w]
    fused.append(jnp.take_along_axis(lap, pick[None, None].repeat(c, 1), axis=0)[0])
  out = jnp.mean(gauss[-1], axis=0)
  for detail in reversed(fused):
    out = pyr_up(out, detail.shape[-2:]) + detail
  return jnp.clip(jnp.moveaxis(out, 0, -1), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# Plain deep-image-prior super-resolution of one image (a baseline: "fusion, then DIP").


@functools.lru_cache(maxsize=64)
def dip_stage(config, channels: int) -> optimize.Stage:
  """Deep image prior SR (Ulyanov et al. 2018): the image SKIPnet of `config`, no fusion losses; the
  loss is the mean squared error between the Lanczos-2 downsampling of the output and the image."""
  net = config.image_prior.build(channels, 'sigmoid', config.jnp_dtype)
  s = config.scale

  def loss_fn(params, problem):
    out_hr = net.apply(params, problem['z'])
    mse = jnp.mean(jnp.square(resample.downsample(out_hr, s, config.degradation) - problem['image']))
    return mse, ({'total': mse}, out_hr)

  return optimize.Stage('dip', loss_fn, optax.adam(config.lr), config.ema_decay, net,
                        config.compiler_options())


@functools.partial(jax.jit, static_argnames='config')
def init_dip_state(key, image, config):
  """(state, problem) of deep-image-prior SR for one image [H, W, C]: the network input and the head's
  initial bias as in DFP's main stage (`fusion.network_input`, `fusion.initial_output_bias`)."""
  from dfp_jax import fusion  # pylint: disable=g-import-not-at-top  (fusion imports this module)
  k_z, k_init = jax.random.split(key)
  h, w, c = image.shape
  stage = dip_stage(config, c)
  z = fusion.network_input(k_z, image[None], config)
  params = stage.net.lazy_init(k_init, jax.ShapeDtypeStruct(z.shape, z.dtype))
  params = fusion.initial_output_bias(params, image[None], config)
  s = config.scale
  return optimize.init_state(stage, params, (s * h, s * w, c)), {'z': z, 'image': image}


def dip_superresolve(image, config, key=None,
                     progress: optimize.ProgressFn | None = None, iters: int | None = None):
  """Super-resolves one image [H, W, C] in [0, 1] by `config.scale` with a plain deep image prior
  (`config.iters` steps, or `iters`; the convergence stop of `config` applies). Returns
  (HR image as NumPy, optimize.StageReport)."""
  key = jax.random.key(0) if key is None else key
  x = jnp.asarray(np.asarray(image, np.float32))
  stage = dip_stage(config, x.shape[-1])
  state, problem = optimize.call_one_off(init_dip_state, key, x, config=config)
  state, report = optimize.run_stage(stage, state, problem, iters or config.iters, config.chunk_size,
                                     progress, loop=config.loop, stop=config.stop_rule('main'))
  out = state.output if config.output_average == 'last' else optimize.ema_output(stage, state)
  return np.asarray(jnp.clip(out, 0.0, 1.0)), report
