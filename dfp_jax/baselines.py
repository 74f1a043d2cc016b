"""Baseline fusions to compare DFP with ("MFIF method + SR method", as the papers do).

Fusion (at the inputs' resolution): the average; selection by the DoubleReblur decision maps.
Upsampling: bicubic (OpenCV's INTER_CUBIC) or nearest. All pure jnp on [N, H, W, C] stacks in [0, 1].
"""

from __future__ import annotations

import jax.numpy as jnp

from dfp_jax import focus
from dfp_jax import resample


def average_fusion(images: jnp.ndarray) -> jnp.ndarray:
  """Per-pixel mean of N inputs [N, H, W, C] -> [H, W, C]."""
  return jnp.mean(images, axis=0)


def decision_map_fusion(images: jnp.ndarray, maps: jnp.ndarray | None = None,
                        params: focus.DoubleReblurParams = focus.DoubleReblurParams()) -> jnp.ndarray:
  """sum_i M_i X_i with the DoubleReblur maps (computed if not given) -> [H, W, C]."""
  if maps is None:
    maps = focus.decision_maps(images, params)
  return jnp.sum(maps[..., None] * images, axis=0)


def upsample(image: jnp.ndarray, scale: int, method: str = 'bicubic') -> jnp.ndarray:
  """Upsamples [H, W, C] by `scale` ('bicubic' clipped to [0, 1], or 'nearest')."""
  if scale == 1:
    return image
  if method == 'bicubic':
    return jnp.clip(resample.bicubic_upsample(image, scale), 0.0, 1.0)
  if method == 'nearest':
    return jnp.repeat(jnp.repeat(image, scale, axis=0), scale, axis=1)
  raise ValueError(f"unknown upsampling method '{method}' (use 'bicubic' or 'nearest')")
