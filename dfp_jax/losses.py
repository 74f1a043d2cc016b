"""DFP losses (DFP_METHOD.md section 6), for one scene, generalised to N >= 2 inputs.

With I_hr the network output [sH, sW, C], I = Down(I_hr) its Lanczos-2 downsampling [H, W, C], the
decision maps M [N, H, W] (a partition of the image), and the low-resolution inputs X [N, H, W, C]:

  content      L_con   = sum_i lambda_i mean(|M_i (I - X_i)|)           (RGB; lambda_i = 1)
  joint grad   L_jgrad = mean(| |Lap(Y(I))| - max_i |Lap(Y(X_i))| |)   (luma, 4-neighbour Laplacian)
  grad limit   L_grad  = mean(|dx I_hr|) + mean(|dy I_hr|)             (anisotropic TV on the HR output)
  total        L = alpha L_con + beta L_jgrad + gamma L_grad,  alpha, beta, gamma = 1, 0.5, 0.1

Means are over pixels and channels. For N = 2 these are the paper's equations 21-24 exactly (M_0 = m,
M_1 = 1 - m). Y is proper BT.601 luma for the output and the inputs alike (the authors' code applies a
transposed colour matrix to the output, a bug not reproduced). The target max_i |Lap(Y(X_i))| depends only
on the inputs: `joint_gradient_target` computes it once per scene.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dfp_jax import filters


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the total loss."""
  alpha: float = 1.0  # Content loss.
  beta: float = 0.5  # Joint gradient loss.
  gamma: float = 0.1  # Gradient limit (TV) loss.
  content: tuple | None = None  # Per-input lambda_i; None = all ones.


def joint_gradient_target(images: jnp.ndarray, valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """max_i |Lap(Y(X_i))| over N inputs [N, H, W, C]; returns [H, W]. With `valid` [N, H, W] (where each
  input covers the image after registration) only inputs covering a pixel and its 4 neighbours count
  (the Laplacian there would see the edge of the resampled frame)."""
  lap = jnp.abs(filters.laplacian(filters.luma(images)))
  if valid is not None:
    lap = jnp.where(filters.erode(valid.astype(jnp.uint8), 3) > 0, lap, 0.0)
  return jnp.max(lap, axis=0)


def content_loss(output_lr: jnp.ndarray, images: jnp.ndarray, maps: jnp.ndarray,
                 weights=None) -> jnp.ndarray:
  """sum_i lambda_i mean(|M_i (I - X_i)|); output_lr [H, W, C], images [N, H, W, C], maps [N, H, W]."""
  per_input = jnp.mean(jnp.abs(maps[..., None] * (output_lr[None] - images)), axis=(1, 2, 3))
  if weights is not None:
    per_input = per_input * jnp.asarray(weights, per_input.dtype)
  return jnp.sum(per_input)


def joint_gradient_loss(output_lr: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """mean(| |Lap(Y(I))| - target |) with target from `joint_gradient_target`."""
  return jnp.mean(jnp.abs(jnp.abs(filters.laplacian(filters.luma(output_lr))) - target))


def gradient_limit_loss(output_hr: jnp.ndarray) -> jnp.ndarray:
  """mean(|dx I|) + mean(|dy I|) with forward differences on [sH, sW, C]."""
  dx = output_hr[:, 1:, :] - output_hr[:, :-1, :]
  dy = output_hr[1:, :, :] - output_hr[:-1, :, :]
  return jnp.mean(jnp.abs(dx)) + jnp.mean(jnp.abs(dy))


def fusion_loss(output_hr: jnp.ndarray, output_lr: jnp.ndarray, images: jnp.ndarray,
                maps: jnp.ndarray, grad_target: jnp.ndarray, weights: LossWeights = LossWeights()):
  """Total loss and its terms (a dict of scalars: total, content, joint_grad, grad_limit)."""
  l_con = content_loss(output_lr, images, maps, weights.content)
  l_jg = joint_gradient_loss(output_lr, grad_target)
  l_gl = gradient_limit_loss(output_hr)
  total = weights.alpha * l_con + weights.beta * l_jg + weights.gamma * l_gl
  return total, {'total': total, 'content': l_con, 'joint_grad': l_jg, 'grad_limit': l_gl}
