"""Decision embedding (DFP_METHOD.md section 5, Algorithm 2 of the long paper).

A small SKIPnet (mask net: skip channels [0, 0, 0, 4, 4]) maps the mean of the low-resolution inputs
(or noise) to decision maps and is optimised for K_m steps towards the DoubleReblur maps, so that the
network prior cleans them. The forward pass binarises (0.5 threshold for two inputs; one-hot argmax for
N > 2) with a straight-through estimator: the hard value forward, the identity gradient backward.

Loss (eq. 20, the reading of DFP_METHOD.md), averaged over pixels (and channels for the image terms):
  L_opt = mean|M_hat - M|  +  sum_i mean|M_hat_i X_i - M_i X_i|
For two inputs M = (m, 1 - m) and the first term is counted once, which is exactly
  |m_hat - m| + |m_hat A - m A| + |(1 - m_hat) B - (1 - m) B|.
Two inputs use one sigmoid output channel; N > 2 inputs use N logits with a softmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_channels(num_inputs: int) -> int:
  """Output channels of the mask net for N inputs."""
  return 1 if num_inputs == 2 else num_inputs


def mask_activation(num_inputs: int) -> str:
  return 'sigmoid' if num_inputs == 2 else 'none'


def soft_maps(net_output: jnp.ndarray, num_inputs: int) -> jnp.ndarray:
  """Soft maps [N, H, W] from the mask net output [H, W, K]."""
  if num_inputs == 2:
    m = net_output[..., 0]
    return jnp.stack([m, 1.0 - m])
  return jnp.moveaxis(jax.nn.softmax(net_output, axis=-1), -1, 0)


def hard_maps(soft: jnp.ndarray) -> jnp.ndarray:
  """Binarised maps [N, H, W]: one-hot argmax along N (for N = 2, m > 0.5 wins ties to B)."""
  n = soft.shape[0]
  if n == 2:
    m = (soft[0] > 0.5).astype(soft.dtype)
    return jnp.stack([m, 1.0 - m])
  return jax.nn.one_hot(jnp.argmax(soft, axis=0), n, axis=0, dtype=soft.dtype)


def straight_through(soft: jnp.ndarray) -> jnp.ndarray:
  """Hard maps forward, gradient of the soft maps backward."""
  return soft + jax.lax.stop_gradient(hard_maps(soft) - soft)


def abs_zero_subgradient(x: jnp.ndarray) -> jnp.ndarray:
  """|x| of a real array with derivative sign(x), i.e. 0 at x = 0 (torch.abs's choice; jnp.abs's
  derivative at 0 is +1). Same values as jnp.abs (real dtypes only).

  The straight-through maps are exactly 0 or 1, so |m_hat - m| is exactly 0 on every pixel the embedding
  already gets right; with jnp.abs those pixels would still receive a full-size gradient that always
  pushes m_hat towards the second input."""
  return x * jax.lax.stop_gradient(jnp.sign(x))


def embedding_loss(maps_hat: jnp.ndarray, maps: jnp.ndarray, images: jnp.ndarray):
  """L_opt for maps_hat, maps [N, H, W] and inputs [N, H, W, C]; returns (loss, terms)."""
  n = maps.shape[0]
  diff = abs_zero_subgradient(maps_hat - maps)
  # For two inputs |1 - m_hat - (1 - m)| repeats |m_hat - m|: count the map term once.
  map_term = jnp.mean(diff[0]) if n == 2 else jnp.mean(jnp.sum(diff, axis=0))
  masked_diff = maps_hat[..., None] * images - maps[..., None] * images
  image_term = jnp.sum(jnp.mean(abs_zero_subgradient(masked_diff), axis=(1, 2, 3)))
  total = map_term + image_term
  return total, {'total': total, 'map': map_term, 'masked_inputs': image_term}
