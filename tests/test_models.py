"""Tests of dfp_jax.models (SKIPnet): parameter counts by hand, shapes, BatchNorm, vmap, jit.

The full-size networks are only traced abstractly (`jax.eval_shape`), never run; everything that runs
uses a depth-2 network with 3x3 kernels (min size 4) on images of at most 16 x 24. Float32 tolerances:
1e-5 for the BatchNorm against float64 NumPy and flax, 1e-5 between vmap and a loop, jit and no jit.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from dfp_jax import models

# Compile time dominates these small tests on CPU (as in flax's imagenet tests).
jax.config.update('jax_disable_most_optimizations', True)

TINY = models.NetConfig(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2), kernel_size=3)
ATOL = 1e-5

# One module-level network with jitted init / apply: eager (op-by-op) execution of even a tiny SKIPnet
# costs seconds on CPU, a jitted one compiles in about one second per shape.
NET = TINY.build(3)
INIT = jax.jit(NET.init)
APPLY = jax.jit(NET.apply)


def _rand(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def _hand_count(cfg: models.NetConfig, cin: int, cout: int) -> int:
  """Parameters of a SKIPnet from the architecture of the models docstring.

  A conv_k (k x k) from a to b channels has k*k*a*b + b parameters (two 3x3 convs with `double_3x3`:
  9*a*b + b + 9*b*b + b), a 1x1 conv a*b + b, a BatchNorm of c channels 2*c (scale, offset). Scale i
  with input channels x_i (x_0 = C_in, x_{i+1} = down_i):
    encoder  conv_k(x_i -> down_i, stride 2) BN, conv_k(down_i -> down_i) BN
    skip     conv1x1(x_i -> skip_i) BN                       (if skip_i > 0)
    concat   BN(skip_i + e_i), e_i = up_{i+1} (deeper output) or down_i at the last scale
    decoder  conv_k(skip_i + e_i -> up_i) BN, conv1x1(up_i -> up_i) BN
  Head: conv1x1(up_0 -> C_out).
  """
  k = cfg.kernel_size

  def conv_k(a, b):
    if cfg.double_3x3:
      return 9 * a * b + b + 9 * b * b + b
    return k * k * a * b + b

  def conv_1(a, b):
    return a * b + b

  def bn(c):
    return 2 * c

  depth = len(cfg.channels_down)
  total = 0
  x = cin
  for i in range(depth):
    down, up, skip = cfg.channels_down[i], cfg.channels_up[i], cfg.channels_skip[i]
    total += conv_k(x, down) + bn(down) + conv_k(down, down) + bn(down)
    if skip > 0:
      total += conv_1(x, skip) + bn(skip)
    deeper = cfg.channels_up[i + 1] if i + 1 < depth else down
    cat = skip + deeper
    total += bn(cat) + conv_k(cat, up) + bn(up) + conv_1(up, up) + bn(up)
    x = down
  return total + conv_1(cfg.channels_up[0], cout)


def _abstract_count(net, cin, size=32) -> int:
  shapes = jax.eval_shape(net.init, jax.random.key(0), jax.ShapeDtypeStruct((size, size, cin), jnp.float32))
  return models.count_params(shapes)


# ------------------------------------------------------------------------------------ parameter counts


def test_image_net_has_the_authors_parameter_count():
  net = models.IMAGE_NET.build(3)
  assert net.depth == 5 and net.min_size == 32
  assert _abstract_count(net, 3) == 1_550_755  # The DFP authors' published count.
  assert _hand_count(models.IMAGE_NET, 3, 3) == 1_550_755  # The hand formula agrees with the paper.


@pytest.mark.parametrize('cfg,cin,cout', [
    (models.MASK_NET, 3, 1),
    (models.MASK_NET, 1, 1),
    (models.MASK_NET, 3, 4),  # N = 4 inputs: 4 logits.
    (models.NetConfig(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(0, 2), kernel_size=3), 3, 1),
    (TINY, 3, 3),
    (models.NetConfig(channels_down=(4, 6, 8), channels_up=(5, 7, 9), channels_skip=(3, 0, 2),
                      kernel_size=5), 2, 3),
    (models.NetConfig(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2), double_3x3=True), 3, 3),
])
def test_parameter_count_by_hand(cfg, cin, cout):
  net = cfg.build(cout)
  assert _abstract_count(net, cin) == _hand_count(cfg, cin, cout)


def test_mask_net_count_value():
  # Spelled out for the default mask net (skip [0, 0, 0, 4, 4]), 3 input channels, 1 output:
  # the image net's count minus its 3 missing skip branches (1x1 conv + BN) and the smaller concats.
  diff = 0
  for x in (3, 8, 16):  # Input channels of scales 0, 1, 2.
    diff += (x * 4 + 4) + 2 * 4  # skip conv + BN
    diff += 2 * 4  # concat BN shrinks by 4 channels
  for up in (8, 16, 32):
    diff += 5 * 5 * 4 * up  # decoder conv_k (5 x 5) input shrinks by 4 channels
  head_diff = (8 * 3 + 3) - (8 * 1 + 1)
  expected = 1_550_755 - diff - head_diff
  assert _abstract_count(models.MASK_NET.build(1), 3) == expected == _hand_count(models.MASK_NET, 3, 1)


# ------------------------------------------------------------------------------------ shapes and sizes


def test_output_shape_odd_size_and_range():
  assert NET.min_size == 4
  z = jnp.asarray(_rand((13, 21, 3), seed=1))
  params = INIT(jax.random.key(0), z)
  out = np.asarray(APPLY(params, z))
  assert out.shape == (13, 21, 3) and out.dtype == np.float32
  assert np.all(out > 0) and np.all(out < 1)
  assert np.all(np.isfinite(out))
  # Reflect padding to the next multiple of 4 (16 x 24) then cropping: running the net on the padded
  # input gives the same values on the original region (BatchNorm statistics include the padding).
  zp = np.pad(np.asarray(z), ((0, 3), (0, 3), (0, 0)), mode='reflect')
  out_p = np.asarray(APPLY(params, jnp.asarray(zp)))
  assert out_p.shape == (16, 24, 3)
  np.testing.assert_allclose(out_p[:13, :21], out, rtol=0, atol=ATOL)
  # A batched [B, H, W, C] input keeps its batch axis.
  assert jax.eval_shape(NET.apply, params, z[None]).shape == (1, 13, 21, 3)


def test_multiple_of_min_size_and_reflect_padded_copy():
  z = jnp.asarray(_rand((12, 12, 3), seed=2))
  params = INIT(jax.random.key(1), z)
  out = APPLY(params, z)
  assert out.shape == (12, 12, 3)
  zp = jnp.pad(z, ((2, 2), (2, 2), (0, 0)), mode='reflect')
  out_p = APPLY(params, zp)
  assert out_p.shape == (16, 16, 3)
  chex.assert_tree_all_finite((out, out_p))
  # 'none' gives the logits: the sigmoid of the logits net is the sigmoid net (same parameters).
  logits = TINY.build(3, output_activation='none')
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(jax.jit(logits.apply)(params, z))),
                             np.asarray(out), rtol=0, atol=1e-6)


def test_too_small_input_raises():
  net = TINY.build(3)
  with pytest.raises(ValueError, match='smaller'):
    net.init(jax.random.key(0), jnp.zeros((3, 8, 3)))
  with pytest.raises(ValueError, match='smaller'):
    net.init(jax.random.key(0), jnp.zeros((8, 3, 3)))
  full = models.IMAGE_NET.build(3)
  with pytest.raises(ValueError):
    jax.eval_shape(full.init, jax.random.key(0), jax.ShapeDtypeStruct((31, 64, 3), jnp.float32))


def test_config_errors():
  with pytest.raises(ValueError, match='same length'):
    models.NetConfig(channels_down=(4, 8), channels_up=(4,), channels_skip=(2, 2)).build(3)
  with pytest.raises(ValueError, match='same length'):
    models.SkipNet(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2,))
  with pytest.raises(ValueError, match='odd'):
    models.NetConfig(channels_down=(4,), channels_up=(4,), channels_skip=(2,), kernel_size=4).build(3)
  with pytest.raises(ValueError, match='upsample'):
    models.NetConfig(channels_down=(4,), channels_up=(4,), channels_skip=(2,), upsample='cubic').build(3)
  with pytest.raises(ValueError, match='output_activation'):
    TINY.build(3, output_activation='tanh')
  with pytest.raises(ValueError, match='strided_conv'):
    models.NetConfig(strided_conv='fft')


def _conv_float64(x, w, stride):
  """VALID NHWC/HWIO convolution (cross-correlation) in float64 NumPy, by its definition."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  n, h, wd, _ = x.shape
  kh, kw, _, f = w.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, oh, ow, f))
  for a in range(kh):
    for b in range(kw):
      patch = x[:, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride, :]
      out += patch @ w[a, b]
  return out


@pytest.mark.parametrize('k,h,w,c,f', [(5, 20, 12, 3, 4), (3, 8, 14, 5, 2), (1, 6, 6, 2, 3), (4, 10, 8, 2, 2)])
def test_space_to_depth_conv_matches_float64_strided_conv(k, h, w, c, f):
  x = _rand((2, h, w, c), seed=k)
  kern = _rand((k, k, c, f), seed=k + 1) - 0.5
  dn = ('NHWC', 'HWIO', 'NHWC')
  got = np.asarray(models.space_to_depth_conv(jnp.asarray(x), jnp.asarray(kern), (2, 2), 'VALID',
                                              dimension_numbers=dn))
  want = _conv_float64(x, kern, 2)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_space_to_depth_conv_passes_other_cases_through():
  x = jnp.asarray(_rand((1, 9, 8, 2), seed=1))  # Odd height: no space-to-depth.
  kern = jnp.asarray(_rand((3, 3, 2, 2), seed=2))
  dn = ('NHWC', 'HWIO', 'NHWC')
  for stride in ((2, 2), (1, 1)):
    got = models.space_to_depth_conv(x, kern, stride, 'VALID', dimension_numbers=dn)
    want = jax.lax.conv_general_dilated(x, kern, stride, 'VALID', dimension_numbers=dn)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_strided_conv_forms_share_parameters_and_output():
  """'space_to_depth' and 'direct' SKIPnets: the same parameter tree, the same output (1e-5), and the
  same gradients for every parameter whose gradient is not zero up to rounding (conv biases feeding a
  BatchNorm have a true gradient of 0)."""
  z = jnp.asarray(_rand((8, 12, 3), seed=5))
  nets = {s: dataclasses.replace(TINY, strided_conv=s).build(3) for s in ('space_to_depth', 'direct')}
  p_s2d = jax.jit(nets['space_to_depth'].init)(jax.random.key(0), z)
  p_dir = jax.jit(nets['direct'].init)(jax.random.key(0), z)
  chex.assert_trees_all_equal(p_s2d, p_dir)
  out = {s: np.asarray(jax.jit(n.apply)(p_s2d, z)) for s, n in nets.items()}
  np.testing.assert_allclose(out['space_to_depth'], out['direct'], atol=1e-5)
  grads = {s: jax.jit(jax.grad(lambda p, n=n: jnp.sum(n.apply(p, z) ** 2)))(p_s2d) for s, n in nets.items()}
  for a, b in zip(jax.tree.leaves(grads['space_to_depth']), jax.tree.leaves(grads['direct'])):
    scale = float(np.max(np.abs(np.asarray(b))))
    if scale > 1e-3:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale)


@pytest.mark.parametrize('cfg', [
    models.NetConfig(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2), double_3x3=True),
    models.NetConfig(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2), kernel_size=3,
                     upsample='nearest'),
])
def test_variants_build_and_run(cfg):
  net = cfg.build(3)
  z = jnp.asarray(_rand((8, 12, 3), seed=3))
  params = jax.jit(net.init)(jax.random.key(0), z)
  out = np.asarray(jax.jit(net.apply)(params, z))
  assert out.shape == (8, 12, 3)
  assert np.all(out > 0) and np.all(out < 1)
  if cfg.double_3x3:
    kernels = [x.shape for x in jax.tree.leaves(params) if x.ndim == 4 and x.shape[0] > 1]
    assert all(s[:2] == (3, 3) for s in kernels)


def test_init_is_torch_default_and_biases_zero():
  params = INIT(jax.random.key(0), jnp.zeros((8, 12, 3)))['params']
  kernel = np.asarray(params['SkipLevel_0']['ConvK_2']['Conv_0']['kernel'])  # 3 x 3 x (2 + 8) x 4
  assert kernel.shape == (3, 3, 10, 4)
  bound = 1.0 / np.sqrt(3 * 3 * 10)
  assert np.all(np.abs(kernel) <= bound) and np.abs(kernel).max() > 0.9 * bound
  # Uniform on [-b, b]: variance b^2 / 3.
  np.testing.assert_allclose(kernel.var(), bound ** 2 / 3, rtol=0.15)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    if 'BatchNorm' in name and name.endswith("['scale']"):
      np.testing.assert_array_equal(np.asarray(leaf), 1.0)


# ------------------------------------------------------------------------------------ BatchNorm


def _np_batchnorm(x, scale, bias, eps=1e-5):
  x = x.astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axis=axes)
  var = ((x - mean) ** 2).mean(axis=axes)  # biased
  return (x - mean) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize('shape', [(7, 9, 5), (1, 6, 4, 3)])
def test_current_stats_batchnorm_matches_numpy_and_flax(shape):
  x = 3.0 * _rand(shape, seed=5) - 1.0
  bn = models.CurrentStatsBatchNorm()
  variables = bn.init(jax.random.key(0), jnp.asarray(x))
  assert set(variables) == {'params'}  # No batch_stats: nothing mutable.
  c = shape[-1]
  rng = np.random.default_rng(6)
  scale = rng.normal(size=c).astype(np.float32)
  bias = rng.normal(size=c).astype(np.float32)
  params = {'params': {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)}}
  out = np.asarray(bn.apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(out, _np_batchnorm(x, scale, bias), rtol=0, atol=ATOL)
  # Statistics per channel over all other axes: with unit scale, zero bias each channel has mean 0
  # and (biased) variance var / (var + eps).
  ones = {'params': {'scale': jnp.ones(c), 'bias': jnp.zeros(c)}}
  unit = np.asarray(bn.apply(ones, jnp.asarray(x)), np.float64)
  axes = tuple(range(len(shape) - 1))
  np.testing.assert_allclose(unit.mean(axis=axes), 0.0, atol=1e-6)
  v = x.astype(np.float64).var(axis=axes)
  np.testing.assert_allclose(unit.var(axis=axes), v / (v + 1e-5), atol=1e-5)
  # Flax's BatchNorm in training mode on the same input gives the same output.
  flax_bn = nn.BatchNorm(use_running_average=False, epsilon=1e-5)
  fvars = flax_bn.init(jax.random.key(0), jnp.asarray(x))
  fvars = {'params': {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)},
           'batch_stats': fvars['batch_stats']}
  fout, _ = flax_bn.apply(fvars, jnp.asarray(x), mutable=['batch_stats'])
  np.testing.assert_allclose(out, np.asarray(fout), rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------------ vmap and jit


def test_vmap_over_scenes_equals_loop_and_is_independent():
  zs = jnp.asarray(_rand((3, 8, 12, 3), seed=7))
  keys = jax.random.split(jax.random.key(3), 3)
  params = [INIT(k, z) for k, z in zip(keys, zs)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
  apply = jax.jit(jax.vmap(NET.apply))
  out = np.asarray(apply(stacked, zs))
  assert out.shape == (3, 8, 12, 3)
  for i in range(3):
    np.testing.assert_allclose(out[i], np.asarray(APPLY(params[i], zs[i])), rtol=0, atol=ATOL)
  # Different parameters give different outputs (the param sets really differ).
  assert np.abs(out[0] - out[1]).max() > 1e-3
  # Changing scenes 1 and 2 leaves scene 0 unchanged: BatchNorm statistics are per scene.
  zs2 = zs.at[1:].set(jnp.asarray(_rand((2, 8, 12, 3), seed=8)) * 5.0)
  out2 = np.asarray(apply(stacked, zs2))
  np.testing.assert_allclose(out2[0], out[0], rtol=0, atol=1e-6)
  assert np.abs(out2[1] - out[1]).max() > 1e-3


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_apply_jit_and_no_jit_agree(self):
    z = jnp.asarray(_rand((8, 12, 3), seed=9))
    params = INIT(jax.random.key(2), z)
    ref = np.asarray(APPLY(params, z))
    out = self.variant(NET.apply)(params, z)
    chex.assert_shape(out, (8, 12, 3))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=ATOL)

  @chex.variants(with_jit=True)  # The eager gradient takes ~15 s on CPU; jit only.
  def test_gradient_finite(self):
    z = jnp.asarray(_rand((8, 12, 3), seed=10))
    params = INIT(jax.random.key(4), z)

    def loss(p):
      return jnp.mean(NET.apply(p, z))

    grads = self.variant(jax.grad(loss))(params)
    chex.assert_trees_all_equal_shapes(grads, params)
    chex.assert_tree_all_finite(grads)
    # The head bias gets a nonzero gradient (the output depends on it through the sigmoid).
    assert float(jnp.abs(grads['params']['head']['bias']).max()) > 0


if __name__ == '__main__':
  absltest.main()


# ---------------------------------------------------------------------------------------------------
# Every prior (models.PRIORS) through the same contract.

TINY_PRIORS = {'skipnet': TINY, 'deep_decoder': models.DeepDecoderConfig(channels=6, levels=2)}


@pytest.mark.parametrize('name', models.PRIORS)
def test_every_prior_meets_the_contract(name):
  """z [H, W, C_in] -> [H, W, C] in (0, 1) for any size from its minimum (odd sizes too); jitted ==
  eager; vmapped over scenes == a loop; deterministic from the key; depth and memory stated."""
  cfg = TINY_PRIORS[name]
  assert set(TINY_PRIORS) == set(models.PRIORS)
  net = cfg.build(3)
  m = 2 ** cfg.depth
  for h, w in ((m, m), (m + 3, 2 * m + 1)):
    z = jax.random.uniform(jax.random.key(1), (h, w, 5))
    params = net.init(jax.random.key(0), z)
    out = net.apply(params, z)
    chex.assert_shape(out, (h, w, 3))
    assert float(out.min()) > 0 and float(out.max()) < 1
    chex.assert_trees_all_close(jax.jit(net.apply)(params, z), out, atol=1e-6)
    chex.assert_trees_all_equal(net.apply(net.init(jax.random.key(0), z), z), out)
  zs = jax.random.uniform(jax.random.key(2), (3, m, m, 5))
  ps = jax.vmap(lambda k, zz: net.init(k, zz))(jax.random.split(jax.random.key(3), 3), zs)
  batched = jax.vmap(net.apply)(ps, zs)
  for i in range(3):
    chex.assert_trees_all_close(batched[i], net.apply(jax.tree.map(lambda x: x[i], ps), zs[i]), atol=1e-6)
  assert cfg.feature_channels_per_pixel() > 0
  with pytest.raises(ValueError, match='smaller than'):
    net.init(jax.random.key(0), jnp.zeros((m - 1, m, 5)))


def test_deep_decoder_is_small_and_its_head_is_named_for_the_output_base():
  cfg = models.DeepDecoderConfig(channels=64, levels=5)
  params = cfg.build(3).init(jax.random.key(0), jnp.zeros((64, 64, 3)))
  # Per block a 1x1 convolution (k (k_in + 1)) and a normalisation (2 k); the head 3 (k + 1).
  k = 64
  want = (3 * k + k) + 4 * (k * k + k) + 5 * 2 * k + (k * 3 + 3)
  assert models.count_params(params) == want
  assert 'head' in params['params']  # fusion's output_base scales it: the same name as SKIPnet's.
