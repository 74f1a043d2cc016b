"""The command-line flags, grouped by section, and their one conversion into typed job arguments.

Configuration flags are derived from the configuration dataclasses (`config.flag_specs`: FusionConfig's
method, network and runtime fields, LightFieldConfig's light-field fields), so each default and help
text is written once, in the dataclass. The flags defined here are the ones that are not configuration:
inputs, the output folder, the seed, batch and process options, and runtime switches.

`docs/cli.md` is generated from these definitions (`python -m dfp_jax.app.cli_reference`).
"""

from __future__ import annotations

from absl import flags
from absl import logging

from dfp_jax import align
from dfp_jax import config as config_lib
from dfp_jax import lightfield
from dfp_jax import tiles
from dfp_jax.app import batch_job
from dfp_jax.app import lightfield_job
from dfp_jax.app import scene
from dfp_jax.batch import STRATEGIES

FLAGS = flags.FLAGS

# Sections of `--helpfull` and docs/cli.md: (title, flag names). Config flags not listed go to 'method'.
SECTIONS = (
    ('inputs and outputs', ('inputs', 'input_dir', 'lightfield', 'output_dir', 'output_bit_depth')),
    ('registration', tuple(s.name for s in config_lib.flag_specs(align.AlignConfig))),
    ('light field', tuple(s.name for s in config_lib.flag_specs(lightfield.LightFieldConfig))),
    ('large images', tuple(s.name for s in config_lib.flag_specs(tiles.TileConfig))),
    ('method', ()),
    ('network', ('channels', 'skip_channels', 'mask_skip_channels', 'kernel_size', 'double_3x3',
                 'upsample', 'strided_conv')),
    ('runtime', ('seed', 'chunk_size', 'loop', 'compute_dtype', 'cpu_conv', 'check_memory',
                 'compilation_cache', 'compilation_cache_dir')),
    ('batch and processes', ('batch_strategy', 'max_scenes_per_step', 'resume', 'host_devices',
                             'coordinator_address', 'num_processes', 'process_id')),
)


def _define_spec(spec: config_lib.FlagSpec, default_of, values: flags.FlagValues) -> None:
  default = spec.default(default_of)
  if spec.kind == 'enum':
    flags.DEFINE_enum(spec.name, str(default), list(spec.choices), spec.help, flag_values=values)
  elif spec.kind == 'list':
    flags.DEFINE_list(spec.name, default, spec.help, flag_values=values)
  elif spec.kind == 'bool':
    flags.DEFINE_bool(spec.name, default, spec.help, flag_values=values)
  elif spec.kind == 'integer':
    flags.DEFINE_integer(spec.name, default, spec.help, flag_values=values)
  elif spec.kind == 'float':
    flags.DEFINE_float(spec.name, default, spec.help, flag_values=values)
  else:
    flags.DEFINE_string(spec.name, default, spec.help, flag_values=values)
  if spec.choices and spec.kind != 'enum':  # E.g. --scale: an integer from a fixed set.
    allowed = [str(c) for c in spec.choices]
    flags.register_validator(spec.name, lambda v, c=tuple(spec.choices): v in c,
                             f'--{spec.name} must be {", ".join(allowed[:-1])} or {allowed[-1]}',
                             flag_values=values)


def define_config_flags(classes=(config_lib.FusionConfig,), values: flags.FlagValues = FLAGS) -> None:
  """The flags of the configuration dataclasses `classes` (benchmark scripts define these too)."""
  for cls in classes:
    for spec in config_lib.flag_specs(cls):
      _define_spec(spec, cls, values)


def _definer(values: flags.FlagValues):
  def define(kind, name, default, text, **kwargs):
    getattr(flags, f'DEFINE_{kind}')(name=name, default=default, help=text, flag_values=values, **kwargs)
  return define


def define_runtime_flags(values: flags.FlagValues = FLAGS, *, seed: bool = True,
                         compilation_cache: bool = True) -> None:
  """--seed and the persistent compilation cache's flags (benchmark scripts define these too)."""
  define = _definer(values)
  if seed:
    define('integer', 'seed', 0, "Seed of the PRNG key (network initialisation, noise input); JAX's "
           'seeds are 32-bit.', lower_bound=0, upper_bound=2**32 - 1)
  if not compilation_cache:
    return
  define('bool', 'compilation_cache', True, "Use JAX's persistent compilation cache, so later runs of the "
         'same shapes skip compilation.')
  define('string', 'compilation_cache_dir', None, 'Folder of the persistent compilation cache (default: '
         'dfp_jax/jax in $XDG_CACHE_HOME, else in ~/.cache).')


def define_flags(values: flags.FlagValues = FLAGS) -> None:
  """Every flag of the application (`dfp-jax`, `python -m dfp_jax`, `experiments/run.py`)."""
  define = _definer(values)

  define('list', 'inputs', [], 'Input images of one scene, comma-separated (2 or more, any order; '
         'registered, same size). PNG/JPEG/BMP/TIFF, 8 or 16 bit, grey or colour.')
  define('string', 'input_dir', None, 'Batch mode: a folder with one subfolder per scene (its image files '
         'in name order); outputs go to --output_dir/<scene>/ plus manifest.json.')
  define('string', 'lightfield', None, 'Folder of sub-aperture views of one light field (HCI '
         'input_Cam###.png, <scene>_RR_CC.png, or a views.json): runs the light-field job.')
  define('string', 'output_dir', 'outputs/run', 'Folder for the results (replaced only when the run '
         'succeeds, and only if empty or a previous result of this tool).')
  define('enum', 'output_bit_depth', 'auto', 'Bit depth of fused.png and fused_lr.png; auto = 16 if any '
         'input has more than 8 bits (16-bit or float), else 8.', enum_values=['auto', '8', '16'])
  define_config_flags((config_lib.FusionConfig, align.AlignConfig, lightfield.LightFieldConfig,
                       tiles.TileConfig), values)
  define_runtime_flags(values)
  define('bool', 'check_memory', True, 'Refuse inputs whose estimated memory exceeds what is free.')
  define('enum', 'batch_strategy', 'auto', 'How scenes share the machine: vmap (one program over a group '
         'of scenes; best on GPU/TPU), shard (one scene per device, all devices at once), loop (one scene '
         'after another), auto (a short measured probe per shape picks the fastest).',
         enum_values=list(STRATEGIES))
  define('integer', 'max_scenes_per_step', None, 'Cap on the scenes optimised at once (default: as many '
         'as fit in memory).', lower_bound=1)
  define('bool', 'resume', True, 'Skip scenes already done with verified checksums, same inputs and '
         'same configuration.')
  define('integer', 'host_devices', 0, 'CPU backend, batch mode: split the host into this many JAX '
         'devices so the device-parallel strategies use every core (0 = one per core, at most 8; 1 = a '
         'single device). Ignored on GPU/TPU.')
  define('string', 'coordinator_address', None, 'Multi-host device setups: host:port of process 0 '
         '(jax.distributed.initialize).')
  define('integer', 'num_processes', 1, 'Multi-host device setups: number of processes.')
  define('integer', 'process_id', 0, "Multi-host device setups: this process's index.")


def config_of(cls, f=FLAGS):
  """The one conversion of flags into a configuration dataclass `cls` (its fields' flags)."""
  return config_lib.from_flag_values({s.name: f[s.name].value for s in config_lib.flag_specs(cls)}, cls)


def fusion_config(f=FLAGS) -> config_lib.FusionConfig:
  """The method's flags as the library's configuration."""
  return config_of(config_lib.FusionConfig, f)


def lightfield_config(f=FLAGS) -> lightfield.LightFieldConfig:
  lf_config = config_of(lightfield.LightFieldConfig, f)
  if lf_config.planes is not None and f['num_planes'].present and f.num_planes != len(lf_config.planes):
    logging.warning('--planes gives %d planes: --num_planes=%d is ignored', len(lf_config.planes),
                    f.num_planes)
  return lf_config


def _common(f) -> dict:
  return dict(config=fusion_config(f), output_dir=f.output_dir, output_bit_depth=f.output_bit_depth,
              seed=f.seed, check_memory=f.check_memory)


def scene_args(f=FLAGS) -> scene.SceneArgs:
  return scene.SceneArgs(inputs=tuple(f.inputs), align=config_of(align.AlignConfig, f),
                         tiles=config_of(tiles.TileConfig, f), **_common(f))


def lightfield_args(f=FLAGS) -> lightfield_job.LightFieldArgs:
  return lightfield_job.LightFieldArgs(folder=f.lightfield, lightfield=lightfield_config(f),
                                       tiles=config_of(tiles.TileConfig, f), **_common(f))


def batch_args(f=FLAGS) -> batch_job.BatchArgs:
  return batch_job.BatchArgs(input_dir=f.input_dir, strategy=f.batch_strategy,
                             max_scenes_per_step=f.max_scenes_per_step, resume=f.resume,
                             coordinator_address=f.coordinator_address, num_processes=f.num_processes,
                             process_id=f.process_id, align=config_of(align.AlignConfig, f), **_common(f))
