"""The resolved configuration of one DFP run: a frozen, hashable dataclass (no flags in the library).

`experiments/run.py` converts its absl flags into a `FusionConfig` once; library functions take it as
an argument. The method's defaults are the papers' (DFP_METHOD.md): x2, 500 mask steps, 1000 main steps,
Adam 1e-3, loss weights 1 / 0.5 / 0.1, DoubleReblur [5, 3, 3, 0.01, 1]. Four defaults deliberately differ
from the papers, each measured in docs/benchmarks.md and each with a flag value that restores the
papers' behaviour: the DoubleReblur `compare` rule (section 2a''), the output relative to the map fusion
(`output_base`, 5c), the head bias at the inputs' mean colour (`output_bias`, 5b) and the convergence
stop (`stop='auto'`, 5; `iters` is then a maximum).
"""

from __future__ import annotations

import dataclasses
import json
import math

from dfp_jax.focus import DoubleReblurParams
from dfp_jax.losses import LossWeights
from dfp_jax.models import IMAGE_NET, MASK_NET, NetConfig

SCALES = (1, 2, 4)
INPUT_TYPES = ('mean', 'noise')
OUTPUTS = ('ema', 'last')
DTYPES = ('float32', 'bfloat16')
STOPS = ('auto', 'fixed')
OUTPUT_BIASES = ('mean', 'zero')
OUTPUT_BASES = ('map_fusion', 'none')
CPU_CONVS = ('eigen', 'ynnpack')
# XLA:CPU (jax 0.10) sends convolutions, dots and reductions to YNNPACK by default. 'eigen' keeps
# YNNPACK for dots and reductions only: its convolution kernels are 1.3-5x slower than XLA's Eigen ones
# for this network's narrow, odd channel counts (whole main steps 1.17-1.46x; docs/benchmarks.md 3a).
_CPU_CONV_OPTIONS = {
    'eigen': (('xla_cpu_experimental_ynn_fusion_type',
               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'),),
    'ynnpack': None,  # XLA's defaults.
}


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """Everything that defines one scene's fusion, apart from the images and the PRNG key."""
  scale: int = 2  # Super-resolution factor s in {1, 2, 4} (1 = plain fusion).
  iters: int = 1000  # Main-stage steps K.
  mask_iters: int = 500  # Decision-embedding steps K_m (0 = use the DoubleReblur maps directly).
  lr: float = 1e-3  # Adam learning rate of the main stage.
  mask_lr: float = 1e-3  # Adam learning rate of the decision embedding.
  input_type: str = 'mean'  # Network input z: 'mean' (bicubic x s of the inputs' mean) or 'noise'.
  noise_channels: int = 32  # Channels of z when input_type == 'noise'.
  noise_scale: float = 0.1  # z ~ U(0, noise_scale) when input_type == 'noise' (deep image prior).
  # Initial bias of the image net's sigmoid head: 'mean' = logit of the inputs' mean colour per
  # channel, so the output starts at the scene's mean colour instead of grey 0.5; 'zero' = the usual
  # initialisation (the authors' code). A starting point only: it is trained like every other parameter.
  output_bias: str = 'mean'
  # What the image net's output is relative to: 'none' = the papers' sigmoid(net(z)); 'map_fusion' =
  # sigmoid(net(z) + logit(B)), B the bicubic x s of the fusion of the inputs by the decision maps, a
  # fixed per-pixel offset of the head's pre-activation (the net's head starts small, its bias at zero,
  # so the first output is close to B). The losses, the prior and the network are unchanged; the net
  # fits the correction to B instead of the whole image (docs/benchmarks.md section 5c). With
  # 'map_fusion', output_bias is not used.
  output_base: str = 'map_fusion'
  # Focus measure parameters: the papers' [5, 3, 3, 0.01, 1] with the 'compare' two-input rule (focus.py).
  doublereblur: DoubleReblurParams = DoubleReblurParams()
  image_net: NetConfig = IMAGE_NET  # Main SKIPnet.
  mask_net: NetConfig = MASK_NET  # Decision-embedding SKIPnet.
  weights: LossWeights = LossWeights()  # alpha, beta, gamma (and per-input lambda).
  output: str = 'ema'  # Result: 'ema' of the iterates' outputs (image and embedded maps), or 'last'.
  ema_decay: float = 0.99  # Decay of that EMA.
  chunk_size: int = 50  # Steps per chunk (one host sync; one lax.scan call on accelerators) with
  # stop='fixed'; stop='auto' uses stop_window. Progress is reported between chunks, at most every 10 s.
  compute_dtype: str = 'float32'  # Convolution compute dtype ('bfloat16' for accelerators).
  # Convolution kernels of the step programs on XLA:CPU: 'eigen' (XLA's own) or 'ynnpack' (XLA's
  # default in jax 0.10); ignored on other backends. Same maths, different rounding.
  cpu_conv: str = 'eigen'
  loop: str = 'auto'  # Step loop: 'scan' (lax.scan chunks), 'python' (dispatched jitted steps), 'auto'.
  # Convergence stop (no ground truth; optimize.StopRule): 'auto' ends a stage once its result (the EMA
  # of the outputs) changes by less than stop_tol (mean absolute change, intensities in [0, 1]) per
  # stop_window steps, stop_patience windows in a row, after stop_min_iters steps; iters and
  # mask_iters are then maxima. 'fixed' runs exactly iters and mask_iters.
  stop: str = 'auto'
  stop_tol: float = 2e-4
  stop_window: int = 50
  stop_min_iters: int = 200
  stop_patience: int = 2

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f'scale must be one of {SCALES}, got {self.scale}')
    if self.iters < 1:
      raise ValueError(f'iters must be >= 1, got {self.iters}')
    if self.mask_iters < 0:
      raise ValueError(f'mask_iters must be >= 0, got {self.mask_iters}')
    if not (0 < self.lr < math.inf and 0 < self.mask_lr < math.inf):
      raise ValueError(f'learning rates must be finite and > 0, got lr={self.lr}, mask_lr={self.mask_lr}')
    w = self.weights
    terms = (w.alpha, w.beta, w.gamma) + tuple(w.content or ())
    content_on = w.alpha > 0 and (w.content is None or any(c > 0 for c in w.content))
    if not all(0 <= t < math.inf for t in terms) or not (content_on or w.beta > 0 or w.gamma > 0):
      raise ValueError(f'loss weights must be finite and >= 0, and not all 0, got alpha={w.alpha}, '
                       f'beta={w.beta}, gamma={w.gamma}' + (f', content={w.content}' if w.content else ''))
    if self.input_type not in INPUT_TYPES:
      raise ValueError(f"input_type must be one of {INPUT_TYPES}, got '{self.input_type}'")
    if self.output_bias not in OUTPUT_BIASES:
      raise ValueError(f"output_bias must be one of {OUTPUT_BIASES}, got '{self.output_bias}'")
    if self.output_base not in OUTPUT_BASES:
      raise ValueError(f"output_base must be one of {OUTPUT_BASES}, got '{self.output_base}'")
    if self.output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got '{self.output}'")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f'ema_decay must be in [0, 1), got {self.ema_decay}')
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size must be >= 1, got {self.chunk_size}')
    if self.loop not in ('auto', 'scan', 'python'):
      raise ValueError(f"loop must be 'auto', 'scan' or 'python', got '{self.loop}'")
    if self.stop not in STOPS:
      raise ValueError(f"stop must be one of {STOPS}, got '{self.stop}'")
    for name, ok in (('stop_tol', self.stop_tol > 0), ('stop_window', self.stop_window >= 1),
                     ('stop_min_iters', self.stop_min_iters >= 0), ('stop_patience', self.stop_patience >= 1)):
      if not ok:
        bound = '> 0' if name == 'stop_tol' else ('>= 0' if name == 'stop_min_iters' else '>= 1')
        raise ValueError(f'{name} must be {bound}, got {getattr(self, name)}')
    if self.cpu_conv not in CPU_CONVS:
      raise ValueError(f"cpu_conv must be one of {CPU_CONVS}, got '{self.cpu_conv}'")
    if self.compute_dtype not in DTYPES:
      raise ValueError(f"compute_dtype must be one of {DTYPES}, got '{self.compute_dtype}'")

  def stop_rule(self, stage: str):
    """The optimize.StopRule of 'main' or 'mask', or None with stop='fixed'."""
    from dfp_jax.optimize import StopRule  # pylint: disable=g-import-not-at-top
    if self.stop == 'fixed':
      return None
    min_steps = self.stop_min_iters if stage == 'main' else min(self.stop_min_iters, self.mask_iters // 2)
    return StopRule(self.stop_tol, self.stop_window, min_steps, self.stop_patience)

  def compiler_options(self):
    """XLA compiler options of the step programs on CPU, as (name, value) pairs, or None."""
    return _CPU_CONV_OPTIONS[self.cpu_conv]

  def replace(self, **changes) -> 'FusionConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))
