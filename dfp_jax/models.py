"""The priors: SKIPnet, the deep-image-prior encoder-decoder with skip connections of the papers
(DFP_METHOD.md section 3), and the Deep Decoder (`DeepDecoder`, `--prior=deep_decoder`). A prior is a
Flax module mapping the fixed input z [H, W, C_in] to the image [H, W, C]; its configuration
(`NetConfig`, `DeepDecoderConfig`) builds it (`build`) and states its depth and activation memory.

API choice: Flax Linen, used purely functionally (`init` / `apply` on plain parameter dicts), the
flax-imagenet pattern: `jax.vmap`, `lax.scan` and `jax.jit` apply to the parameters directly.

Normalisation: `CurrentStatsBatchNorm` is BatchNorm that *always* normalises with the statistics of the
current forward pass (mean and biased variance over all positions of the one image, per channel), with
a learnable scale and offset: exactly PyTorch's BatchNorm2d in training mode for a batch of one image,
which is how deep image prior and DFP run it at every step, including the final output. It keeps no
running averages, so the network has no mutable state at all (no `batch_stats` collection to carry).
Under `jax.vmap` over independent scenes each scene's statistics stay its own (there is no axis_name).

Architecture, for scale i = 0 .. D-1 with input x_i (the module applies it recursively):
  skip_i   = LReLU(BN(conv1x1(x_i)))                            (if skip channels > 0)
  deeper_i = LReLU(BN(conv_k(LReLU(BN(conv_k,stride 2(x_i))))))  (encoder: stride 2 first, as the code)
  deeper_i = up2(level_{i+1}(deeper_i)) (or up2(deeper_i) at the last scale)
  y_i      = BN(concat(skip_i, deeper_i))
  y_i      = LReLU(BN(conv1x1(LReLU(BN(conv_k(y_i))))))        (decoder)
  out      = sigmoid(conv1x1(y_0))
conv_k is reflect-pad + k x k convolution (or two 3x3 convolutions when `double_3x3`), LReLU slope 0.2.
Stride-2 convolutions are computed by default as stride-1 convolutions on the space-to-depth input
(`space_to_depth_conv`; `strided_conv='direct'` for lax's strided form): the same parameters and the
same function, cheaper to differentiate on XLA:CPU.
Upsampling is x2 bilinear with half-pixel centres (`jax.image.resize` convention, PyTorch
`align_corners=False`; the authors' code uses `align_corners=True`), or nearest.

Initialisation follows PyTorch's default for convolution weights (uniform with bound 1/sqrt(fan_in), i.e.
variance scaling 1/3, fan_in, uniform); biases start at zero. With the paper's channels, 5x5 kernels,
3 input and 3 output channels the parameter count is 1,550,755, the authors' count (tested).

Sizes that are not multiples of 2^D are reflect-padded up to the next multiple and the output is cropped
back: never resized. Each side must be at least 2^D pixels (`min_size`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from dfp_jax import resample

torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class CurrentStatsBatchNorm(nn.Module):
  """BatchNorm over all but the last axis, always with the current pass's statistics."""
  epsilon: float = 1e-5  # As PyTorch's BatchNorm2d.

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=axes)
    var = jnp.mean(jnp.square(xf - mean), axis=axes)
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return ((xf - mean) * inv + bias).astype(x.dtype)


def space_to_depth_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` for NHWC / HWIO, with a stride-2 VALID convolution computed as a
  stride-1 one on the space-to-depth rearrangement of the input (same result up to rounding).

  A k x k stride-2 kernel is zero-padded to k' = k + (k mod 2) taps and regrouped into a
  (k'/2) x (k'/2) kernel over 4C channels, so that out[i] = sum_a x[2i + a] w[a] becomes
  sum_q xs[i + q] w'[q] with xs[j] = (x[2j], x[2j + 1]). Same parameters, same output; on XLA:CPU
  (jax 0.10) the stride-2 convolutions' gradients, computed as dilated convolutions, cost several
  times more than this form at the network's wide levels (docs/design.md "Runtime choices"). Anything else
  (other strides, padding, dilation, groups, odd sizes) goes to `lax.conv_general_dilated` as is.
  """
  plain = functools.partial(jax.lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                            dimension_numbers=dimension_numbers,
                            feature_group_count=feature_group_count, precision=precision, **kwargs)
  ones = (None, (1, 1), [1, 1])
  valid = isinstance(padding, str) and padding == 'VALID' or (
      not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding))
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  nhwc = dn == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  if not (tuple(window_strides) == (2, 2) and valid and lhs_dilation in ones and
          rhs_dilation in ones and feature_group_count == 1 and nhwc and lhs.ndim == 4 and
          lhs.shape[1] % 2 == 0 and lhs.shape[2] % 2 == 0):
    return plain()
  n, h, w, c = lhs.shape
  kh, kw, _, f = rhs.shape
  th, tw = kh + kh % 2, kw + kw % 2
  k = jnp.pad(rhs, ((0, th - kh), (0, tw - kw), (0, 0), (0, 0)))
  k = k.reshape(th // 2, 2, tw // 2, 2, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(th // 2, tw // 2, 4 * c, f)
  x = lhs.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
  return jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=precision, **kwargs)


STRIDED_CONVS = ('space_to_depth', 'direct')


class ConvK(nn.Module):
  """Reflect-padded k x k convolution (or two 3x3 ones), first one with the given stride."""
  features: int  # Output channels.
  kernel_size: int = 5  # Odd kernel size k.
  stride: int = 1  # Stride of the (first) convolution.
  double_3x3: bool = False  # Replace the k x k convolution by two 3x3 convolutions.
  dtype: jnp.dtype = jnp.float32  # Compute dtype of the convolution.
  strided_conv: str = 'space_to_depth'  # How a stride-2 convolution is computed (same result).

  @nn.compact
  def __call__(self, x):
    sizes = [3, 3] if self.double_3x3 else [self.kernel_size]
    for j, k in enumerate(sizes):
      p = k // 2
      if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
      stride = self.stride if j == 0 else 1
      impl = space_to_depth_conv if (stride == 2 and self.strided_conv == 'space_to_depth') else None
      x = nn.Conv(self.features, (k, k), strides=stride, padding='VALID',
                  kernel_init=torch_default_init, dtype=self.dtype, param_dtype=jnp.float32,
                  conv_general_dilated=impl)(x)
    return x


def _act(x, slope):
  return jnp.where(x >= 0, x, slope * x)


class SkipLevel(nn.Module):
  """One scale of the U: skip branch, encoder, deeper levels, upsampling, concat, decoder."""
  channels_down: Sequence[int]  # Encoder channels from this scale down.
  channels_up: Sequence[int]  # Decoder channels from this scale down.
  channels_skip: Sequence[int]  # Skip channels from this scale down (0: no skip).
  kernel_size: int = 5
  double_3x3: bool = False
  upsample: str = 'bilinear'
  negative_slope: float = 0.2
  dtype: jnp.dtype = jnp.float32
  strided_conv: str = 'space_to_depth'

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(ConvK, kernel_size=self.kernel_size, double_3x3=self.double_3x3,
                             dtype=self.dtype, strided_conv=self.strided_conv)
    act = functools.partial(_act, slope=self.negative_slope)
    bn = CurrentStatsBatchNorm
    d = act(bn()(conv(self.channels_down[0], stride=2)(x)))
    d = act(bn()(conv(self.channels_down[0])(d)))
    if len(self.channels_down) > 1:
      d = SkipLevel(self.channels_down[1:], self.channels_up[1:], self.channels_skip[1:],
                    self.kernel_size, self.double_3x3, self.upsample, self.negative_slope,
                    self.dtype, self.strided_conv)(d)
    d = resample.bilinear_up2(d) if self.upsample == 'bilinear' else resample.nearest_up2(d)
    if self.channels_skip[0] > 0:
      s = nn.Conv(self.channels_skip[0], (1, 1), kernel_init=torch_default_init, dtype=self.dtype,
                  param_dtype=jnp.float32)(x)
      s = act(bn()(s))
      d = jnp.concatenate([s, d], axis=-1)
    y = bn()(d)
    y = act(bn()(conv(self.channels_up[0])(y)))
    y = nn.Conv(self.channels_up[0], (1, 1), kernel_init=torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32)(y)
    return act(bn()(y))


class SkipNet(nn.Module):
  """SKIPnet mapping a fixed input z [H, W, C_in] to an image [H, W, out_channels] in (0, 1)."""
  out_channels: int = 3  # 3 for an RGB image, 1 for a grey image or a two-input mask.
  channels_down: Sequence[int] = (8, 16, 32, 64, 128)  # Encoder channels per scale (D = len).
  channels_up: Sequence[int] = (8, 16, 32, 64, 128)  # Decoder channels per scale.
  channels_skip: Sequence[int] = (4, 4, 4, 4, 4)  # Skip channels per scale (0 = none).
  kernel_size: int = 5  # n_d, odd.
  double_3x3: bool = False  # Two 3x3 convolutions in place of each k x k one.
  upsample: str = 'bilinear'  # 'bilinear' (half-pixel) or 'nearest'.
  negative_slope: float = 0.2  # LeakyReLU slope.
  output_activation: str = 'sigmoid'  # 'sigmoid' or 'none' (logits, for masks).
  dtype: jnp.dtype = jnp.float32  # Compute dtype of convolutions (parameters stay float32).
  # Stride-2 convolutions: 'space_to_depth' (a stride-1 convolution on the space-to-depth input,
  # faster on XLA:CPU) or 'direct' (lax's strided convolution). Same parameters, same output.
  strided_conv: str = 'space_to_depth'

  def __post_init__(self):
    if not (len(self.channels_down) == len(self.channels_up) == len(self.channels_skip)):
      raise ValueError('channels_down, channels_up and channels_skip must have the same length, got '
                       f'{self.channels_down}, {self.channels_up}, {self.channels_skip}')
    if self.kernel_size % 2 == 0:
      raise ValueError(f'kernel_size must be odd, got {self.kernel_size}')
    if self.upsample not in ('bilinear', 'nearest'):
      raise ValueError(f"upsample must be 'bilinear' or 'nearest', got '{self.upsample}'")
    if self.output_activation not in ('sigmoid', 'none'):
      raise ValueError(f"output_activation must be 'sigmoid' or 'none', got '{self.output_activation}'")
    if self.strided_conv not in STRIDED_CONVS:
      raise ValueError(f"strided_conv must be one of {STRIDED_CONVS}, got '{self.strided_conv}'")
    super().__post_init__()

  @property
  def depth(self) -> int:
    return len(self.channels_down)

  @property
  def min_size(self) -> int:
    """Smallest side length the network accepts: 2^D."""
    return 2 ** self.depth

  @nn.compact
  def __call__(self, z):
    """Args: z: [H, W, C_in] network input. Returns [H, W, out_channels]."""
    h, w = z.shape[-3], z.shape[-2]
    m = self.min_size
    if h < m or w < m:
      raise ValueError(f'input {h}x{w} is smaller than {m}x{m}, the minimum for depth {self.depth}')
    ph, pw = (-h) % m, (-w) % m
    x = z[None] if z.ndim == 3 else z
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='reflect').astype(self.dtype)
    y = SkipLevel(self.channels_down, self.channels_up, self.channels_skip, self.kernel_size,
                  self.double_3x3, self.upsample, self.negative_slope, self.dtype,
                  self.strided_conv)(x)
    y = nn.Conv(self.out_channels, (1, 1), kernel_init=torch_default_init, dtype=self.dtype,
                param_dtype=jnp.float32, name='head')(y)
    y = y.astype(jnp.float32)[:, :h, :w, :]
    if self.output_activation == 'sigmoid':
      y = jax.nn.sigmoid(y)
    return y[0] if z.ndim == 3 else y


@dataclasses.dataclass(frozen=True)
class NetConfig:
  """Hyperparameters of one SKIPnet (the image net or the mask net)."""
  channels_down: tuple = (8, 16, 32, 64, 128)  # Encoder channels per scale.
  channels_up: tuple = (8, 16, 32, 64, 128)  # Decoder channels per scale.
  channels_skip: tuple = (4, 4, 4, 4, 4)  # Skip channels per scale.
  kernel_size: int = dataclasses.field(default=5, metadata={'help': 'Convolution size n_d (odd).'})
  double_3x3: bool = dataclasses.field(default=False, metadata={
      'help': 'Two 3x3 convolutions in place of each n_d x n_d one.'})
  upsample: str = dataclasses.field(default='bilinear', metadata={
      'help': 'Decoder upsampling.', 'choices': ('bilinear', 'nearest')})
  strided_conv: str = dataclasses.field(default='space_to_depth', metadata={
      'help': "How the encoder's stride-2 convolutions are computed: as a stride-1 convolution on the "
              'space-to-depth input (faster on XLA:CPU) or directly; same parameters, same result up to '
              'rounding.', 'choices': STRIDED_CONVS})

  def __post_init__(self):
    if not (len(self.channels_down) == len(self.channels_up) == len(self.channels_skip)):
      raise ValueError('channels_down, channels_up and channels_skip must have the same length, got '
                       f'{self.channels_down}, {self.channels_up}, {self.channels_skip}')
    if len(self.channels_down) < 1:
      raise ValueError('a SKIPnet needs at least one scale')
    if min((*self.channels_down, *self.channels_up)) < 1 or min(self.channels_skip) < 0:
      raise ValueError(f'channels must be >= 1 and skip channels >= 0 at every scale, got '
                       f'{list(self.channels_down)}, {list(self.channels_up)}, skip {list(self.channels_skip)}')
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f'kernel_size must be a positive odd integer, got {self.kernel_size}')
    if self.upsample not in ('bilinear', 'nearest'):
      raise ValueError(f"upsample must be 'bilinear' or 'nearest', got '{self.upsample}'")
    if self.strided_conv not in STRIDED_CONVS:
      raise ValueError(f"strided_conv must be one of {STRIDED_CONVS}, got '{self.strided_conv}'")

  @property
  def depth(self) -> int:
    """Scales D: each side must be at least 2^D pixels."""
    return len(self.channels_down)

  def feature_channels_per_pixel(self) -> float:
    """Feature channels stored per full-resolution pixel, summed over the scales (memory estimate)."""
    return sum((d + u + s) / 4.0 ** i for i, (d, u, s) in enumerate(
        zip(self.channels_down, self.channels_up, self.channels_skip)))

  def build(self, out_channels: int, output_activation: str = 'sigmoid',
            dtype=jnp.float32) -> SkipNet:
    return SkipNet(out_channels=out_channels, channels_down=tuple(self.channels_down),
                   channels_up=tuple(self.channels_up), channels_skip=tuple(self.channels_skip),
                   kernel_size=self.kernel_size, double_3x3=self.double_3x3, upsample=self.upsample,
                   output_activation=output_activation, dtype=dtype, strided_conv=self.strided_conv)


IMAGE_NET = NetConfig()
MASK_NET = NetConfig(channels_skip=(0, 0, 0, 4, 4))


# ---------------------------------------------------------------------------------------------------
# A second prior: the Deep Decoder (Heckel & Hand, ICLR 2019).


class DeepDecoder(nn.Module):
  """Deep Decoder: a fixed coarse input is decoded by `levels` blocks of (1x1 convolution, x2 bilinear
  upsampling, ReLU, channel normalisation), then a 1x1 head and a sigmoid. No spatial convolutions
  and few parameters: the image is a combination of smooth upsampled feature maps, an inductive bias
  unlike SKIPnet's (its convolutions learn local texture).

  The coarse input is z (the same network input as SKIPnet's: the bicubic of the inputs' mean, or
  noise) average-pooled by 2^levels, so the module maps z [H, W, C_in] to [H, W, out_channels] like
  every prior here. Channel normalisation is `CurrentStatsBatchNorm` (the paper's: per channel over
  the image). Sizes that are not multiples of 2^levels are reflect-padded and cropped back.
  """
  out_channels: int = 3
  channels: int = 64  # Feature channels k of every block.
  levels: int = 5  # Upsampling blocks d; the coarse grid is 2^d times smaller than the image.
  output_activation: str = 'sigmoid'
  dtype: jnp.dtype = jnp.float32

  @property
  def min_size(self) -> int:
    return 2 ** self.levels

  @nn.compact
  def __call__(self, z):
    """Args: z: [H, W, C_in] network input. Returns [H, W, out_channels]."""
    h, w = z.shape[-3], z.shape[-2]
    m = self.min_size
    if h < m or w < m:
      raise ValueError(f'input {h}x{w} is smaller than {m}x{m}, the minimum for {self.levels} levels')
    x = z[None] if z.ndim == 3 else z
    x = jnp.pad(x, ((0, 0), (0, (-h) % m), (0, (-w) % m), (0, 0)), mode='reflect')
    n, hp, wp, c = x.shape
    x = x.reshape(n, hp // m, m, wp // m, m, c).mean(axis=(2, 4)).astype(self.dtype)
    conv = functools.partial(nn.Conv, kernel_size=(1, 1), kernel_init=torch_default_init,
                             dtype=self.dtype, param_dtype=jnp.float32)
    for _ in range(self.levels):
      x = resample.bilinear_up2(conv(self.channels)(x))
      x = CurrentStatsBatchNorm()(jax.nn.relu(x))
    y = conv(self.out_channels, name='head')(x).astype(jnp.float32)[:, :h, :w, :]
    if self.output_activation == 'sigmoid':
      y = jax.nn.sigmoid(y)
    return y[0] if z.ndim == 3 else y


@dataclasses.dataclass(frozen=True)
class DeepDecoderConfig:
  """Hyperparameters of the Deep Decoder prior (`--prior=deep_decoder`)."""
  channels: int = dataclasses.field(default=64, metadata={
      'flag': 'dd_channels', 'help': 'Deep Decoder: feature channels of every block.'})
  levels: int = dataclasses.field(default=5, metadata={
      'flag': 'dd_levels', 'help': 'Deep Decoder: upsampling blocks (each side needs 2^levels pixels).'})

  def __post_init__(self):
    if self.channels < 1 or not 1 <= self.levels <= 12:
      raise ValueError(f'Deep Decoder channels must be >= 1 and levels in [1, 12], got '
                       f'{self.channels}, {self.levels}')

  @property
  def depth(self) -> int:
    return self.levels

  def feature_channels_per_pixel(self) -> float:
    """Feature channels stored per output pixel over the blocks (each block's output is 4x larger than
    its input, so the last block dominates; conv, upsample, ReLU and norm outputs are kept)."""
    return sum(3 * self.channels / 4.0 ** i for i in range(self.levels))

  def build(self, out_channels: int, output_activation: str = 'sigmoid', dtype=jnp.float32) -> DeepDecoder:
    return DeepDecoder(out_channels=out_channels, channels=self.channels, levels=self.levels,
                       output_activation=output_activation, dtype=dtype)


PRIORS = ('skipnet', 'deep_decoder')


def with_output_bias(params, value: jnp.ndarray):
  """`params` of a SkipNet with the head's bias replaced by `value` [out_channels] (a new tree)."""
  inner = dict(params['params'])
  inner['head'] = {**inner['head'], 'bias': jnp.asarray(value, inner['head']['bias'].dtype)}
  return {**params, 'params': inner}


def sigmoid_bias_for_mean(mean: jnp.ndarray, eps: float = 1e-3) -> jnp.ndarray:
  """logit(mean), the pre-activation at which a sigmoid head outputs `mean` (clipped to [eps, 1 - eps])."""
  m = jnp.clip(mean, eps, 1.0 - eps)
  return jnp.log(m) - jnp.log1p(-m)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
