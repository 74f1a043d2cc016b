"""The configuration of one DFP run, and the command-line flags derived from it.

`FusionConfig` is a frozen, hashable dataclass: everything that defines one scene's fusion apart from
the images and the PRNG key. Library functions take it as an argument; no flags reach the library.
Each field states its default and its help text once, here (field metadata); `flag_specs()` derives
the command-line flags from them (`dfp_jax.app.flags` defines them, `docs/cli.md` is generated from
them), and `from_flag_values()` is the one conversion back. Every value is validated once, in the
dataclasses' `__post_init__`.

A few flags set several fields or a nested dataclass at once (`--doublereblur=kg,kd,ke,t,f`,
`--channels` for both networks, `--loss_weights=alpha,beta,gamma`): they are the explicit entries of
`_COMPOSITE_FLAGS`, the one mapping between flag names and fields that is not one-to-one.

The method's defaults are the papers' (docs/DFP_METHOD.md). The defaults that depart from the papers
are listed, with their reasons and the flag value that restores the papers' behaviour, in
docs/design.md section "Departures from the papers".
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

from dfp_jax.focus import DoubleReblurParams, FocusConfig
from dfp_jax.losses import LossWeights
from dfp_jax.models import DeepDecoderConfig, IMAGE_NET, MASK_NET, NetConfig, PRIORS
from dfp_jax.resample import DEGRADATIONS

SCALES = (1, 2, 4)
INPUT_TYPES = ('mean', 'noise')
OUTPUT_AVERAGES = ('ema', 'last')
DTYPES = ('float32', 'bfloat16')
STOPS = ('auto', 'fixed')
OUTPUT_BIASES = ('mean', 'zero')
OUTPUT_BASES = ('map_fusion', 'none')
CPU_CONVS = ('eigen', 'ynnpack')
LOOPS = ('auto', 'scan', 'python')
# XLA:CPU (jax 0.10) sends convolutions, dots and reductions to YNNPACK by default. 'eigen' keeps
# YNNPACK for dots and reductions only: its convolution kernels are slower than XLA's Eigen ones for
# this network's narrow, odd channel counts (docs/design.md "Runtime choices").
_CPU_CONV_OPTIONS = {
    'eigen': (('xla_cpu_experimental_ynn_fusion_type',
               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'),),
    'ynnpack': None,  # XLA's defaults.
}


def option(default, help: str, *, choices: tuple | None = None, flag: str | None = None,
           kind: str | None = None, parse: Callable | None = None):  # pylint: disable=redefined-builtin
  """A dataclass field that is also a command-line flag: its default, help text and choices.

  `flag` renames the flag (default: the field's name); `kind` overrides the flag type inferred from
  the default ('integer', 'float', 'bool', 'enum', 'string', 'list'); `parse` converts the flag's value
  (e.g. a list of strings) to the field's (raising ValueError naming the flag).
  """
  return dataclasses.field(default=default, metadata={'help': help, 'choices': choices, 'flag': flag,
                                                      'kind': kind, 'parse': parse})


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """Everything that defines one scene's fusion, apart from the images and the PRNG key."""
  scale: int = option(2, 'Super-resolution factor: 1 (plain fusion), 2 or 4.', choices=SCALES)
  iters: int = option(1000, 'Main-stage (fusion prior) steps K; a maximum with --stop=auto.')
  mask_iters: int = option(500, 'Decision-embedding steps K_m (a maximum with --stop=auto); 0 turns '
                           'the embedding off and uses the DoubleReblur maps directly.')
  lr: float = option(1e-3, 'Adam learning rate of the main stage.')
  mask_lr: float = option(1e-3, 'Adam learning rate of the decision embedding.')
  input_type: str = option('mean', "Network input z: 'mean' (bicubic of the inputs' mean) or 'noise' "
                           '(uniform, as the deep image prior).', choices=INPUT_TYPES)
  noise_channels: int = option(32, "Channels of z with --input_type=noise.")
  noise_scale: float = option(0.1, 'z ~ U(0, noise_scale) with --input_type=noise.')
  output_bias: str = option('mean', "Initial bias of the image net's sigmoid head with "
                            "--output_base=none: 'mean' = logit of the inputs' mean colour (the output "
                            "starts at that colour), 'zero' = the usual initialisation (the authors' "
                            'code). A starting point only; it is trained like every other parameter. '
                            'docs/design.md "Departures".', choices=OUTPUT_BIASES)
  output_base: str = option('map_fusion', "What the image net's output is relative to: 'none' = the "
                            "papers' sigmoid(net(z)); 'map_fusion' = sigmoid(net(z) + logit(B)), B the "
                            'bicubic of the fusion of the inputs by the decision maps, so the net fits '
                            'the correction to B (--output_bias unused). docs/design.md "Departures".',
                            choices=OUTPUT_BASES)
  # The decision maps: focus measure, rule, clean-up, DoubleReblur's parameters (focus.FocusConfig;
  # flags --focus_*, --doublereblur*).
  focus: FocusConfig = dataclasses.field(default=FocusConfig(), metadata={'nested': True})
  # The main and the decision-embedding SKIPnets; flags --channels, --skip_channels,
  # --mask_skip_channels, --kernel_size, --double_3x3, --upsample, --strided_conv.
  prior: str = option('skipnet', "The image prior, a network mapping z to the image: 'skipnet' (the papers' "
                      "SKIPnet, shaped by --channels and the network flags) or 'deep_decoder' (Heckel & Hand "
                      '2019: 1x1 convolutions and upsampling, few parameters; --dd_*). docs/extending.md '
                      'adds others.', choices=PRIORS)
  image_net: NetConfig = IMAGE_NET
  mask_net: NetConfig = MASK_NET
  deep_decoder: DeepDecoderConfig = dataclasses.field(default=DeepDecoderConfig(), metadata={'nested': True})
  degradation: str = option('lanczos2', "How the losses bring the network's output to the inputs' size: "
                            "'lanczos2' (deep image prior's Lanczos-2, the papers') or 'area' (the mean over "
                            "each input pixel's s x s block: a sensor's integration, and how the benchmarks "
                            "and --lf_downsample make low-resolution images). Unused at --scale=1.",
                            choices=tuple(DEGRADATIONS))
  loss_weights: LossWeights = LossWeights()  # alpha, beta, gamma (and per-input lambda); --loss_weights.
  output_average: str = option('ema', "The result: 'ema' = exponential moving average of the iterates' "
                               "outputs (image and embedded maps), 'last' = the last iterate. Never "
                               'chosen with a ground truth.', choices=OUTPUT_AVERAGES)
  ema_decay: float = option(0.99, 'Decay of that moving average.')
  chunk_size: int = option(50, 'Steps per chunk with --stop=fixed (one host sync each; the program a '
                           'lax.scan loop compiles); --stop=auto uses --stop_window. Progress lines '
                           'come between chunks, at most every 10 s.')
  compute_dtype: str = option('float32', 'Convolution compute dtype (bfloat16 for accelerators).',
                              choices=DTYPES)
  cpu_conv: str = option('eigen', "Convolution kernels of the step programs on XLA:CPU: 'eigen' (XLA's "
                         "own) or 'ynnpack' (XLA's default in jax 0.10); same maths, different rounding. "
                         'Ignored on GPU/TPU. docs/design.md "Runtime choices".', choices=CPU_CONVS)
  loop: str = option('auto', "Step loop: 'scan' (lax.scan chunks), 'python' (jitted steps dispatched "
                     "from Python), 'auto' (python on CPU, scan on accelerators). docs/design.md "
                     '"Runtime choices".', choices=LOOPS)
  stop: str = option('auto', "'auto': end each stage when its result has converged (no ground truth: "
                     'the moving-average image changes by less than --stop_tol per --stop_window '
                     'steps, --stop_patience windows in a row, after --stop_min_iters steps); --iters '
                     "and --mask_iters are then maxima. 'fixed': run exactly --iters and --mask_iters.",
                     choices=STOPS)
  stop_tol: float = option(1e-4, 'Convergence threshold of the main stage at x1 and x2: mean absolute '
                           'change of the result per window, intensities in [0, 1]; at x4 it is '
                           'divided by 4 (docs/design.md "Departures", the convergence stop).')
  stop_window: int = option(50, 'Steps per convergence check.')
  stop_min_iters: int = option(200, 'Main-stage steps before the stop may end it (the decision '
                               'embedding uses min(this, --mask_iters / 2)).')
  stop_patience: int = option(2, 'Convergence checks in a row that must pass.')

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f'scale must be one of {SCALES}, got {self.scale}')
    if self.iters < 1:
      raise ValueError(f'iters must be >= 1, got {self.iters}')
    if self.mask_iters < 0:
      raise ValueError(f'mask_iters must be >= 0, got {self.mask_iters}')
    if not (0 < self.lr < math.inf and 0 < self.mask_lr < math.inf):
      raise ValueError(f'learning rates must be finite and > 0, got lr={self.lr}, mask_lr={self.mask_lr}')
    w = self.loss_weights
    terms = (w.alpha, w.beta, w.gamma) + tuple(w.content or ())
    content_on = w.alpha > 0 and (w.content is None or any(c > 0 for c in w.content))
    if not all(0 <= t < math.inf for t in terms) or not (content_on or w.beta > 0 or w.gamma > 0):
      raise ValueError(f'loss weights must be finite and >= 0, and not all 0, got alpha={w.alpha}, '
                       f'beta={w.beta}, gamma={w.gamma}' + (f', content={w.content}' if w.content else ''))
    for name, choices in (('prior', PRIORS), ('degradation', tuple(DEGRADATIONS)),
                          ('input_type', INPUT_TYPES), ('output_bias', OUTPUT_BIASES),
                          ('output_base', OUTPUT_BASES), ('output_average', OUTPUT_AVERAGES),
                          ('loop', LOOPS), ('stop', STOPS), ('cpu_conv', CPU_CONVS),
                          ('compute_dtype', DTYPES)):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got '{getattr(self, name)}'")
    if self.noise_channels < 1 or not 0 < self.noise_scale < math.inf:
      raise ValueError(f'noise_channels must be >= 1 and noise_scale finite and > 0, got '
                       f'{self.noise_channels}, {self.noise_scale}')
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f'ema_decay must be in [0, 1), got {self.ema_decay}')
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size must be >= 1, got {self.chunk_size}')
    for name, ok, bound in (('stop_tol', 0 < self.stop_tol < math.inf, '> 0'),
                            ('stop_window', self.stop_window >= 1, '>= 1'),
                            ('stop_min_iters', self.stop_min_iters >= 0, '>= 0'),
                            ('stop_patience', self.stop_patience >= 1, '>= 1')):
      if not ok:
        raise ValueError(f'{name} must be {bound}, got {getattr(self, name)}')

  def stop_rule(self, stage: str):
    """The optimize.StopRule of 'main' or 'mask', or None with stop='fixed'."""
    from dfp_jax.optimize import StopRule  # pylint: disable=g-import-not-at-top
    if self.stop == 'fixed':
      return None
    if stage == 'main':  # At x4 the result keeps improving while it changes less per output pixel.
      tol = self.stop_tol * min(1.0, (2.0 / self.scale) ** 2)
      return StopRule(tol, self.stop_window, self.stop_min_iters, self.stop_patience)
    return StopRule(self.stop_tol, self.stop_window, min(self.stop_min_iters, self.mask_iters // 2),
                    self.stop_patience)

  @property
  def image_prior(self):
    """The configuration of the image prior `prior` selects (NetConfig or DeepDecoderConfig): it builds
    the network (`build`) and states its depth and activation memory."""
    return self.deep_decoder if self.prior == 'deep_decoder' else self.image_net

  @property
  def jnp_dtype(self):
    """The convolutions' compute dtype as a jnp dtype."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return jnp.bfloat16 if self.compute_dtype == 'bfloat16' else jnp.float32

  def compiler_options(self):
    """XLA compiler options of the step programs on CPU, as (name, value) pairs, or None."""
    return _CPU_CONV_OPTIONS[self.cpu_conv]

  def replace(self, **changes) -> 'FusionConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))


# ---------------------------------------------------------------------------------------------------
# Flags derived from the dataclasses.


@dataclasses.dataclass(frozen=True)
class FlagSpec:
  """One command-line flag of a configuration dataclass."""
  name: str  # The flag users type (without --).
  kind: str  # 'integer', 'float', 'bool', 'enum', 'string' or 'list' (comma-separated).
  help: str
  get: Callable[[Any], Any]  # config -> the flag's value for it (the default: get(Config())).
  put: Callable[[Any], dict]  # flag value -> {field path (tuple of names): value}.
  choices: tuple | None = None

  def default(self, cls):
    return self.get(cls())


def _kind(value) -> str:
  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, int):
    return 'integer'
  if isinstance(value, float):
    return 'float'
  if isinstance(value, (tuple, list)):
    return 'list'
  return 'string'


def field_flags(cls, prefix: tuple = ()) -> list[FlagSpec]:
  """A flag for every field of dataclass `cls` declared with `option()` (help text in its metadata)."""
  out = []
  for f in dataclasses.fields(cls):
    if f.metadata.get('nested'):  # A dataclass whose own fields are flags.
      out += field_flags(type(f.default), prefix + (f.name,))
      continue
    if 'help' not in f.metadata:
      continue
    meta = f.metadata
    choices = meta.get('choices')
    default = f.default
    kind = meta.get('kind') or ('enum' if choices and isinstance(default, str) else _kind(default))
    path = prefix + (f.name,)

    def get(config, path=path, kind=kind):
      for name in path:
        config = getattr(config, name)
      if kind == 'list':
        return [] if config is None else _fmt_list(config)
      return config

    def put(value, path=path, parse=meta.get('parse')):
      return {path: parse(value) if parse else value}

    out.append(FlagSpec(meta.get('flag') or f.name, kind, meta['help'], get, put,
                        tuple(str(c) for c in choices) if kind == 'enum' else choices))
  return out


def _numbers(name: str, values, cast, count: int | None = None, what: str = 'numbers') -> tuple:
  """Comma-separated flag values as numbers; ValueError naming the flag otherwise."""
  values = list(values)
  try:
    out = tuple(cast(v) for v in values)
  except (TypeError, ValueError):
    out = None
  if out is None or (count is not None and len(out) != count):
    need = f'{count} ' if count else ''
    raise ValueError(f'--{name} must be {need}comma-separated {what}, got {",".join(map(str, values))}')
  return out


def _doublereblur_put(values) -> dict:
  p = DoubleReblurParams.parse(','.join(map(str, values)))
  return {('focus', 'doublereblur', k): getattr(p, k) for k in ('kg', 'kd', 'ke', 't', 'f')}


def _net_put(nets, field):
  def put(value):
    return {(net, field): value for net in nets}
  return put


def _channels_put(values) -> dict:
  c = _numbers('channels', values, int, what='integers')
  return {(net, f): c for net in ('image_net', 'mask_net') for f in ('channels_down', 'channels_up')}


def _fmt_list(values) -> list:
  return [f'{v:g}' if isinstance(v, float) else str(v) for v in values]


_NET_FIELDS = {f.name: f for f in dataclasses.fields(NetConfig)}
_BOTH_NETS = ('image_net', 'mask_net')

# The flags that are not one field each. Their help texts live here (and nowhere else).
_COMPOSITE_FLAGS = (
    FlagSpec('doublereblur', 'list', 'DoubleReblur parameters kg,kd,ke,t,f (DFP_METHOD.md section 4): '
             'Gaussian (second reblur) size, dilation and erosion sizes of the closing, threshold t of '
             "the papers' rule, f = 1 for largest region + hole filling (the last three also shape "
             '--focus_cleanup=regions).',
             lambda c: _fmt_list(c.focus.doublereblur.as_list()), _doublereblur_put),
    FlagSpec('channels', 'list', 'SKIPnet channels per scale, encoder = decoder, both networks; the '
             'count is the depth D.', lambda c: _fmt_list(c.image_net.channels_down), _channels_put),
    FlagSpec('skip_channels', 'list', 'Skip channels per scale of the image net (0 = no skip).',
             lambda c: _fmt_list(c.image_net.channels_skip),
             lambda v: {('image_net', 'channels_skip'): _numbers('skip_channels', v, int,
                                                                 what='integers')}),
    FlagSpec('mask_skip_channels', 'list', 'Skip channels per scale of the decision-embedding net.',
             lambda c: _fmt_list(c.mask_net.channels_skip),
             lambda v: {('mask_net', 'channels_skip'): _numbers('mask_skip_channels', v, int,
                                                                what='integers')}),
) + tuple(
    FlagSpec(name, 'enum' if _NET_FIELDS[name].metadata.get('choices') else _kind(_NET_FIELDS[name].default),
             _NET_FIELDS[name].metadata['help'] + ' Both networks.',
             lambda c, name=name: getattr(c.image_net, name), _net_put(_BOTH_NETS, name),
             _NET_FIELDS[name].metadata.get('choices'))
    for name in ('kernel_size', 'double_3x3', 'upsample', 'strided_conv')
) + (
    FlagSpec('loss_weights', 'list', 'alpha,beta,gamma: weights of the content, joint-gradient and '
             'gradient-limit losses (DFP_METHOD.md section 6).',
             lambda c: _fmt_list((c.loss_weights.alpha, c.loss_weights.beta, c.loss_weights.gamma)),
             lambda v: dict(zip([('loss_weights', k) for k in ('alpha', 'beta', 'gamma')],
                                _numbers('loss_weights', v, float, 3)))),
)


def flag_specs(cls=FusionConfig) -> list[FlagSpec]:
  """Every flag of configuration dataclass `cls`, in field order (FusionConfig: with its composite
  flags in place of its nested dataclasses)."""
  specs = field_flags(cls)
  if cls is FusionConfig:
    specs = specs + list(_COMPOSITE_FLAGS)
  names = [s.name for s in specs]
  assert len(names) == len(set(names)), names
  return specs


def from_flag_values(values: dict, cls=FusionConfig, base=None):
  """The configuration of class `cls` given flag values {flag name: value} (absent flags keep
  `base`'s values, by default the class defaults). Raises ValueError naming what is wrong."""
  base = cls() if base is None else base
  changes: dict = {}
  for spec in flag_specs(cls):
    if spec.name in values:
      changes.update(spec.put(values[spec.name]))
  return _apply(base, changes)


def _apply(obj, changes: dict):
  """`obj` with changes {(field, subfield, ...): value} applied (nested dataclasses replaced)."""
  top, nested = {}, {}
  for path, value in changes.items():
    if len(path) == 1:
      top[path[0]] = value
    else:
      nested.setdefault(path[0], {})[path[1:]] = value
  for name, sub in nested.items():
    top[name] = _apply(getattr(obj, name), sub)
  return dataclasses.replace(obj, **top)
