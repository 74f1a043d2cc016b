"""One DFP optimisation step in PyTorch next to dfp_jax's own step, timed side by side.

  python experiments/bench_torch.py --sizes=128 --stages=main,mask --json=outputs/bench_torch.json
  # The fair figure: each framework alone, in alternating processes.
  for r in 1 2 3; do for fw in jax torch; do
    python experiments/bench_torch.py --nocheck --frameworks=$fw --json=outputs/bench_torch_${fw}_$r.json
  done; done

Issue 6 asks for the main step at 128x128 input, x2, to be at least 1.5x faster than the authors'
PyTorch step measured side by side on the same machine. Their code is not available here, so this
script ports dfp_jax's exact computation to PyTorch (eager, NCHW, float32): the SKIPnet of
`dfp_jax.models` (same layers, same parameter count, weights copied from the Flax parameters), the
losses of `fusion.main_stage` and `fusion.mask_stage`, Adam with the same hyper-parameters and the
output EMA of `optimize.train_step`. It is a port of dfp_jax's step, not the authors' code, so the
ratio compares the two frameworks on the same computation.

Before timing (unless --nocheck) it checks the port at the initial parameters: forward output, loss
and loss gradient of dfp_jax against the port, both against the port run in float64, and both
parameter counts (the main net's must be the paper's 1,550,755). One detail of the port: reflect
padding wider than the map (the mask net's deepest level below 96x96 inputs, where the authors' code
fails) repeats the reflection as jnp.pad does. (Writing this port found that jnp.abs's derivative at 0
is +1 where torch.abs's is 0; the mask loss hits 0 exactly on every pixel the straight-through maps
already get right, so dfp_jax now uses embedding.abs_zero_subgradient there.)
Then, per (input size, stage), it warms both up and alternates JAX and torch chunks of --steps steps
(--repeats times each, the order flipped every repeat) and reports the median seconds per step of
each and torch / jax. In one process the two interfere: torch's OpenMP workers spin-wait after each
torch chunk (libgomp's default active wait) and take the cores from the next JAX chunk, so the
interleaved figure favours torch; OMP_WAIT_POLICY=PASSIVE reverses the bias. The fair figure comes from
--frameworks=jax and --frameworks=torch in alternating processes (docs/benchmarks.md section 3c). GFLOP/s use XLA's FLOP count of the step (its direct stride-2 form) for both.
The network and loss flags of run.py (--scale, --kernel_size, --loss_weights, --cpu_conv, ...) apply.
PyTorch is a benchmark-only dependency (`pip install torch==2.13.0`, CPU); dfp_jax never imports it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import jax
import jax.numpy as jnp

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:
  sys.exit('error: experiments/bench_torch.py needs PyTorch: pip install torch==2.13.0 (the CPU build)')

from dfp_jax import filters
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import models
from dfp_jax import optimize
from dfp_jax import resample
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['128'], 'Low-resolution input sizes (square).')
flags.DEFINE_list('stages', ['main', 'mask'], 'Stages: main, mask.')
flags.DEFINE_integer('steps', 10, 'Steps per timed chunk (and per warm-up chunk).')
flags.DEFINE_integer('repeats', 5, 'Timed chunks per framework; the median per-step time is reported.')
flags.DEFINE_integer('torch_threads', os.cpu_count(), 'torch.set_num_threads.')
flags.DEFINE_enum('torch_adam', 'default', ['default', 'foreach', 'fused'], 'torch.optim.Adam '
                  'implementation: default (as a plain torch.optim.Adam(params, lr), the authors\' '
                  'code), or foreach / fused (the fused one takes ~4 ms less per step on 2 cores).')
flags.DEFINE_list('frameworks', ['jax', 'torch'], 'Which steps to time: jax, torch, or both '
                  '(interleaved). Both in one process interfere: torch\'s OpenMP threads spin-wait after '
                  'each chunk and slow the next JAX chunk (see the docstring); time each alone in '
                  'alternating processes for the fair figure.')
flags.DEFINE_bool('check', True, 'Compare forward, loss and gradient of the port with dfp_jax first.')
flags.DEFINE_string('json', None, 'Write the rows as JSON here.')

PAPER_MAIN_PARAMS = 1_550_755  # The authors' main network (DFP_METHOD.md section 3).


# ---------------------------------------------------------------------------------------------------
# The port. Children are named as Flax names them (ClassName_i per class, in creation order), so that
# weights and gradients map one to one between the Flax pytree and the torch module.


def reflect_pad(x, top, bottom, left, right):
  """jnp.pad(mode='reflect') on NCHW; also where a pad reaches the size (torch refuses, NumPy repeats
  the reflection: a 2x2 map padded by 2 at the mask net's deepest level for 64x64 inputs)."""
  h, w = x.shape[-2:]
  if max(top, bottom) < h and max(left, right) < w:
    return F.pad(x, (left, right, top, bottom), mode='reflect')
  iy = torch.from_numpy(np.pad(np.arange(h), (top, bottom), mode='reflect'))
  ix = torch.from_numpy(np.pad(np.arange(w), (left, right), mode='reflect'))
  return x[..., iy, :][..., ix]


class ConvK(nn.Module):
  """models.ConvK: reflect pad + k x k convolution (or two 3x3 ones), the first with `stride`."""

  def __init__(self, cin, cout, k, stride=1, double_3x3=False):
    super().__init__()
    for j, kk in enumerate([3, 3] if double_3x3 else [k]):
      self.add_module(f'Conv_{j}', nn.Conv2d(cin if j == 0 else cout, cout, kk, stride if j == 0 else 1))

  def forward(self, x):
    for conv in self.children():
      p = conv.kernel_size[0] // 2
      x = conv(reflect_pad(x, p, p, p, p) if p else x)
    return x


class SkipLevel(nn.Module):
  """models.SkipLevel; BatchNorm with the current pass's statistics = train-mode BatchNorm2d with no
  running statistics (biased variance, eps 1e-5, affine scale and offset)."""

  def __init__(self, cin, down, up, skip, net: models.NetConfig, slope=0.2):
    super().__init__()
    self.slope, self.upsample, self.skip = slope, net.upsample, skip[0]
    k, dbl = net.kernel_size, net.double_3x3
    self.ConvK_0 = ConvK(cin, down[0], k, 2, dbl)
    self.ConvK_1 = ConvK(down[0], down[0], k, 1, dbl)
    self.deeper = len(down) > 1
    if self.deeper:
      self.SkipLevel_0 = SkipLevel(down[0], down[1:], up[1:], skip[1:], net, slope)
    c = (up[1] if self.deeper else down[0]) + skip[0]
    self.ConvK_2 = ConvK(c, up[0], k, 1, dbl)
    one_by_one = ([nn.Conv2d(cin, skip[0], 1)] if skip[0] else []) + [nn.Conv2d(up[0], up[0], 1)]
    for i, conv in enumerate(one_by_one):
      self.add_module(f'Conv_{i}', conv)
    bn_channels = [down[0], down[0]] + ([skip[0]] if skip[0] else []) + [c, up[0], up[0]]
    for i, ch in enumerate(bn_channels):
      self.add_module(f'CurrentStatsBatchNorm_{i}', nn.BatchNorm2d(ch, eps=1e-5, track_running_stats=False))
    self.n_bn, self.n_conv = len(bn_channels), len(one_by_one)

  def forward(self, x):
    bn = iter([getattr(self, f'CurrentStatsBatchNorm_{i}') for i in range(self.n_bn)])
    conv = iter([getattr(self, f'Conv_{i}') for i in range(self.n_conv)])
    act = lambda v: F.leaky_relu(v, self.slope)
    d = act(next(bn)(self.ConvK_0(x)))
    d = act(next(bn)(self.ConvK_1(d)))
    if self.deeper:
      d = self.SkipLevel_0(d)
    if self.upsample == 'bilinear':  # Half-pixel centres, clamped edges: resample.bilinear_up2.
      d = F.interpolate(d, scale_factor=2, mode='bilinear', align_corners=False)
    else:
      d = F.interpolate(d, scale_factor=2, mode='nearest')
    if self.skip:
      d = torch.cat([act(next(bn)(next(conv)(x))), d], dim=1)
    y = next(bn)(d)
    y = act(next(bn)(self.ConvK_2(y)))
    return act(next(bn)(next(conv)(y)))


class SkipNet(nn.Module):
  """models.SkipNet on NCHW [1, C_in, H, W] -> [1, out, H, W]: pad to 2^D, U, crop, 1x1 head."""

  def __init__(self, net: models.NetConfig, cin, cout, sigmoid=True):
    super().__init__()
    self.multiple, self.sigmoid = 2 ** len(net.channels_down), sigmoid
    self.SkipLevel_0 = SkipLevel(cin, net.channels_down, net.channels_up, net.channels_skip, net)
    self.head = nn.Conv2d(net.channels_up[0], cout, 1)

  def forward(self, z):
    h, w = z.shape[-2:]
    x = reflect_pad(z, 0, (-h) % self.multiple, 0, (-w) % self.multiple)
    y = self.head(self.SkipLevel_0(x))[..., :h, :w]
    return torch.sigmoid(y) if self.sigmoid else y


def load_flax_params(module, tree):
  """Copies a Flax SkipNet parameter tree ({'params': ...} or its inside) into the torch port."""
  tree = tree.get('params', tree)
  children = dict(module.named_children())
  if set(children) != set(tree):
    raise ValueError(f'{type(module).__name__}: torch {sorted(children)} != flax {sorted(tree)}')
  for name, child in children.items():
    if isinstance(child, nn.Conv2d):  # HWIO -> OIHW.
      child.weight.data.copy_(torch.from_numpy(np.array(tree[name]['kernel']).transpose(3, 2, 0, 1).copy()))
      child.bias.data.copy_(torch.from_numpy(np.array(tree[name]['bias'])))
    elif isinstance(child, nn.BatchNorm2d):
      child.weight.data.copy_(torch.from_numpy(np.array(tree[name]['scale'])))
      child.bias.data.copy_(torch.from_numpy(np.array(tree[name]['bias'])))
    else:
      load_flax_params(child, tree[name])


def flax_layout_grads(module):
  """The torch module's parameter gradients as a Flax-shaped tree of NumPy arrays."""
  out = {}
  for name, child in module.named_children():
    if isinstance(child, (nn.Conv2d, nn.BatchNorm2d)):
      w = child.weight.grad.numpy()
      out[name] = ({'kernel': w.transpose(2, 3, 1, 0), 'bias': child.bias.grad.numpy()}
                   if isinstance(child, nn.Conv2d) else {'scale': w, 'bias': child.bias.grad.numpy()})
    else:
      out[name] = flax_layout_grads(child)
  return out


def nchw(a):
  """[..., H, W, C] array -> float32 torch tensor [..., C, H, W]."""
  return torch.from_numpy(np.array(np.moveaxis(np.asarray(a, np.float32), -1, -3), order='C'))


def luma(x):  # filters.luma on [N, 3, H, W] -> [N, 1, H, W].
  w = torch.tensor(filters.LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
  return (x * w).sum(1, keepdim=True) + filters.LUMA_OFFSET


def laplacian(y):  # filters.laplacian (reflect border) on [N, 1, H, W].
  return F.conv2d(reflect_pad(y, 1, 1, 1, 1), torch.from_numpy(filters.LAPLACIAN_4)[None, None].to(y.dtype))


def lanczos2_down(x, s):  # resample.lanczos2_downsample on [1, C, sH, sW].
  if s == 1:
    return x
  c, pad = x.shape[1], (4 * s - s) // 2
  k = torch.from_numpy(resample.lanczos2_kernel1d(s)).to(x.dtype)
  x = F.pad(x, (pad, pad, pad, pad), mode='replicate')
  x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), stride=(s, 1), groups=c)
  return F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), stride=(1, s), groups=c)


def main_loss(cfg, images, maps):
  """fusion.main_stage's loss of the HR output [1, C, sH, sW]; images [N, C, H, W], maps [N, H, W]."""
  target = laplacian(luma(images)).abs().amax(0, keepdim=True)  # losses.joint_gradient_target.
  wt, lam = cfg.weights, torch.tensor(cfg.weights.content or [1.0] * len(images), dtype=images.dtype)

  def loss_fn(out_hr):
    out_lr = lanczos2_down(out_hr, cfg.scale)
    con = ((maps[:, None] * (out_lr - images)).abs().mean((1, 2, 3)) * lam).sum()
    jg = (laplacian(luma(out_lr)).abs() - target).abs().mean()
    gl = (out_hr[..., :, 1:] - out_hr[..., :, :-1]).abs().mean() + (
        out_hr[..., 1:, :] - out_hr[..., :-1, :]).abs().mean()
    return wt.alpha * con + wt.beta * jg + wt.gamma * gl

  return loss_fn


def mask_loss(images, maps):
  """fusion.mask_stage's loss (embedding.embedding_loss, two inputs) of the net output [1, 1, H, W]."""

  def loss_fn(out):
    soft = torch.cat([out[0], 1.0 - out[0]])  # [2, H, W]
    hard = (soft[0] > 0.5).to(soft.dtype)
    hat = soft + (torch.stack([hard, 1.0 - hard]) - soft).detach()  # Straight-through.
    # torch.abs's derivative at 0 is 0, as embedding.abs_zero_subgradient's.
    image_term = (hat[:, None] * images - maps[:, None] * images).abs().mean((1, 2, 3)).sum()
    return (hat[0] - maps[0]).abs().mean() + image_term

  return loss_fn


class TorchStep:
  """One Adam step + output EMA, as optimize.train_step."""

  def __init__(self, net, loss_fn, z, lr, decay, adam='default'):
    self.net, self.loss_fn, self.z, self.decay = net, loss_fn, z, decay
    kw = {} if adam == 'default' else {adam: True}
    self.opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, **kw)  # optax.adam
    self.ema = None

  def __call__(self, n):
    for _ in range(n):
      self.opt.zero_grad(set_to_none=True)
      out = self.net(self.z)
      loss = self.loss_fn(out)
      loss.backward()
      self.opt.step()
      with torch.no_grad():
        self.ema = (1 - self.decay) * out if self.ema is None else self.ema.mul_(self.decay).add_(
            out, alpha=1 - self.decay)
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------------


def build(cfg, size, stage_name):
  """JAX (stage, state, problem) as bench_step builds them; the torch port with the same weights and
  make_loss(dtype), its loss on the same inputs."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, size, size, 3)).astype(np.float32))
  m = jnp.stack([jnp.ones((size, size)), jnp.zeros((size, size))])
  init, cout = (fusion.init_main_state, 3) if stage_name == 'main' else (fusion.init_mask_state, 1)
  stage = fusion.main_stage(cfg, 3) if stage_name == 'main' else fusion.mask_stage(cfg, 2)
  state, problem = init(jax.random.key(0), x, m, config=cfg)
  net = SkipNet(cfg.image_net if stage_name == 'main' else cfg.mask_net, problem['z'].shape[-1], cout)
  load_flax_params(net, state.params)

  def make_loss(dtype):
    images, maps = nchw(x).to(dtype), torch.from_numpy(np.array(m)).to(dtype)
    return main_loss(cfg, images, maps) if stage_name == 'main' else mask_loss(images, maps)

  lr = cfg.lr if stage_name == 'main' else cfg.mask_lr
  step = TorchStep(net, make_loss(torch.float32), nchw(problem['z'])[None], lr, cfg.ema_decay,
                   FLAGS.torch_adam)
  return stage, state, problem, step, make_loss


def torch_eval(net, z, loss_fn):
  """(output [H, W, C], loss, gradients in the Flax layout) of the port, as float64 NumPy."""
  net.zero_grad(set_to_none=True)
  out = net(z)
  loss = loss_fn(out)
  loss.backward()
  grads = jax.tree.map(lambda g: g.astype(np.float64), {'params': flax_layout_grads(net)})
  net.zero_grad(set_to_none=True)
  return np.moveaxis(out.detach().double().numpy()[0], 0, -1), float(loss.detach()), grads


def check(stage, state, problem, step, make_loss):
  """Forward, loss and gradient of the port against dfp_jax at the initial parameters, both against
  the port in float64 too (which of the two float32 computations is off, if one is)."""
  (loss_j, _), grads_j = jax.jit(jax.value_and_grad(stage.loss_fn, has_aux=True))(state.params, problem)
  jax_r = (np.asarray(jax.jit(stage.net.apply)(state.params, problem['z']), np.float64), float(loss_j),
           jax.tree.map(lambda g: np.asarray(g, np.float64), grads_j))
  torch_r = torch_eval(step.net, step.z, step.loss_fn)
  ref = torch_eval(copy.deepcopy(step.net).double(), step.z.double(), make_loss(torch.float64))
  gmax = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref[2]))

  def diffs(a, b):  # Output max|diff|, loss |diff|, max|grad diff| / max|grad|.
    g = max(jax.tree.leaves(jax.tree.map(lambda u, v: float(np.max(np.abs(u - v))), a[2], b[2])))
    return float(np.max(np.abs(a[0] - b[0]))), abs(a[1] - b[1]), g / gmax

  out = {'loss_jax': jax_r[1], 'loss_torch': torch_r[1]}
  for name, (a, b) in {'': (jax_r, torch_r), '_jax_f64': (jax_r, ref), '_torch_f64': (torch_r, ref)}.items():
    out['max_abs_diff' + name], out['loss_diff' + name], out['grad_rel_diff' + name] = diffs(a, b)
  return out


def network_gflops(cfg, stage_name, state, problem):
  """FLOPs of one step from XLA's cost analysis of the 'direct' stride-2 form (the space-to-depth
  form's zero taps are counted by XLA but are not the network's)."""
  direct = cfg.replace(image_net=dataclasses.replace(cfg.image_net, strided_conv='direct'),
                       mask_net=dataclasses.replace(cfg.mask_net, strided_conv='direct'))
  stage = fusion.main_stage(direct, 3) if stage_name == 'main' else fusion.mask_stage(direct, 2)
  cost = stage.jit_step.lower(state, problem).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) / 1e9 if cost else float('nan')


def bench_row(cfg, size, stage_name, steps, repeats, do_check):
  stage, state, problem, step, make_loss = build(cfg, size, stage_name)
  row = {'lr_size': size, 'scale': cfg.scale, 'stage': stage_name,
         'output_size': size * cfg.scale if stage_name == 'main' else size,
         'params_jax': models.count_params(state.params),
         'params_torch': sum(p.numel() for p in step.net.parameters())}
  if do_check:
    row.update(check(stage, state, problem, step, make_loss))
    print(f"{size:>5} {stage_name:<4} check, jax vs torch (jax vs float64 torch, float32 torch vs float64 "
          f"torch): output max|diff| {row['max_abs_diff']:.1e} ({row['max_abs_diff_jax_f64']:.1e}, "
          f"{row['max_abs_diff_torch_f64']:.1e}); loss {row['loss_jax']:.7f} vs {row['loss_torch']:.7f}, "
          f"|diff| {row['loss_diff']:.1e} ({row['loss_diff_jax_f64']:.1e}, {row['loss_diff_torch_f64']:.1e}); "
          f"grad max|diff| / max|grad| {row['grad_rel_diff']:.1e} ({row['grad_rel_diff_jax_f64']:.1e}, "
          f"{row['grad_rel_diff_torch_f64']:.1e}); parameters {row['params_jax']:,} (jax), "
          f"{row['params_torch']:,} (torch)", flush=True)
  row['gflops'] = network_gflops(cfg, stage_name, state, problem)
  run, _ = optimize.compile_chunk(stage, state, problem, steps, optimize.resolve_loop(cfg.loop))
  fws = [fw for fw in ('jax', 'torch') if fw in FLAGS.frameworks]
  if 'jax' in fws:
    state, terms = run(state, problem, steps)  # Warm-ups.
    jax.block_until_ready((state, terms))
  if 'torch' in fws:
    step(steps)
  times = {fw: [] for fw in fws}
  for rep in range(repeats):
    for fw in (fws if rep % 2 == 0 else fws[::-1]):  # ABBA against drift.
      t = time.perf_counter()
      if fw == 'jax':
        state, terms = run(state, problem, steps)
        jax.block_until_ready((state, terms))
      else:
        step(steps)
      times[fw].append((time.perf_counter() - t) / steps)
  nan = float('nan')
  row.update(jax_step_s=float(np.median(times['jax'])) if 'jax' in times else nan,
             torch_step_s=float(np.median(times['torch'])) if 'torch' in times else nan,
             jax_step_s_all=times.get('jax', []), torch_step_s_all=times.get('torch', []),
             frameworks=fws)
  row['ratio'] = row['torch_step_s'] / row['jax_step_s']
  row['torch_adam'] = FLAGS.torch_adam
  return row


def main(argv):
  del argv
  cli.setup_runtime(FLAGS)
  # The port is of the papers' head, sigmoid(net(z)); --output_base=map_fusion adds one elementwise
  # add of a constant before the sigmoid, which the port does not have, so it is compared without it.
  cfg = cli.config_from_flags(FLAGS).replace(output_base='none')
  if cfg.compute_dtype != 'float32':
    cli.fail('the PyTorch port is float32 only: use --compute_dtype=float32')
  if not FLAGS.frameworks or set(FLAGS.frameworks) - {'jax', 'torch'}:
    cli.fail(f'--frameworks must name jax and/or torch, got {",".join(FLAGS.frameworks)}')
  torch.set_num_threads(FLAGS.torch_threads)
  versions = {**cli.versions(), 'torch': torch.__version__}
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), cpu_conv {cfg.cpu_conv}, loop "
        f"{optimize.resolve_loop(cfg.loop)}", flush=True)
  rows = []
  for size in map(int, FLAGS.sizes):
    for stage_name in FLAGS.stages:
      row = bench_row(cfg, size, stage_name, FLAGS.steps, FLAGS.repeats, FLAGS.check)
      row.update(torch_version=torch.__version__, jax_version=jax.__version__)
      rows.append(row)
      if stage_name == 'main' and cfg.image_net == models.IMAGE_NET:
        match = 'matches' if row['params_jax'] == PAPER_MAIN_PARAMS else 'DIFFERS from'
        print(f"main net: {row['params_jax']:,} parameters, {match} the paper's {PAPER_MAIN_PARAMS:,}")
  print('\n| input | scale | stage | jax (ms) | torch (ms) | torch / jax | jax GFLOP/s | torch GFLOP/s '
        '| output max diff | params |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    diff = f"{r['max_abs_diff']:.1e}" if 'max_abs_diff' in r else '-'
    print(f"| {r['lr_size']} | x{r['scale']} | {r['stage']} | {r['jax_step_s'] * 1e3:.1f} | "
          f"{r['torch_step_s'] * 1e3:.1f} | {r['ratio']:.2f} | {r['gflops'] / r['jax_step_s']:.1f} | "
          f"{r['gflops'] / r['torch_step_s']:.1f} | {diff} | {r['params_jax']:,} |")
  if FLAGS.json:
    rows = [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()} for r in rows]
    image_io.write_json(FLAGS.json, {'backend': jax.default_backend(), 'versions': versions,
                                     'torch_threads': torch.get_num_threads(),
                                     'config': cfg.to_dict(), 'rows': rows})


if __name__ == '__main__':
  jax.config.parse_flags_with_absl()
  cli.define_flags()
  app.run(main)
