"""The per-scene optimisation loop: pure jitted steps, run in chunks (`lax.scan` on accelerators,
Python-dispatched steps on CPU: `resolve_loop`).

A `Stage` bundles what is static about one optimisation (the loss function, the optax optimiser, the
EMA decay). Everything that changes is a pytree:

  * `TrainState`: step counter, parameters, optimiser state, the latest network output and an
    exponential moving average (EMA) of the outputs;
  * `problem`: the scene's arrays (inputs, decision maps, network input z, ...), never modified.

`train_step(stage, state, problem)` is one Adam step; `run_chunk(stage, state, problem, num_active,
chunk_size)` scans `chunk_size` steps of which the first `num_active` update the state (so the last,
shorter chunk reuses the same compiled program, and a converged scene in a batch can be frozen);
`run_stage` drives the chunks from the host, logs progress with an ETA between chunks (one host sync
per chunk, none per step) and raises `NonFiniteLossError` naming the first bad step. All functions are
written for one scene, with no scene axis: the batch engine vmaps them.

How a chunk is executed is a measured choice per backend (`loop`):
  * 'scan': one compiled `lax.scan` program per chunk. The right choice on GPU/TPU.
  * 'python': the jitted, state-donating `train_step` dispatched `chunk_size` times from Python (JAX
    dispatch is asynchronous, so there is still no host sync inside the chunk).
  * 'auto' (default): 'python' on CPU, 'scan' elsewhere.
Why: on XLA:CPU (jax 0.10.2) the convolution gradients run an order of magnitude slower inside any
`while` loop than in straight-line code, and a fully unrolled scan takes minutes to compile
(docs/design.md "Runtime choices").

A stage may carry XLA compiler options for its step programs (`Stage.compiler_options`, applied on CPU
only): `FusionConfig.cpu_conv='eigen'` (default) keeps XLA:CPU's convolutions off YNNPACK, whose
kernels are several times slower than XLA's Eigen ones for this network's narrow, odd channel counts
(docs/design.md "Runtime choices").

The output of a stage is never chosen with a ground truth: it is the EMA of the iterates' outputs
(bias-corrected, decay 0.99 as in deep image prior) or the last iterate's output.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
import optax

# loss_fn(params, problem) -> (loss, (terms: dict[str, scalar], output: array))
LossFn = Callable[[Any, Any], tuple]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the stage and the first bad step."""


class TrainState(NamedTuple):
  step: jnp.ndarray  # int32 scalar: number of updates applied.
  params: Any  # Network parameters.
  opt_state: Any  # optax state.
  output: jnp.ndarray  # Output of the latest forward pass (before its update).
  ema: jnp.ndarray  # Un-normalised EMA of outputs; divide by (1 - decay^step) to read.


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
  """Static description of one optimisation stage (hashable by identity)."""
  name: str  # 'mask' or 'main': used in logs and errors.
  loss_fn: LossFn  # Pure loss of (params, problem).
  optimizer: optax.GradientTransformation  # E.g. optax.adam(1e-3).
  ema_decay: float = 0.99  # Decay of the output EMA.
  net: Any = None  # The Flax module the loss applies (used to initialise parameters), if any.
  # XLA compiler options of the step programs on CPU, as (name, value) pairs (None: XLA's defaults).
  compiler_options: tuple | None = None

  def step(self, state: 'TrainState', problem) -> tuple['TrainState', dict]:
    """One update of `state` (`train_step`); the batch engine overrides it with a vmapped one."""
    return train_step(self, state, problem)

  def output_change(self, state: 'TrainState', previous):
    """(result, change): the stage's current result (`ema_output`) and its mean absolute change from
    `previous` (a scalar; the batch engine's version returns one per scene)."""
    current = ema_output(self, state)
    return current, jnp.mean(jnp.abs(current - previous))

  @functools.cached_property
  def jit_output_change(self):
    return jax.jit(self.output_change)

  @functools.cached_property
  def jit_step(self):
    """`step` jitted for this stage, the state donated."""
    return jax.jit(self.step, donate_argnums=(0,))

  @functools.cached_property
  def jit_chunk(self):
    """`run_chunk` jitted for this stage, the state donated (it is replaced every call)."""
    return jax.jit(functools.partial(run_chunk, self), static_argnames=('chunk_size',),
                   donate_argnums=(0,))

  @functools.cached_property
  def compiled(self) -> dict:
    """Executables compiled by `compile_chunk`, keyed by loop, chunk size and argument shapes, so a
    stage run again on the same shapes (the next scene of a batch) is not traced or compiled again."""
    return {}


def init_state(stage: Stage, params, output_shape, dtype=jnp.float32) -> TrainState:
  """Fresh state for `params`; output buffers of `output_shape`."""
  # Distinct buffers: the state is donated, and one buffer cannot be donated twice.
  return TrainState(jnp.zeros((), jnp.int32), params, stage.optimizer.init(params),
                    jnp.zeros(output_shape, dtype), jnp.zeros(output_shape, dtype))


def ema_output(stage: Stage, state: TrainState) -> jnp.ndarray:
  """The bias-corrected EMA of the outputs seen so far (the last output if no step was taken)."""
  corr = 1.0 - jnp.power(jnp.float32(stage.ema_decay), state.step.astype(jnp.float32))
  return jnp.where(state.step > 0, state.ema / jnp.maximum(corr, 1e-12), state.output)


def train_step(stage: Stage, state: TrainState, problem) -> tuple[TrainState, dict]:
  """One optimiser step. Returns the new state and the loss terms of this step."""
  (_, (terms, output)), grads = jax.value_and_grad(stage.loss_fn, has_aux=True)(state.params, problem)
  updates, opt_state = stage.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = stage.ema_decay
  ema = d * state.ema + (1.0 - d) * output.astype(state.ema.dtype)
  return TrainState(state.step + 1, params, opt_state, output.astype(state.output.dtype), ema), terms


def run_chunk(stage: Stage, state: TrainState, problem, num_active, chunk_size: int):
  """`chunk_size` scanned steps; only the first `num_active` change the state.

  Returns (state, terms) with every term stacked to [chunk_size] (inactive steps report NaN-free
  copies of the state's loss: they are dropped by `run_stage`).
  """

  def body(carry, i):
    new, terms = stage.step(carry, problem)
    active = i < num_active
    carry = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, carry)
    return carry, terms

  return lax.scan(body, state, jnp.arange(chunk_size))


@dataclasses.dataclass(frozen=True)
class StopRule:
  """The convergence stop (no ground truth): stop when the stage's result (the EMA of the iterates'
  outputs) changes by less than `tol` (mean absolute change per pixel and channel, intensities in
  [0, 1]) per `window` steps, `patience` windows in a row, once at least `min_steps` steps ran.
  With several scenes in one program, all of them must satisfy it."""
  tol: float = 1e-4
  window: int = 50
  min_steps: int = 200
  patience: int = 2

  def stop_step(self, changes) -> int | None:
    """Where this rule ends a stage whose checks gave `changes` [(step, change)] (host scalars, in
    order; e.g. a fixed run's trajectory): the first step at which `patience` checks in a row, each
    at or after `min_steps`, are below `tol`; None if it never does. `run_stage` applies the same test
    as it goes."""
    streak = 0
    for step, change in changes:
      streak = streak + 1 if (step >= self.min_steps and change < self.tol) else 0
      if streak >= self.patience:
        return step
    return None


@dataclasses.dataclass
class StageReport:
  """What `run_stage` measured (host values)."""
  history: dict  # term -> float32 [num_steps].
  seconds: float  # Wall time of the stage including compilation.
  compile_seconds: float  # Time of the first chunk call beyond a normal chunk (compilation).
  steps: int  # Steps run.
  max_steps: int = 0  # Steps allowed (== steps unless the stop rule ended the stage early).
  changes: list = dataclasses.field(default_factory=list)  # [(step, change)] checked by the stop rule.
  stopped_early: bool = False
  stopped_at: Any = None  # Steps that count for each scene of a group (frozen after), or an int.

  @property
  def steps_per_second(self) -> float:
    run = self.seconds - self.compile_seconds
    return self.steps / run if run > 0 else float('nan')


ProgressFn = Callable[[str, int, int, float, dict], None]


def log_progress(stage: str, done: int, total: int, elapsed: float, terms: dict) -> None:
  """Default progress reporter: one absl INFO line with rate and ETA."""
  rate = done / elapsed if elapsed > 0 else float('nan')
  eta = (total - done) / rate if rate > 0 else float('nan')
  loss = ' '.join(f'{k}={v:.4g}' for k, v in terms.items())
  logging.info('[%s] step %d/%d (%.0f%%)  %.2f it/s  ETA %s  %s', stage, done, total,
               100.0 * done / max(total, 1), rate, format_seconds(eta), loss)


def format_seconds(s: float) -> str:
  """A duration for progress lines: '42s', '3m05s', '2h07m'; '?' when unknown."""
  if not np.isfinite(s):
    return '?'
  s = int(round(s))
  if s >= 3600:
    return f'{s // 3600}h{s % 3600 // 60:02d}m'
  return f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'


def resolve_loop(loop: str) -> str:
  """'auto' -> 'python' on CPU, 'scan' on accelerators; other values are checked and returned."""
  if loop not in ('auto', 'scan', 'python'):
    raise ValueError(f"loop must be 'auto', 'scan' or 'python', got '{loop}'")
  if loop == 'auto':
    return 'python' if jax.default_backend() == 'cpu' else 'scan'
  return loop


def compile_chunk(stage: Stage, state: TrainState, problem, chunk_size: int, loop: str = 'scan'):
  """Ahead-of-time compiles the program that runs a chunk; returns (run, seconds) where
  run(state, problem, n) -> (state, terms stacked to [n] (device arrays))."""
  key = (loop, chunk_size, signature((state, problem)))
  if key in stage.compiled:
    return stage.compiled[key], 0.0
  t0 = time.perf_counter()
  if loop == 'scan':
    compiled = compile_with_options(
        stage.jit_chunk.lower(state, problem, jnp.int32(0), chunk_size=chunk_size), stage)

    def run(state, problem, n):
      state, terms = compiled(state, problem, jnp.int32(n))
      return state, {k: v[:n] for k, v in terms.items()}
  else:
    compiled = compile_with_options(stage.jit_step.lower(state, problem), stage)

    def run(state, problem, n):
      per_step = []
      for _ in range(n):
        state, terms = compiled(state, problem)
        per_step.append(terms)
      return state, jax.tree.map(lambda *v: jnp.stack(v), *per_step)
  run.executable = compiled  # For memory / cost analysis.
  stage.compiled[key] = run
  return run, time.perf_counter() - t0


def compile_with_options(lowered, stage: Stage):
  """`lowered.compile()` with the stage's compiler options on CPU. An XLA that rejects an option
  (a renamed flag in another jaxlib) gets a logged warning and XLA's defaults, never a failed run."""
  if not stage.compiler_options or jax.default_backend() != 'cpu':
    return lowered.compile()
  try:
    return lowered.compile(compiler_options=dict(stage.compiler_options))
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError: INVALID_ARGUMENT)
    logging.warning('XLA rejected the compiler options %s (%s); compiling with its defaults',
                    dict(stage.compiler_options), str(e).splitlines()[0][:200])
    return lowered.compile()


def signature(tree) -> tuple:
  """What a compiled program depends on: the tree structure, shapes, dtypes and shardings of `tree`."""
  leaves, treedef = jax.tree.flatten(tree)
  return (str(treedef),) + tuple((tuple(x.shape), str(x.dtype), str(getattr(x, 'sharding', '')))
                                 for x in leaves)


# One-off programs (parameter initialisation) compiled at XLA's lowest backend optimisation level:
# XLA:CPU spends many seconds optimising the initialisers' random-number code (threefry, truncated
# normal) for a run of a few milliseconds; at level 0 it compiles in a fraction of that and gives
# bit-identical values (tests/test_fusion.py checks it). Keyed by function, static arguments and argument shapes.
_ONE_OFF_OPTIONS = {'xla_backend_optimization_level': 0}
_one_off_cache: collections.OrderedDict = collections.OrderedDict()


def clear_one_off_cache() -> None:
  """Forgets the one-off programs (benchmarks timing a cold start)."""
  _one_off_cache.clear()


def call_one_off(fn, *args, **static):
  """fn(*args, **static) for a jitted `fn` with static keyword arguments, compiled cheaply on CPU."""
  if jax.default_backend() != 'cpu':
    return fn(*args, **static)
  key = (fn, tuple(sorted(static.items())), signature(args))
  compiled = _one_off_cache.get(key)
  if compiled is None:
    compiled = fn.lower(*args, **static).compile(compiler_options=_ONE_OFF_OPTIONS)
    _one_off_cache[key] = compiled
    while len(_one_off_cache) > 64:
      _one_off_cache.popitem(last=False)
  return compiled(*args)



def run_stage(stage: Stage, state: TrainState, problem, num_steps: int, chunk_size: int = 50,
              progress: ProgressFn | None = log_progress, progress_every_s: float = 10.0,
              loop: str = 'auto', stop: StopRule | None = None):
  """Runs `num_steps` steps of `stage` from `state` (fewer if `stop` says the result has converged);
  returns (state, StageReport).

  The program is compiled first (tens of seconds on a CPU, logged as such; the persistent compilation
  cache makes later runs of the same shape skip it). Then one host sync per chunk. With a stop rule,
  the chunk size is the rule's window.
  """
  loop = resolve_loop(loop)
  if stop is not None:
    chunk_size = stop.window
  changes, streak, previous, stopped_at = [], 0, None, None
  history: dict[str, list] = {}
  t0 = time.perf_counter()
  compile_s = 0.0
  if num_steps > 0:
    chunk_size = max(1, min(chunk_size, num_steps))
    logging.info('[%s] compiling (the first run of a shape can take a minute on a CPU)', stage.name)
    run, compile_s = compile_chunk(stage, state, problem, chunk_size, loop)
    logging.info('[%s] compiled in %.1f s; running %d steps (%s loop)', stage.name, compile_s,
                 num_steps, loop)
  done = 0
  t_run = time.perf_counter()
  last_report = t_run
  while done < num_steps:
    n = min(chunk_size, num_steps - done)
    state, terms = run(state, problem, n)
    terms = jax.device_get(terms)  # One host sync per chunk.
    for k, v in terms.items():
      history.setdefault(k, []).append(np.asarray(v, np.float32))
    total = np.asarray(terms['total'])
    finite = np.all(np.isfinite(total.reshape(total.shape[0], -1)), axis=1)  # [n] (any scene axis)
    if not np.all(finite):
      bad = done + int(np.argmin(finite))
      raise NonFiniteLossError(
          f'{stage.name} stage: the loss became non-finite at step {bad} (of {num_steps}); '
          'try a lower learning rate or check the inputs for NaNs')
    done += n
    converged = False
    if stop is not None:
      current, change = stage.jit_output_change(state, previous if previous is not None else
                                                jnp.float32(0))
      change = np.asarray(change)  # A scalar, or one value per scene for a group of scenes.
      if previous is not None:
        changes.append((done, change.tolist()))
        streak = np.where((done >= stop.min_steps) & (change < stop.tol), streak + 1, 0)
        finished = streak >= stop.patience
        if stopped_at is None:
          stopped_at = np.full(change.shape, -1)
        stopped_at = np.where(finished & (stopped_at < 0), done, stopped_at)
        converged = bool(np.all(finished))
        if not converged and np.any(finished) and hasattr(stage, 'set_active'):
          problem = stage.set_active(problem, ~finished)  # Freeze the scenes that are done.
      previous = current
    now = time.perf_counter()
    if progress is not None and (now - last_report >= progress_every_s or done == num_steps or converged):
      progress(stage.name, done, num_steps, now - t_run,
               {k: float(np.mean(v[-1])) for k, v in terms.items()})  # Mean over scenes, if any.
      last_report = now
    if converged:
      logging.info('[%s] converged at step %d: the result changed by less than %.2g per %d steps '
                   '%d times in a row (--stop=auto)', stage.name, done, stop.tol, stop.window,
                   stop.patience)
      break
  seconds = time.perf_counter() - t0
  hist = {k: np.concatenate(v) for k, v in history.items()}
  if stopped_at is None:
    stopped_at = np.full(np.shape(changes[-1][1]) if changes else (), -1)
  stopped_at = np.where(stopped_at < 0, done, stopped_at)
  return state, StageReport(hist, seconds, compile_s, done, num_steps, changes, done < num_steps,
                            stopped_at.tolist())
