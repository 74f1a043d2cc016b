"""dfp_jax: Deep Fusion Prior in pure-functional JAX/Flax.

Multi-focus image fusion and super-resolution from two or more photos of one scene, with no training
data. The public API:

  fuse(images, scale=2, config=FusionConfig(), key=...) -> FusionResult   one scene, arrays in/out
  fuse_batch(scenes, config, strategy='auto') -> (results, BatchReport)     many scenes (vmap/shard/loop)
  load_light_field(folder), make_focal_stack(lf, LightFieldConfig(...)),
  fuse_light_field(lf, config, LightFieldConfig(...), key)                  light field -> stack -> DFP
  FusionConfig, DoubleReblurParams, LossWeights, NetConfig, LightFieldConfig  configuration
  StopRule                                                                 the convergence stop
  decision_maps, double_reblur                                             the focus measure
  SkipNet                                                                  the network
  read_image, write_image, load_inputs                                     image I/O
  estimate_memory                                                          memory per scene

The command-line application is `dfp_jax.app` (`dfp-jax`, `python -m dfp_jax`); docs/design.md maps
every module to the part of the method it owns.
"""

__version__ = '0.1.0'

from dfp_jax.batch import BatchError, BatchReport, fuse_batch
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError, MemoryBudgetError
from dfp_jax.focus import DoubleReblurParams, decision_maps, double_reblur
from dfp_jax.fusion import FusionResult, fuse
from dfp_jax.image_io import load_inputs, read_image, write_image
from dfp_jax.lightfield import LightFieldConfig, fuse_light_field, load_light_field, make_focal_stack
from dfp_jax.losses import LossWeights
from dfp_jax.memory import estimate_memory
from dfp_jax.models import NetConfig, SkipNet
from dfp_jax.optimize import StopRule

__all__ = [
    'FusionConfig', 'FusionResult', 'DoubleReblurParams', 'LossWeights', 'NetConfig', 'SkipNet',
    'InputError', 'MemoryBudgetError', 'decision_maps', 'double_reblur', 'estimate_memory', 'fuse',
    'load_inputs', 'read_image', 'write_image', 'fuse_batch', 'BatchError', 'BatchReport', 'StopRule',
    'LightFieldConfig', 'load_light_field', 'make_focal_stack', 'fuse_light_field',
]
