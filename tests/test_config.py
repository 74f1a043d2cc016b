"""config: validation of FusionConfig, and the flags derived from the configuration dataclasses."""

import dataclasses

import pytest

from dfp_jax import config as config_lib
from dfp_jax import lightfield
from dfp_jax.config import FusionConfig


def test_config_rejects_bad_values():
  for bad in (dict(scale=3), dict(iters=0), dict(input_type='zeros'), dict(output_average='best'),
              dict(loop='while'), dict(output_bias='one'), dict(output_base='bicubic')):
    with pytest.raises(ValueError):
      FusionConfig(**bad)


@pytest.mark.parametrize('cls', [config_lib.FusionConfig, lightfield.LightFieldConfig])
def test_flag_defaults_are_the_dataclass_defaults(cls):
  """Every flag's default converts back to the dataclass's defaults: one source of truth."""
  values = {s.name: s.default(cls) for s in config_lib.flag_specs(cls)}
  assert config_lib.from_flag_values(values, cls) == cls()


def test_every_simple_config_field_has_a_flag_of_its_name():
  names = {s.name for s in config_lib.flag_specs()}
  nested = {'focus', 'image_net', 'mask_net', 'deep_decoder', 'loss_weights'}
  fields = {f.name for f in dataclasses.fields(config_lib.FusionConfig)}
  assert fields - nested <= names
  assert {'doublereblur', 'doublereblur_rule', 'doublereblur_argmax_sigma', 'channels', 'skip_channels',
          'mask_skip_channels', 'loss_weights', 'kernel_size', 'double_3x3', 'upsample',
          'strided_conv'} <= names
