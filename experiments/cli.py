"""Flags and the single-scene job of `experiments/run.py` (kept importable so tests can drive it)."""

from __future__ import annotations

import contextlib
import datetime
import logging as std_logging
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np
import jax

import dfp_jax
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import optimize
from dfp_jax import resample
from dfp_jax import viz
from dfp_jax.config import FusionConfig
from dfp_jax.focus import DoubleReblurParams
from dfp_jax.losses import LossWeights
from dfp_jax.models import NetConfig

USER_ERRORS = (errors.InputError, errors.MemoryBudgetError, ValueError, optimize.NonFiniteLossError)


def fail(message: str, code: int = 2):
  """One line on stderr, no traceback, non-zero exit."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(code)


def define_flags():
  """All flags of experiments/run.py, grouped by section."""
  # Inputs and outputs.
  flags.DEFINE_list('inputs', [], 'Input images of one scene, comma-separated (2 or more, any order; '
                    'registered, same size). PNG/JPEG/BMP/TIFF, 8 or 16 bit, grey or colour.')
  flags.DEFINE_string('output_dir', 'outputs/run', 'Folder for the results (replaced only when the '
                      'run succeeds).')
  flags.DEFINE_enum('output_bit_depth', 'auto', ['auto', '8', '16'], 'Bit depth of fused.png and '
                    'fused_lr.png; auto = 16 if any input has more than 8 bits (16-bit or float), else 8.')
  # Method (DFP_METHOD.md).
  flags.DEFINE_integer('scale', 2, 'Super-resolution factor: 1 (plain fusion), 2 or 4.')
  flags.DEFINE_integer('iters', 1000, 'Main-stage (fusion prior) steps K.')
  flags.DEFINE_integer('mask_iters', 500, 'Decision-embedding steps K_m; 0 turns the embedding off.')
  flags.DEFINE_string('doublereblur', '5,3,3,0.01,1', 'DoubleReblur parameters kg,kd,ke,t,f.')
  flags.DEFINE_enum('doublereblur_rule', 'compare', ['compare', 'threshold'], 'Two-input decision of '
                    'DoubleReblur: compare = where the first input\'s second-reblur response (box mean '
                    'over kd) is at least the second\'s (no threshold; t unused); threshold = the '
                    'papers\' s > t (t is absolute: scene-dependent).')
  flags.DEFINE_float('doublereblur_argmax_sigma', 3.0, 'N > 2 inputs: sigma (pixels at the input size) of '
                     'the Gaussian window each input\'s focus measure is averaged over before the argmax '
                     'that makes the decision maps; 0 = the kd x kd box (the rule before this flag). Not '
                     'used for N = 2.')
  flags.DEFINE_float('lr', 1e-3, 'Adam learning rate of the main stage.')
  flags.DEFINE_float('mask_lr', 1e-3, 'Adam learning rate of the decision embedding.')
  flags.DEFINE_integer('seed', 0, 'Seed of the PRNG key (network init, noise input); JAX\'s seeds are 32-bit.',
                       lower_bound=0, upper_bound=2**32 - 1)
  flags.DEFINE_enum('input_type', 'mean', ['mean', 'noise'], 'Network input z: bicubic of the inputs\' '
                    'mean, or uniform noise (deep image prior).')
  flags.DEFINE_enum('output_bias', 'mean', ['mean', 'zero'], 'Initial bias of the image net\'s sigmoid '
                    'head: mean = logit of the inputs\' mean colour (the output starts at that colour), '
                    'zero = the usual initialisation (the authors\' code).')
  flags.DEFINE_enum('output_base', 'map_fusion', ['map_fusion', 'none'], 'What the image net\'s output is '
                    'relative to. none: the papers\' sigmoid(net(z)). map_fusion: sigmoid(net(z) + '
                    'logit(B)), B = bicubic of the fusion by the decision maps, so the net fits the '
                    'correction to B (--output_bias unused).')
  flags.DEFINE_enum('stop', 'auto', ['auto', 'fixed'], 'auto: end each stage when its result has '
                    'converged (no ground truth: the EMA image changes by less than --stop_tol per '
                    '--stop_window steps, twice in a row, after --stop_min_iters); --iters and '
                    '--mask_iters are then maxima. fixed: run exactly --iters and --mask_iters.')
  flags.DEFINE_float('stop_tol', 2e-4, 'Convergence threshold: mean absolute change of the result per '
                     'window, intensities in [0, 1] (2e-4 = 0.05 grey levels of 255).')
  flags.DEFINE_integer('stop_min_iters', 200, 'Main-stage steps before the stop may end it (the mask '
                       'stage uses min(this, mask_iters / 2)).')
  flags.DEFINE_integer('stop_window', 50, 'Steps per convergence check.')
  flags.DEFINE_enum('output_average', 'ema', ['ema', 'last'], 'Result image: EMA (decay 0.99) of the '
                    'iterates\' outputs, or the last iterate. Never chosen with a ground truth.')
  flags.DEFINE_list('loss_weights', ['1', '0.5', '0.1'], 'alpha,beta,gamma: content, joint gradient, '
                    'gradient limit.')
  # Network.
  flags.DEFINE_list('channels', ['8', '16', '32', '64', '128'], 'SKIPnet channels per scale (down = up); '
                    'the count is the depth D.')
  flags.DEFINE_list('skip_channels', ['4', '4', '4', '4', '4'], 'Skip channels per scale, image net.')
  flags.DEFINE_list('mask_skip_channels', ['0', '0', '0', '4', '4'], 'Skip channels per scale, mask net.')
  flags.DEFINE_integer('kernel_size', 5, 'Convolution size n_d (odd).')
  flags.DEFINE_bool('double_3x3', False, 'Two 3x3 convolutions in place of each n_d x n_d one.')
  flags.DEFINE_enum('upsample', 'bilinear', ['bilinear', 'nearest'], 'Decoder upsampling.')
  flags.DEFINE_enum('strided_conv', 'space_to_depth', ['space_to_depth', 'direct'], 'How the encoder\'s '
                    'stride-2 convolutions are computed: as a stride-1 convolution on the space-to-depth '
                    'input (faster on XLA:CPU) or directly. Same parameters, same result up to rounding.')
  # Runtime.
  flags.DEFINE_integer('chunk_size', 50, 'Steps per chunk (one host sync each; the program a '
                       "lax.scan loop compiles) with --stop=fixed; --stop=auto uses --stop_window instead. "
                       'Progress lines come at most every 10 s, between chunks.')
  flags.DEFINE_enum('loop', 'auto', ['auto', 'scan', 'python'], 'Step loop: lax.scan chunks, jitted '
                    'steps dispatched from Python, or auto (python on CPU, scan on accelerators).')
  flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16'], 'Convolution compute dtype.')
  flags.DEFINE_enum('cpu_conv', 'eigen', ['eigen', 'ynnpack'], 'Convolution kernels on XLA:CPU: eigen '
                    '(XLA\'s own; main steps 1.17-1.46x faster for this network) or ynnpack (XLA\'s default '
                    'in jax 0.10). Ignored on GPU/TPU.')
  flags.DEFINE_bool('check_memory', True, 'Refuse inputs whose estimated memory exceeds what is free.')
  flags.DEFINE_bool('compilation_cache', True, 'Use JAX\'s persistent compilation cache, so later runs '
                    'of the same shapes skip compilation.')
  flags.DEFINE_string('compilation_cache_dir', os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'dfp_jax', 'jax'),
                      'Folder of the persistent compilation cache.')


def parse_corners(items, name: str = 'regions') -> list[tuple[int, int]]:
  """'y:x' items of a region-list flag (the experiment scripts' --regions) as (y, x) pairs."""
  try:
    out = [tuple(int(v) for v in item.split(':')) for item in items]
  except ValueError:
    out = []
  if not out or any(len(c) != 2 for c in out):
    raise app.UsageError(f'--{name} needs y:x corners, got {",".join(items)}')
  return out


def _ints(name, values):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f'--{name} must be comma-separated integers, got {",".join(values)}') from None


def config_from_flags(f) -> FusionConfig:
  """The one conversion of flags into the library's configuration."""
  channels = _ints('channels', f.channels)
  skip = _ints('skip_channels', f.skip_channels)
  mask_skip = _ints('mask_skip_channels', f.mask_skip_channels)
  if not (len(channels) == len(skip) == len(mask_skip)):
    raise ValueError(f'--channels, --skip_channels and --mask_skip_channels need the same number of '
                     f'scales, got {len(channels)}, {len(skip)}, {len(mask_skip)}')
  try:
    weights = [float(w) for w in f.loss_weights]
  except ValueError:
    raise ValueError(f'--loss_weights must be three numbers alpha,beta,gamma, got '
                     f'{",".join(f.loss_weights)}') from None
  if len(weights) != 3:
    raise ValueError(f'--loss_weights must be three numbers alpha,beta,gamma, got {",".join(f.loss_weights)}')
  if f.scale not in (1, 2, 4):
    raise ValueError(f'--scale must be 1, 2 or 4, got {f.scale}')
  net = dict(kernel_size=f.kernel_size, double_3x3=f.double_3x3, upsample=f.upsample,
             strided_conv=f.strided_conv)
  return FusionConfig(
      scale=f.scale, iters=f.iters, mask_iters=f.mask_iters, lr=f.lr, mask_lr=f.mask_lr,
      input_type=f.input_type, output_bias=f.output_bias, output_base=f.output_base,
      doublereblur=DoubleReblurParams.parse(f.doublereblur, rule=f.doublereblur_rule,
                                             argmax_sigma=f.doublereblur_argmax_sigma),
      image_net=NetConfig(channels, channels, skip, **net),
      mask_net=NetConfig(channels, channels, mask_skip, **net),
      weights=LossWeights(*weights), output=f.output_average, chunk_size=f.chunk_size,
      compute_dtype=f.compute_dtype, cpu_conv=f.cpu_conv, loop=f.loop, stop=f.stop, stop_tol=f.stop_tol,
      stop_min_iters=f.stop_min_iters, stop_window=f.stop_window)


def setup_runtime(f):
  """Process-wide JAX settings: only the entry point does this."""
  # OpenCV's own warnings (e.g. libpng on a truncated file) would add lines to our one-line errors.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
  # JAX's platform probing logs at INFO ("Unable to initialize backend 'tpu'") on every CPU run; its
  # warnings (e.g. a GPU present without a CUDA jaxlib) still show.
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING)
  if getattr(f, 'num_processes', 1) <= 1:  # Several processes: after jax.distributed.initialize.
    check_backend()
  if f.compilation_cache:
    try:
      os.makedirs(f.compilation_cache_dir, exist_ok=True)
      jax.config.update('jax_compilation_cache_dir', f.compilation_cache_dir)
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
      jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    except OSError as e:
      logging.warning('compilation cache disabled: cannot create %s (%s)', f.compilation_cache_dir, e)


def check_backend():
  """A --jax_platforms (or JAX_PLATFORMS) this machine cannot give, as one line: it fails deep inside
  JAX otherwise (a bare AssertionError for 'cuda' with a CPU-only jaxlib). Initialises the backend."""
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:
    platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS') or 'default'
    raise errors.InputError(f'JAX backend {platforms!r} is not available here '
                            f'({str(e).strip() or type(e).__name__}); check --jax_platforms / '
                            'JAX_PLATFORMS and the installed jaxlib') from None


@contextlib.contextmanager
def private_compilation_cache(prefix: str = 'dfp_bench_cache_'):
  """For benchmarks: JAX's persistent compilation cache in a temporary folder of this process's own
  (every program cached, however fast it compiled), removed on exit, so that a "cold" compile is cold
  whatever earlier runs left in the user's cache. Yields `empty()`, which empties it again; also yields
  `hits()`, the number of persistent-cache hits so far (JAX's monitoring event)."""
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix=prefix)
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  count = [0]

  def listener(event, **kwargs):
    del kwargs
    if event == '/jax/compilation_cache/cache_hits':
      count[0] += 1

  monitoring.register_event_listener(listener)

  def empty():
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)

  try:
    yield empty, lambda: count[0]
  finally:
    if hasattr(monitoring, 'unregister_event_listener'):  # Older jax lacks it.
      monitoring.unregister_event_listener(listener)
    shutil.rmtree(folder, ignore_errors=True)


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss) if sys.platform == 'darwin' else int(rss) * 1024


def versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {'dfp_jax': dfp_jax.__version__, 'jax': jax.__version__,
          'jaxlib': getattr(jax.lib, '__version__', None) or _pkg_version('jaxlib'),
          'flax': flax.__version__, 'optax': optax.__version__, 'numpy': np.__version__,
          'opencv': cv2.__version__, 'python': platform.python_version()}


def _pkg_version(name):
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(name)
  except Exception:  # pylint: disable=broad-except
    return None


def write_scene_outputs(folder: str, result: fusion.FusionResult, images, infos, config: FusionConfig,
                        bit_depth: int, extra: dict | None = None) -> dict:
  """Writes fused.png, fused_lr.png, decision maps, loss.png, comparison.png and summary.json."""
  n = len(images)
  files = []

  def put_image(name, image, depth=8):
    image_io.write_image(os.path.join(folder, name), image, depth)
    files.append(name)

  put_image('fused.png', result.fused, bit_depth)
  put_image('fused_lr.png', result.fused_lr, bit_depth)
  if n == 2:
    put_image('decision_map_raw.png', viz.decision_map_image(result.decision_maps_raw[0]))
    put_image('decision_map.png', viz.decision_map_image(result.decision_maps[0]))
  else:
    from dfp_jax import lightfield  # pylint: disable=g-import-not-at-top
    for i in range(n):
      put_image(f'decision_map_raw_{i:02d}.png', viz.decision_map_image(result.decision_maps_raw[i]))
      put_image(f'decision_map_{i:02d}.png', viz.decision_map_image(result.decision_maps[i]))
    index = np.asarray(lightfield.index_map(result.decision_maps))
    colour = np.asarray(lightfield.index_map_image(index, n))
    legend = lightfield.index_map_legend(n, [os.path.basename(i.path) for i in infos],
                                         width=colour.shape[1])
    put_image('index_map.png', np.concatenate([colour, legend], axis=0))
  put_image('loss.png', viz.loss_plot(result.history))
  bicubic = np.clip(np.asarray(resample.bicubic_upsample(np.mean(np.stack(images), 0), config.scale)), 0, 1)
  put_image('comparison.png', viz.comparison(images, bicubic, result.fused,
                                             [os.path.basename(i.path) for i in infos]))
  final = {stage: {k: float(v[-1]) for k, v in terms.items()} for stage, terms in result.history.items()}
  t = result.timings
  summary = {
      'dfp_jax_version': dfp_jax.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': shlex.join(sys.argv),
      'config': config.to_dict(),
      'inputs': [i.to_dict() for i in infos],
      'output': {'height': int(result.fused.shape[0]), 'width': int(result.fused.shape[1]),
                 'channels': int(result.fused.shape[2]), 'bit_depth': bit_depth,
                 'files': files + ['summary.json']},
      'decision_map_fractions': {
          'raw': [float(x) for x in result.decision_maps_raw.mean(axis=(1, 2))],
          'embedded': [float(x) for x in result.decision_maps.mean(axis=(1, 2))]},
      'timings_s': {k: v for k, v in t.items() if k.endswith('_s')},
      'iterations_per_second': {'mask': t.get('mask_steps_per_s'), 'main': t.get('main_steps_per_s')},
      'iterations': {'mask': t.get('mask_steps', 0), 'main': t.get('main_steps')},
      'final_loss': final,
      'versions': versions(),
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
  }
  if extra:
    summary.update(extra)
  image_io.write_json(os.path.join(folder, 'summary.json'), summary)
  return summary


def _check_commas(paths) -> None:
  """A file whose name holds a comma cannot be given: --inputs splits at commas. Say so, rather than
  'file not found' for its pieces."""
  for i in range(len(paths)):
    if os.path.exists(paths[i]):
      continue
    for j in range(i + 2, len(paths) + 1):
      joined = ','.join(paths[i:j])
      if os.path.isfile(joined):
        raise errors.InputError(f'{joined}: its name holds a comma, and --inputs splits at commas; rename '
                                'the file (or link it under a name without one)')


def run_single(f) -> int:
  """The single-scene job: --inputs -> --output_dir."""
  config = config_from_flags(f)
  if not f.inputs:
    raise errors.InputError('no inputs: pass --inputs=a.png,b.png (2 or more images) or a --flagfile')
  _check_commas(f.inputs)
  images, infos = image_io.load_inputs(f.inputs)
  h, w, c = images[0].shape
  fusion.validate_images(images, config, [i.path for i in infos])
  mem = fusion.estimate_memory(h, w, len(images), c, config)
  if f.check_memory:
    mem = fusion.check_memory(h, w, len(images), c, config, name=infos[0].path)
  image_io.check_output_dir(f.output_dir, protect=[i.path for i in infos])  # Before any log or work.
  bit_depth = int(f.output_bit_depth) if f.output_bit_depth != 'auto' else image_io.auto_bit_depth(infos)
  logging.info('DFP: %d inputs of %dx%dx%d, x%d -> %dx%d; backend %s; estimated peak memory %.0f MiB',
               len(images), h, w, c, config.scale, config.scale * h, config.scale * w,
               jax.default_backend(), mem['peak'] / 2 ** 20)
  with image_io.StagingDir(f.output_dir, protect=[i.path for i in infos]) as tmp:
    result = fusion.fuse(images, config=config, key=jax.random.key(f.seed), names=[i.path for i in infos])
    write_scene_outputs(tmp, result, images, infos, config, bit_depth,
                        extra={'seed': f.seed, 'memory_estimate_bytes': mem})
  logging.info('done in %.1f s: results in %s', result.timings['total_s'],
               image_io.resolve_output_dir(f.output_dir))
  return 0
