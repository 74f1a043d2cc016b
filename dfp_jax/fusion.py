"""One scene's Deep Fusion Prior pipeline (DFP_METHOD.md section 2, Algorithm 1).

  1. DoubleReblur decision maps on the luma of the N low-resolution inputs (`focus.decision_maps`).
  2. Decision embedding (optional): the mask SKIPnet cleans the maps (`embedding`).
  3. Fusion prior: the image SKIPnet maps z (bicubic x s of the inputs' mean, or noise) to the HR image,
     relative to the bicubic of the fusion by the maps (`output_base='map_fusion'`, default:
     sigmoid(net(z) + logit(B))) or on its own (`'none'`, the papers': sigmoid(net(z))); the Lanczos-2
     downsampling of the output is compared with the inputs by the DFP losses.
  4. The result is the EMA (or last) of the outputs: no ground truth is ever used.

`fuse` is the notebook entry point: arrays in, a `FusionResult` out, no file I/O and no printing (it
logs progress through absl). The building blocks below it (`scene_problem`, `init_mask_state`,
`main_stage`, ...) are pure and written for one scene without a scene axis, so the batch engine can vmap
them.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Sequence

from absl import logging
import numpy as np
import jax
import jax.numpy as jnp
import optax

from dfp_jax import baselines
from dfp_jax import embedding
from dfp_jax import focus
from dfp_jax import losses
from dfp_jax import models
from dfp_jax import optimize
from dfp_jax import resample
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError


class FusionResult(NamedTuple):
  """Outputs of `fuse` (NumPy arrays, float32 in [0, 1])."""
  fused: np.ndarray  # [sH, sW, C] all-in-focus result at scale x the input size.
  fused_lr: np.ndarray  # [H, W, C] its Lanczos-2 downsampling.
  decision_maps_raw: np.ndarray  # [N, H, W] DoubleReblur maps (a partition of the image).
  decision_maps: np.ndarray  # [N, H, W] maps after decision embedding (= raw if mask_iters == 0).
  network_input: np.ndarray  # [sH, sW, C_z] the fixed input z of the image net.
  history: dict  # {'mask': {term: [K_m]}, 'main': {term: [K]}} per-step loss terms.
  timings: dict  # Seconds per stage, compile seconds, steps per second.


def input_size_needs(config: FusionConfig) -> list[tuple[int, str]]:
  """What bounds the low-resolution side from below: (pixels, reason) pairs."""
  d, dm, dr = config.image_prior.depth, config.mask_net.depth, config.focus.doublereblur
  needs = [(int(np.ceil(2 ** d / config.scale)), f'the image net (depth {d}) needs 2^{d} pixels at x{config.scale}'),
           (2 * dr.radius - 1, f'DoubleReblur\'s blur-kernel estimate spans {2 * dr.radius - 1} pixels'),
           (max(dr.kg, dr.kd, dr.ke), f'--doublereblur kernels kg,kd,ke = {dr.kg},{dr.kd},{dr.ke}')]
  if config.mask_iters > 0:
    needs.append((2 ** dm, f'the decision-embedding net (depth {dm}) needs 2^{dm} pixels at the input '
                           'size (--mask_iters=0 turns it off)'))
  return needs


def min_input_size(config: FusionConfig) -> int:
  """Smallest low-resolution side accepted: the mask net works at the input size, the image net at
  s times it, and both need 2^D; DoubleReblur needs its kernel support."""
  return max(n for n, _ in input_size_needs(config))


def size_shortfall(config: FusionConfig, height: int, width: int) -> str | None:
  """None if inputs of height x width are large enough for `config`, else what is needed and why (with
  the network depth that would fit, when the depth is what binds)."""
  m = min_input_size(config)
  side = min(height, width)
  if side >= m:
    return None
  why = '; '.join(r for n, r in input_size_needs(config) if n > side)
  depth = config.image_prior.depth
  fits = int(np.floor(np.log2(max(side, 1) * (config.scale if config.mask_iters == 0 else 1))))
  if 2 ** depth > side * config.scale or (config.mask_iters > 0 and 2 ** depth > side):
    why += (f'; at this size the networks can have at most {fits} scale(s): give --channels, '
            '--skip_channels and --mask_skip_channels that many entries' if fits >= 1 else '')
  return f'each side must be at least {m} pixels ({why})'


def validate_images(images, config: FusionConfig, names: Sequence[str] | None = None) -> jnp.ndarray:
  """Checks and stacks N >= 2 images [H, W, C] in [0, 1] into [N, H, W, C] float32.

  Raises InputError naming the offending input (by `names[i]` if given) and the problem.
  """
  images = [np.asarray(im) for im in images]
  names = list(names) if names is not None else [f'input {i}' for i in range(len(images))]
  if len(images) < 2:
    raise InputError(f'need at least 2 input images, got {len(images)}')
  for name, im in zip(names, images):
    if im.ndim != 3 or im.shape[-1] not in (1, 3):
      raise InputError(f'{name}: expected an [H, W, 1 or 3] image, got shape {im.shape}')
    if not np.all(np.isfinite(im)):
      raise InputError(f'{name}: contains NaN or infinite values')
    if im.min() < 0.0 or im.max() > 1.0:
      raise InputError(f'{name}: values must lie in [0, 1], got [{im.min():.3g}, {im.max():.3g}]')
  ref = images[0].shape
  for name, im in zip(names[1:], images[1:]):
    if im.shape[:2] != ref[:2]:
      raise InputError(f'{name}: size {im.shape[0]}x{im.shape[1]} differs from {names[0]} '
                       f'({ref[0]}x{ref[1]}); inputs must be registered images of one size')
    if im.shape[2] != ref[2]:
      raise InputError(f'{name}: {im.shape[2]} channel(s) but {names[0]} has {ref[2]}; convert them to '
                       'the same colour mode (the CLI does this with a warning)')
  short = size_shortfall(config, ref[0], ref[1])
  if short:
    raise InputError(f'{names[0]}: {ref[0]}x{ref[1]} is too small: {short}')
  if all(np.ptp(im, axis=(0, 1)).max() == 0 for im in images):
    raise InputError(f'{", ".join(names)}: the inputs carry no focus information: each is one flat colour '
                     '(no detail in any input), so there is nothing to fuse')
  return jnp.asarray(np.stack(images).astype(np.float32))


# ---------------------------------------------------------------------------------------------------
# Pure building blocks for one scene.


def network_input(key, images: jnp.ndarray, config: FusionConfig) -> jnp.ndarray:
  """z for the image net, [sH, sW, C_z]: bicubic x s of the inputs' mean, or U(0, noise_scale)."""
  n, h, w, c = images.shape
  s = config.scale
  if config.input_type == 'noise':
    return config.noise_scale * jax.random.uniform(key, (s * h, s * w, config.noise_channels))
  return resample.bicubic_upsample(jnp.mean(images, axis=0), s)


def mask_input(key, images: jnp.ndarray, config: FusionConfig) -> jnp.ndarray:
  """z for the mask net, [H, W, C_z]: the inputs' mean, or noise."""
  n, h, w, c = images.shape
  if config.input_type == 'noise':
    return config.noise_scale * jax.random.uniform(key, (h, w, config.noise_channels))
  return jnp.mean(images, axis=0)


@functools.lru_cache(maxsize=64)
def mask_stage(config: FusionConfig, num_inputs: int) -> optimize.Stage:
  """The decision-embedding stage (static: cached per configuration and N)."""
  net = config.mask_net.build(embedding.mask_channels(num_inputs),
                              embedding.mask_activation(num_inputs), config.jnp_dtype)

  def loss_fn(params, problem):
    out = net.apply(params, problem['z'])
    soft = embedding.soft_maps(out, num_inputs)
    loss, terms = embedding.embedding_loss(embedding.straight_through(soft), problem['maps'],
                                           problem['images'])
    return loss, (terms, soft)

  return optimize.Stage('mask', loss_fn, optax.adam(config.mask_lr), config.ema_decay, net,
                        config.compiler_options())


@functools.lru_cache(maxsize=64)
def main_stage(config: FusionConfig, channels: int) -> optimize.Stage:
  """The fusion-prior stage (static: cached per configuration and channel count)."""
  based = config.output_base == 'map_fusion'
  net = config.image_prior.build(channels, 'none' if based else 'sigmoid', config.jnp_dtype)
  s = config.scale
  weights = config.loss_weights

  def loss_fn(params, problem):
    out_hr = image_output(net.apply(params, problem['z']), problem, config)
    out_lr = resample.downsample(out_hr, s, config.degradation)
    loss, terms = losses.fusion_loss(out_hr, out_lr, problem['images'], problem['maps'],
                                     problem['grad_target'], weights)
    return loss, (terms, out_hr)

  return optimize.Stage('main', loss_fn, optax.adam(config.lr), config.ema_decay, net,
                        config.compiler_options())


@functools.partial(jax.jit, static_argnames='config')
def init_mask_state(key, images, raw_maps, config: FusionConfig):
  """(state, problem) of the decision embedding for one scene."""
  k_z, k_init = jax.random.split(key)
  n = images.shape[0]
  stage = mask_stage(config, n)
  z = mask_input(k_z, images, config)
  params = stage.net.lazy_init(k_init, jax.ShapeDtypeStruct(z.shape, z.dtype))  # No forward pass.
  problem = {'z': z, 'images': images, 'maps': raw_maps}
  return optimize.init_state(stage, params, (n,) + images.shape[1:3]), problem


@functools.partial(jax.jit, static_argnames=('config', 'num_inputs'))
def embedded_maps(state: optimize.TrainState, config: FusionConfig, num_inputs: int) -> jnp.ndarray:
  """The binary maps [N, H, W] of the decision embedding: the EMA of the soft maps, binarised
  (or the last iterate's maps with config.output_average == 'last').

  The EMA smooths what flicker is left in the last iterates (with the loss's |x| subgradient of 0 at
  0, `embedding.abs_zero_subgradient`, the last iterate and the EMA agree closely).
  """
  soft = state.output if config.output_average == 'last' else optimize.ema_output(
      mask_stage(config, num_inputs), state)
  return embedding.hard_maps(soft)


# The head's kernel is scaled by this at initialisation with output_base='map_fusion', so that the first
# output is close to the base (tests/test_fusion.py checks how close) instead of a random perturbation
# of it. Adam's updates do not depend on the scale of
# a gradient, so training starts at full speed all the same.
BASE_HEAD_SCALE = 0.1
# Base intensities are clipped to [eps, 1 - eps] before the logit: a pixel at exactly 0 or 1 would
# otherwise sit at an infinite pre-activation with no gradient. 1e-3 keeps 8-bit extremes exact after
# rounding (0.255 grey levels).
BASE_EPS = 1e-3


def output_base(images: jnp.ndarray, maps: jnp.ndarray, config: FusionConfig) -> jnp.ndarray:
  """The base image B [sH, sW, C] of output_base='map_fusion': the fusion of the inputs [N, H, W, C] by
  the binary decision maps [N, H, W] (sum_i M_i X_i), bicubic x s, clipped to [0, 1]."""
  return baselines.upsample(baselines.decision_map_fusion(images, maps), config.scale, 'bicubic')


def image_output(net_out: jnp.ndarray, problem, config: FusionConfig) -> jnp.ndarray:
  """The image from the image net's output: the net's own sigmoid output (output_base='none'), or
  sigmoid(pre-activation + logit(B)) with the base's logit kept in problem['base_logit']."""
  if config.output_base == 'none':
    return net_out
  return jax.nn.sigmoid(net_out + problem['base_logit'])


def initial_output_bias(params, images: jnp.ndarray, config: FusionConfig):
  """The image net's parameters with the head bias set by `config.output_bias` ('mean': the logit of the
  mean colour of the inputs [N, H, W, C], so that the first output is that colour everywhere, not 0.5).

  Why: the head's input is batch-normalised, so a sigmoid output far from 0.5 has to come from the
  head's bias, which Adam moves by about the learning rate per step: with the papers' 1e-3 a dark scene
  (mean 0.13, logit -1.9) needs on the order of a thousand steps only to reach its mean level.
  """
  if config.output_bias == 'zero':
    return params
  return models.with_output_bias(params, models.sigmoid_bias_for_mean(jnp.mean(images, axis=(0, 1, 2))))


@functools.partial(jax.jit, static_argnames='config')
def init_main_state(key, images, maps, valid=None, *, config: FusionConfig):
  """(state, problem) of the fusion prior for one scene (`valid` [N, H, W]: where each input covers the
  image after registration; None: everywhere)."""
  k_z, k_init = jax.random.split(key)
  n, h, w, c = images.shape
  stage = main_stage(config, c)
  z = network_input(k_z, images, config)
  params = stage.net.lazy_init(k_init, jax.ShapeDtypeStruct(z.shape, z.dtype))  # No forward pass.
  problem = {'z': z, 'images': images, 'maps': maps,
             'grad_target': losses.joint_gradient_target(images, valid)}
  if config.output_base == 'map_fusion':
    inner = dict(params['params'])
    inner['head'] = {'kernel': inner['head']['kernel'] * BASE_HEAD_SCALE,
                     'bias': jnp.zeros_like(inner['head']['bias'])}
    params = {**params, 'params': inner}
    problem['base_logit'] = models.sigmoid_bias_for_mean(output_base(images, maps, config), BASE_EPS)
  else:
    params = initial_output_bias(params, images, config)
  s = config.scale
  return optimize.init_state(stage, params, (s * h, s * w, c)), problem


@functools.partial(jax.jit, static_argnames=('config', 'channels'))
def final_output(state: optimize.TrainState, config: FusionConfig, channels: int) -> jnp.ndarray:
  """The result image of the main stage: the EMA of the outputs, or the last output."""
  if config.output_average == 'last':
    return state.output
  return jnp.clip(optimize.ema_output(main_stage(config, channels), state), 0.0, 1.0)


decision_maps_jit = jax.jit(focus.decision_maps, static_argnums=1)  # (images, FocusConfig, valid)


def decision_embedding(key, images: jnp.ndarray, raw_maps: jnp.ndarray, config: FusionConfig,
                       progress: optimize.ProgressFn | None = None, valid=None):
  """The decision-embedding stage of one scene: (maps [N, H, W], optimize.StageReport), or the raw maps
  and None when config.mask_iters == 0. The maps are what the main stage's losses (and, with
  output_base='map_fusion', its base) use; with `valid`, no input is given pixels it does not cover."""
  if config.mask_iters == 0:
    return raw_maps, None
  stage = mask_stage(config, images.shape[0])
  state, problem = optimize.call_one_off(init_mask_state, key, images, raw_maps, config=config)
  state, report = optimize.run_stage(stage, state, problem, config.mask_iters, config.chunk_size,
                                     progress, loop=config.loop, stop=config.stop_rule('mask'))
  maps = embedded_maps(state, config=config, num_inputs=images.shape[0])
  return (maps if valid is None else restrict_maps(maps, valid)), report


@jax.jit
def restrict_maps(maps: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """One-hot maps [N, H, W] with each pixel an input does not cover given to one that does."""
  index = focus.restrict_to_valid(jnp.argmax(maps, axis=0).astype(jnp.int32), valid)
  return jax.nn.one_hot(index, maps.shape[0], axis=0, dtype=maps.dtype)


# ---------------------------------------------------------------------------------------------------
# The notebook entry point.


class MainStart(NamedTuple):
  """Everything `fuse` has before the main stage's steps (`prepare_main_stage`)."""
  stage: optimize.Stage  # The main stage.
  state: optimize.TrainState  # Its initial state.
  problem: dict  # Its scene arrays.
  raw_maps: jnp.ndarray  # [N, H, W] DoubleReblur maps.
  maps: jnp.ndarray  # [N, H, W] maps after the decision embedding.
  history: dict  # {'mask': terms} when the embedding ran.
  timings: dict  # decision_maps_s and the embedding's times.


def prepare_main_stage(key, x: jnp.ndarray, config: FusionConfig,
                       progress: optimize.ProgressFn | None = optimize.log_progress,
                       valid=None, maps=None) -> MainStart:
  """The pipeline up to the main stage for validated inputs x [N, H, W, C]: the decision maps, the
  decision embedding, the main stage's initial state (for scripts that drive the main stage window by
  window; `fuse` continues with it). `valid`, `maps`: as for `fuse`."""
  n, h, w, c = x.shape
  k_mask, k_main = jax.random.split(key)
  timings, history = {}, {}
  t0 = time.perf_counter()
  raw_maps = decision_maps_jit(x, config.focus, valid) if maps is None else jnp.asarray(maps, jnp.float32)
  raw_maps.block_until_ready()
  timings['decision_maps_s'] = time.perf_counter() - t0
  logging.info('decision maps (%s) for %d inputs of %dx%d in %.1f s', config.focus.measure, n, h, w,
               timings['decision_maps_s'])
  maps, report = decision_embedding(k_mask, x, raw_maps, config, progress, valid)
  if report is not None:
    history['mask'] = report.history
    timings.update(mask_s=report.seconds, mask_compile_s=report.compile_seconds,
                   mask_steps_per_s=report.steps_per_second, mask_steps=report.steps)
  state, problem = optimize.call_one_off(init_main_state, k_main, x, maps, valid, config=config)
  return MainStart(main_stage(config, c), state, problem, raw_maps, maps, history, timings)


def fuse(images, scale: int | None = None, config: FusionConfig = FusionConfig(), key=None,
         progress: optimize.ProgressFn | None = optimize.log_progress,
         names: Sequence[str] | None = None, valid=None, maps=None) -> FusionResult:
  """Fuses N >= 2 registered images of one scene into one all-in-focus image at `scale` x their size.

  Args:
    images: sequence of N arrays [H, W, C] (or one [N, H, W, C] array), float in [0, 1], C = 1 or 3.
    scale: 1, 2 or 4; overrides `config.scale` when given.
    config: the FusionConfig (iterations, learning rates, networks, losses, focus measure...).
    key: a jax PRNG key (default `jax.random.key(0)`): same key, inputs, config and backend give
      bit-identical results.
    progress: called between chunks with (stage, done, total, elapsed_s, terms); None for silence.
    names: optional names of the inputs (file paths) used in error messages.
    valid: optional [N, H, W] bool, where each input covers the image (`align.register_stack`'s masks):
      an input is neither chosen by the decision maps nor counted by the joint-gradient target where it
      does not (the pixels come from the inputs that do). None: every input covers the whole image.
    maps: optional [N, H, W] decision maps to use instead of computing them (a tile of a large image
      gets its crop of the whole image's maps: `tiles.fuse_tiles`).

  Returns:
    A FusionResult (NumPy arrays).
  """
  if scale is not None and scale != config.scale:
    config = config.replace(scale=scale)
  if key is None:
    key = jax.random.key(0)
  x = validate_images(list(images), config, names)  # [N, H, W, C]
  c = x.shape[-1]
  t0 = time.perf_counter()
  if valid is not None:
    valid = jnp.asarray(np.asarray(valid, bool))
  start = prepare_main_stage(key, x, config, progress, valid, maps)
  stage, state, problem = start.stage, start.state, start.problem
  raw_maps, maps, history, timings = start.raw_maps, start.maps, start.history, start.timings
  state, report = optimize.run_stage(stage, state, problem, config.iters, config.chunk_size, progress,
                                     loop=config.loop, stop=config.stop_rule('main'))
  history['main'] = report.history
  timings.update(main_s=report.seconds, main_compile_s=report.compile_seconds,
                 main_steps_per_s=report.steps_per_second, main_steps=report.steps)
  fused = final_output(state, config=config, channels=c)
  fused_lr = resample.downsample(fused, config.scale, config.degradation)
  timings['total_s'] = time.perf_counter() - t0
  return FusionResult(np.asarray(fused), np.asarray(fused_lr), np.asarray(raw_maps), np.asarray(maps),
                      np.asarray(problem['z']), history, timings)
