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

import collections
import functools
import os
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


def _dtype(config: FusionConfig):
  return jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32


def input_size_needs(config: FusionConfig) -> list[tuple[int, str]]:
  """What bounds the low-resolution side from below: (pixels, reason) pairs."""
  d, dm, dr = len(config.image_net.channels_down), len(config.mask_net.channels_down), config.doublereblur
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
  """None if inputs of height x width are large enough for `config`, else what is needed and why."""
  m = min_input_size(config)
  if min(height, width) >= m:
    return None
  why = '; '.join(r for n, r in input_size_needs(config) if n > min(height, width))
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
                              embedding.mask_activation(num_inputs), _dtype(config))

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
  net = config.image_net.build(channels, 'none' if based else 'sigmoid', _dtype(config))
  s = config.scale
  weights = config.weights

  def loss_fn(params, problem):
    out_hr = image_output(net.apply(params, problem['z']), problem, config)
    out_lr = resample.lanczos2_downsample(out_hr, s)
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
  (or the last iterate's maps with config.output == 'last').

  The EMA smooths what flicker is left in the last iterates. Until the loss took torch.abs's derivative
  at 0 (embedding.abs_zero_subgradient), every pixel already right got a full-size gradient towards
  the second input, the loss swung by up to 9x within 50 steps and the last iterate's map jumped
  (IoU with the raw map 0.23-0.90 over steps 300-500 on the bundled pair, seed 0); now the swing is
  smaller (0.03-0.08 within 50 steps) and the last iterate and the EMA agree (IoU 0.94 and 0.95 at
  step 500).
  """
  soft = state.output if config.output == 'last' else optimize.ema_output(
      mask_stage(config, num_inputs), state)
  return embedding.hard_maps(soft)


# The head's kernel is scaled by this at initialisation with output_base='map_fusion', so that the first
# output is close to the base (on the bundled pair: mean |sigmoid(net + logit B) - B| 0.008, 38-39 dB
# from B at x1-x4) instead of a random perturbation of it. Adam's updates do not depend on the scale of
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
def init_main_state(key, images, maps, config: FusionConfig):
  """(state, problem) of the fusion prior for one scene."""
  k_z, k_init = jax.random.split(key)
  n, h, w, c = images.shape
  stage = main_stage(config, c)
  z = network_input(k_z, images, config)
  params = stage.net.lazy_init(k_init, jax.ShapeDtypeStruct(z.shape, z.dtype))  # No forward pass.
  problem = {'z': z, 'images': images, 'maps': maps,
             'grad_target': losses.joint_gradient_target(images)}
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
  if config.output == 'last':
    return state.output
  return jnp.clip(optimize.ema_output(main_stage(config, channels), state), 0.0, 1.0)


decision_maps_jit = jax.jit(focus.decision_maps, static_argnums=1)


def decision_embedding(key, images: jnp.ndarray, raw_maps: jnp.ndarray, config: FusionConfig,
                       progress: optimize.ProgressFn | None = None):
  """The decision-embedding stage of one scene: (maps [N, H, W], optimize.StageReport), or the raw maps
  and None when config.mask_iters == 0. The maps are what the main stage's losses (and, with
  output_base='map_fusion', its base) use."""
  if config.mask_iters == 0:
    return raw_maps, None
  stage = mask_stage(config, images.shape[0])
  state, problem = call_one_off(init_mask_state, key, images, raw_maps, config=config)
  state, report = optimize.run_stage(stage, state, problem, config.mask_iters, config.chunk_size,
                                     progress, loop=config.loop, stop=config.stop_rule('mask'))
  return embedded_maps(state, config=config, num_inputs=images.shape[0]), report


# ---------------------------------------------------------------------------------------------------
# Plain deep-image-prior super-resolution of one image (a baseline: "fusion, then DIP").


@functools.lru_cache(maxsize=64)
def dip_stage(config: FusionConfig, channels: int) -> optimize.Stage:
  """Deep image prior SR (Ulyanov et al. 2018): the image SKIPnet of `config`, no fusion losses; the
  loss is the mean squared error between the Lanczos-2 downsampling of the output and the image."""
  net = config.image_net.build(channels, 'sigmoid', _dtype(config))
  s = config.scale

  def loss_fn(params, problem):
    out_hr = net.apply(params, problem['z'])
    mse = jnp.mean(jnp.square(resample.lanczos2_downsample(out_hr, s) - problem['image']))
    return mse, ({'total': mse}, out_hr)

  return optimize.Stage('dip', loss_fn, optax.adam(config.lr), config.ema_decay, net,
                        config.compiler_options())


@functools.partial(jax.jit, static_argnames='config')
def init_dip_state(key, image, config: FusionConfig):
  k_z, k_init = jax.random.split(key)
  h, w, c = image.shape
  stage = dip_stage(config, c)
  z = network_input(k_z, image[None], config)
  params = stage.net.lazy_init(k_init, jax.ShapeDtypeStruct(z.shape, z.dtype))
  params = initial_output_bias(params, image[None], config)
  s = config.scale
  return optimize.init_state(stage, params, (s * h, s * w, c)), {'z': z, 'image': image}


def dip_superresolve(image, config: FusionConfig = FusionConfig(), key=None,
                     progress: optimize.ProgressFn | None = None, iters: int | None = None):
  """Super-resolves one image [H, W, C] in [0, 1] by `config.scale` with a plain deep image prior
  (`config.iters` steps, or `iters`; the convergence stop of `config` applies). Returns
  (HR image as NumPy, optimize.StageReport)."""
  key = jax.random.key(0) if key is None else key
  x = jnp.asarray(np.asarray(image, np.float32))
  stage = dip_stage(config, x.shape[-1])
  state, problem = call_one_off(init_dip_state, key, x, config=config)
  state, report = optimize.run_stage(stage, state, problem, iters or config.iters, config.chunk_size,
                                     progress, loop=config.loop, stop=config.stop_rule('main'))
  out = state.output if config.output == 'last' else optimize.ema_output(stage, state)
  return np.asarray(jnp.clip(out, 0.0, 1.0)), report

# One-off programs (parameter initialisation) compiled at XLA's lowest backend optimisation level:
# XLA:CPU spends ~10 s optimising the initialisers' random-number code (threefry, truncated normal)
# for a run of a few milliseconds; at level 0 it compiles in ~1 s and gives bit-identical values
# (tests/test_fusion.py checks it). Keyed by function, static arguments and argument shapes.
_ONE_OFF_OPTIONS = {'xla_backend_optimization_level': 0}
_one_off_cache: collections.OrderedDict = collections.OrderedDict()


def call_one_off(fn, *args, **static):
  """fn(*args, **static) for a jitted `fn` with static keyword arguments, compiled cheaply on CPU."""
  if jax.default_backend() != 'cpu':
    return fn(*args, **static)
  key = (fn, tuple(sorted(static.items())), optimize._signature(args))  # pylint: disable=protected-access
  compiled = _one_off_cache.get(key)
  if compiled is None:
    compiled = fn.lower(*args, **static).compile(compiler_options=_ONE_OFF_OPTIONS)
    _one_off_cache[key] = compiled
    while len(_one_off_cache) > 64:
      _one_off_cache.popitem(last=False)
  return compiled(*args)


# ---------------------------------------------------------------------------------------------------
# The notebook entry point.


def fuse(images, scale: int | None = None, config: FusionConfig = FusionConfig(), key=None,
         progress: optimize.ProgressFn | None = optimize.log_progress,
         names: Sequence[str] | None = None) -> FusionResult:
  """Fuses N >= 2 registered images of one scene into one all-in-focus image at `scale` x their size.

  Args:
    images: sequence of N arrays [H, W, C] (or one [N, H, W, C] array), float in [0, 1], C = 1 or 3.
    scale: 1, 2 or 4; overrides `config.scale` when given.
    config: the FusionConfig (iterations, learning rates, networks, losses, focus measure...).
    key: a jax PRNG key (default `jax.random.key(0)`): same key, inputs, config and backend give
      bit-identical results.
    progress: called between chunks with (stage, done, total, elapsed_s, terms); None for silence.
    names: optional names of the inputs (file paths) used in error messages.

  Returns:
    A FusionResult (NumPy arrays).
  """
  if scale is not None and scale != config.scale:
    config = config.replace(scale=scale)
  if key is None:
    key = jax.random.key(0)
  x = validate_images(list(images), config, names)  # [N, H, W, C]
  n, h, w, c = x.shape
  k_mask, k_main = jax.random.split(key)
  timings = {}

  t0 = time.perf_counter()
  raw_maps = decision_maps_jit(x, config.doublereblur)
  raw_maps.block_until_ready()
  timings['doublereblur_s'] = time.perf_counter() - t0
  logging.info('DoubleReblur decision maps for %d inputs of %dx%d in %.1f s', n, h, w,
               timings['doublereblur_s'])

  history = {}
  maps, report = decision_embedding(k_mask, x, raw_maps, config, progress)
  if report is not None:
    history['mask'] = report.history
    timings.update(mask_s=report.seconds, mask_compile_s=report.compile_seconds,
                   mask_steps_per_s=report.steps_per_second, mask_steps=report.steps)

  stage = main_stage(config, c)
  state, problem = call_one_off(init_main_state, k_main, x, maps, config=config)
  state, report = optimize.run_stage(stage, state, problem, config.iters, config.chunk_size, progress,
                                     loop=config.loop, stop=config.stop_rule('main'))
  history['main'] = report.history
  timings.update(main_s=report.seconds, main_compile_s=report.compile_seconds,
                 main_steps_per_s=report.steps_per_second, main_steps=report.steps)
  fused = final_output(state, config=config, channels=c)
  fused_lr = resample.lanczos2_downsample(fused, config.scale)
  timings['total_s'] = time.perf_counter() - t0
  return FusionResult(np.asarray(fused), np.asarray(fused_lr), np.asarray(raw_maps), np.asarray(maps),
                      np.asarray(problem['z']), history, timings)


# ---------------------------------------------------------------------------------------------------
# Memory: estimated before anything is compiled, so an image too large for the machine is refused with
# a clear message instead of the process being killed mid-run.

# Bytes kept per (channel x pixel) of feature maps during one training step, relative to float32
# storage: the forward activations kept for the backward pass (conv, BN and LeakyReLU outputs, reflect
# padded copies) and the backward temporaries. Calibrated against XLA's compiled memory analysis
# (temp + arguments) of the main step on CPU at 64^2..128^2 inputs, x2 (tests/test_fusion.py and
# experiments/bench_step.py check the estimate against it).
ACTIVATION_COPIES = 7.5
FIXED_BYTES = 8 * 2 ** 20
# On a CPU the process holds more than the step's buffers: the other stage's state and executable,
# host copies of inputs and outputs, the compiler's workspace. Measured growth of peak RSS over a
# 32x32 run (docs/benchmarks.md): 1.43x the estimate at 128x128 input x2, 1.35x at 520x520 x2.
# `check_memory` compares free host memory with estimate x HOST_FACTOR.
HOST_FACTOR = 1.45


def _feature_channels_per_pixel(net) -> float:
  """Sum over scales of the feature channels stored per full-resolution pixel."""
  total = 0.0
  for i, (d, u, s) in enumerate(zip(net.channels_down, net.channels_up, net.channels_skip)):
    total += (d + u + s) / 4.0 ** i
  return total


@functools.lru_cache(maxsize=64)
def _param_count(net_cfg, cin: int, cout: int) -> int:
  """Parameter count of a SKIPnet (independent of the image size), from shapes only."""
  m = 2 ** len(net_cfg.channels_down)
  params = jax.eval_shape(net_cfg.build(cout).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((m, m, cin), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _padded(n: int, depth: int) -> int:
  m = 2 ** depth
  return -(-n // m) * m


def estimate_memory(height: int, width: int, num_inputs: int, channels: int,
                    config: FusionConfig) -> dict:
  """Estimated peak device memory (bytes) of each stage for one scene of N inputs [H, W, C].

  Returns {'mask': bytes, 'main': bytes, 'peak': bytes (the larger stage), 'host_peak': bytes (what a
  CPU process adds to its resident set: HOST_FACTOR x peak), 'bytes_per_output_pixel': ...}.
  """
  s = config.scale
  act_bytes = 2 if config.compute_dtype == 'bfloat16' else 4
  out = {}

  def stage_bytes(net_cfg, h, w, cin, cout, lr_pixels, images_kept=3):
    depth = len(net_cfg.channels_down)
    px = _padded(h, depth) * _padded(w, depth)
    n_params = _param_count(net_cfg, cin, cout)
    per_px = ACTIVATION_COPIES * act_bytes * _feature_channels_per_pixel(net_cfg)
    # Inputs and maps; z, the output and its EMA at the output size (and the base's logit).
    scene = 4 * (num_inputs * lr_pixels * (channels + 1) + images_kept * h * w * max(cin, cout))
    return int(FIXED_BYTES + 4 * 4 * n_params + per_px * px + scene), per_px

  cz = config.noise_channels if config.input_type == 'noise' else channels
  out['main'], per_px = stage_bytes(config.image_net, s * height, s * width, cz, channels,
                                    height * width, 3 + (config.output_base != 'none'))
  out['mask'] = 0
  if config.mask_iters > 0:
    out['mask'], _ = stage_bytes(config.mask_net, height, width, cz,
                                 embedding.mask_channels(num_inputs), height * width)
  out['peak'] = max(out['main'], out['mask'])
  out['host_peak'] = int(HOST_FACTOR * out['peak'])  # What a CPU process adds to its resident set.
  out['bytes_per_output_pixel'] = per_px
  return out


MEMORY_BUDGET_ENV = 'DFP_JAX_MEMORY_BUDGET'  # Bytes: a cap on what the memory checks plan for.


def available_memory(device=None) -> int | None:
  """Bytes the computation may still use on `device` (default: the first device), or None.

  The environment variable DFP_JAX_MEMORY_BUDGET (bytes, e.g. 8e9) caps it: on a shared machine,
  leave room for other jobs.
  """
  avail = _device_available_memory(device)
  cap = os.environ.get(MEMORY_BUDGET_ENV)
  if cap:
    raw = cap
    try:
      cap = int(float(raw))
      if cap <= 0:
        raise ValueError
    except (ValueError, OverflowError):
      raise InputError(f'{MEMORY_BUDGET_ENV}={raw!r}: expected a positive number of bytes, e.g. 8e9') from None
    avail = cap if avail is None else min(avail, cap)
  return avail


def _device_available_memory(device=None) -> int | None:
  device = device or jax.devices()[0]
  if device.platform != 'cpu':
    try:
      stats = device.memory_stats()
      return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
    except Exception:  # pylint: disable=broad-except
      return None
  avail = None
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          avail = int(line.split()[1]) * 1024
  except OSError:
    pass
  for limit_file, usage_file in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                                 ('/sys/fs/cgroup/memory/memory.limit_in_bytes',
                                  '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
    try:
      with open(limit_file) as f:
        raw = f.read().strip()
      if raw != 'max' and int(raw) < 2 ** 60:
        with open(usage_file) as f:
          used = int(f.read().strip())
        cg = int(raw) - used
        avail = cg if avail is None else min(avail, cg)
      break
    except (OSError, ValueError):
      continue
  return avail


def check_memory(height: int, width: int, num_inputs: int, channels: int, config: FusionConfig,
                 available: int | None = None, name: str = 'inputs', headroom: float = 0.9) -> dict:
  """Raises MemoryBudgetError if the estimate exceeds `headroom` x the available memory; the message
  gives the estimate and the largest input size of the same aspect ratio that fits."""
  from dfp_jax.errors import MemoryBudgetError, format_bytes  # pylint: disable=g-import-not-at-top
  est = estimate_memory(height, width, num_inputs, channels, config)
  if available is None:
    available = available_memory()
  est['available'] = available
  key = 'host_peak' if jax.default_backend() == 'cpu' else 'peak'
  if available is None or est[key] <= headroom * available:
    return est
  budget = headroom * available
  # The estimate grows with the pixel count: shrink both sides by the same factor until it fits.
  lo, hi = 0.0, 1.0
  for _ in range(30):
    mid = (lo + hi) / 2
    h2, w2 = max(int(height * mid), 1), max(int(width * mid), 1)
    if estimate_memory(h2, w2, num_inputs, channels, config)[key] <= budget:
      lo = mid
    else:
      hi = mid
  h2, w2 = int(height * lo), int(width * lo)
  if size_shortfall(config, h2, w2):  # Nothing usable fits: the budget is below the runtime's needs.
    capped = os.environ.get(MEMORY_BUDGET_ENV)
    try:
      binding = bool(capped) and int(float(capped)) == available  # The cap, not the machine, limits.
    except (ValueError, OverflowError):
      binding = False
    fits = (f'no input of this shape fits (each side must be at least {min_input_size(config)} pixels); '
            + (f'raise {MEMORY_BUDGET_ENV} (now {capped})' if binding else 'free some memory first'))
  else:
    fits = (f'the largest input of this shape that fits is about {h2}x{w2} (crop or downsample the '
            'inputs, lower --scale, or use --compute_dtype=bfloat16 on an accelerator)')
  raise MemoryBudgetError(f'{name}: {height}x{width} at x{config.scale} needs about '
                          f'{format_bytes(est[key])} but only {format_bytes(available)} is available; {fits}')
