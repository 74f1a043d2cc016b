"""Tests of dfp_jax.optimize: steps, chunks, the two loops, the output EMA, NaN detection.

Two kinds of stage:
  * a quadratic toy stage on a small parameter pytree with plain SGD, whose iterates and outputs have a
    closed form (w_{t+1} = w_t - 2 lr (w_t - target)), compiled in well under a second;
  * the real main stage (`fusion.main_stage`) with a depth-2 SKIPnet (3x3 kernels, min size 4) on a
    16 x 16 pair at x2 (32 x 32 output), 5 steps in chunks of 2 (so the last chunk is partial). Each
    `run_stage` of it compiles one program (about 3 s on a 2-core CPU).
Float32 tolerances: 1e-6 on the toy stage, 1e-5 on the losses and outputs of the SKIPnet stage.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfp_jax import config as config_lib
from dfp_jax import embedding
from dfp_jax import fusion
from dfp_jax import models
from dfp_jax import optimize

# Compile time dominates these small tests on CPU (as in flax's imagenet tests).
jax.config.update('jax_disable_most_optimizations', True)

TINY = models.NetConfig(channels_down=(4, 8), channels_up=(4, 8), channels_skip=(2, 2), kernel_size=3)
# lr 1e-2 (not the papers' 1e-3) so that 5 Adam steps visibly reduce the loss.
CONFIG = config_lib.FusionConfig(image_net=TINY, mask_net=TINY, iters=5, mask_iters=3, chunk_size=2,
                                 lr=1e-2, mask_lr=1e-2)
SIZE = 16

# ------------------------------------------------------------------------------------------ toy stage

LR = 0.1
TARGET = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
SCALE = np.array([1.0, 2.0, -1.0, 0.5], np.float32)


def _quad_loss(params, problem):
  """sum (w - target)^2 + (b - 1)^2; the 'output' is w * scale + b."""
  w, b = params['w'], params['b']
  loss = jnp.sum(jnp.square(w - problem['target'])) + jnp.square(b - 1.0)
  output = w * problem['scale'] + b
  return loss, ({'total': loss, 'w_term': jnp.sum(jnp.square(w - problem['target']))}, output)


def _quad_stage(ema_decay=0.9, loss_fn=_quad_loss, name='quad', lr=LR):
  return optimize.Stage(name, loss_fn, optax.sgd(lr), ema_decay)


def _quad_init(stage):
  params = {'w': jnp.zeros(4, jnp.float32), 'b': jnp.zeros((), jnp.float32)}
  problem = {'target': jnp.asarray(TARGET), 'scale': jnp.asarray(SCALE)}
  return optimize.init_state(stage, params, (4,)), problem


def _np_quad_iterates(num_steps):
  """Closed-form SGD iterates (float64): params before step t, t = 0 .. num_steps."""
  w, b = np.zeros(4), 0.0
  ws, bs = [w.copy()], [b]
  for _ in range(num_steps):
    w = w - LR * 2.0 * (w - TARGET)
    b = b - LR * 2.0 * (b - 1.0)
    ws.append(w.copy())
    bs.append(b)
  return np.array(ws), np.array(bs)


def _copy(tree):
  """Fresh buffers (the jitted steps donate their state)."""
  return jax.tree.map(jnp.copy, tree)


def test_init_state():
  stage = _quad_stage()
  state, _ = _quad_init(stage)
  assert int(state.step) == 0 and state.step.dtype == jnp.int32
  chex.assert_shape((state.output, state.ema), (4,))
  np.testing.assert_array_equal(np.asarray(state.ema), 0.0)
  # ema_output before any step is the (zero) output buffer.
  np.testing.assert_array_equal(np.asarray(optimize.ema_output(stage, state)), 0.0)


def test_train_step_is_sgd_and_increments_step():
  stage = _quad_stage()
  state, problem = _quad_init(stage)
  ws, bs = _np_quad_iterates(3)
  for t in range(3):
    state, terms = stage.jit_step(state, problem)
    assert int(state.step) == t + 1
    np.testing.assert_allclose(np.asarray(state.params['w']), ws[t + 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(state.params['b']), bs[t + 1], rtol=0, atol=1e-6)
    # The loss and the output are those of the forward pass before the update.
    np.testing.assert_allclose(float(terms['total']),
                               np.sum((ws[t] - TARGET) ** 2) + (bs[t] - 1.0) ** 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.output), ws[t] * SCALE + bs[t], rtol=0, atol=1e-6)


def test_ema_output_is_bias_corrected_ema():
  decay = 0.9
  stage = _quad_stage(ema_decay=decay)
  state, problem = _quad_init(stage)
  outputs = []
  for _ in range(4):
    state, _ = stage.jit_step(state, problem)
    outputs.append(np.asarray(state.output, np.float64))
  ema = np.zeros(4)
  for o in outputs:
    ema = decay * ema + (1.0 - decay) * o
  expected = ema / (1.0 - decay ** 4)
  np.testing.assert_allclose(np.asarray(optimize.ema_output(stage, state)), expected, rtol=0, atol=1e-6)
  # The outputs themselves follow the closed form, so the EMA is also the EMA of w_t * scale + b_t.
  ws, bs = _np_quad_iterates(4)
  closed = sum((1 - decay) * decay ** (3 - t) * (ws[t] * SCALE + bs[t]) for t in range(4))
  np.testing.assert_allclose(np.asarray(optimize.ema_output(stage, state)), closed / (1 - decay ** 4),
                             rtol=0, atol=1e-6)
  # The bias correction matters after 4 steps (the raw EMA is 1 - 0.9^4 = 34% of the corrected one).
  assert not np.allclose(ema, expected, atol=1e-3)


def test_ema_output_of_constant_outputs_is_that_constant():
  stage = optimize.Stage('const', lambda p, q: (jnp.sum(p['w'] ** 2), ({'total': jnp.sum(p['w'] ** 2)},
                                                                      jnp.full((3,), 0.3))),
                         optax.sgd(0.1), ema_decay=0.99)
  state = optimize.init_state(stage, {'w': jnp.ones(2)}, (3,))
  for _ in range(3):
    state, _ = stage.jit_step(state, {})
  np.testing.assert_allclose(np.asarray(optimize.ema_output(stage, state)), 0.3, rtol=1e-5)


@pytest.mark.parametrize('num_active', [0, 3])
def test_run_chunk_partial_equals_num_active_steps(num_active):
  stage = _quad_stage()
  state0, problem = _quad_init(stage)
  # Reference: num_active single jitted steps.
  ref, ref_terms = _copy(state0), []
  for _ in range(num_active):
    ref, terms = stage.jit_step(ref, problem)
    ref_terms.append(float(terms['total']))
  chunk_state, terms = stage.jit_chunk(_copy(state0), problem, jnp.int32(num_active), chunk_size=5)
  assert int(chunk_state.step) == num_active
  chex.assert_trees_all_close(chunk_state, ref, atol=0, rtol=0)  # Exactly.
  chex.assert_shape(terms['total'], (5,))
  np.testing.assert_array_equal(np.asarray(terms['total'])[:num_active], np.asarray(ref_terms, np.float32))
  chex.assert_tree_all_finite(terms)
  # The un-jitted run_chunk (a plain lax.scan) agrees.
  eager_state, _ = optimize.run_chunk(stage, _copy(state0), problem, num_active, 5)
  chex.assert_trees_all_close(eager_state, ref, atol=1e-7, rtol=0)


def test_run_stage_toy_scan_and_python_agree():
  stage = _quad_stage()
  results = {}
  for loop in ('scan', 'python'):
    state, problem = _quad_init(stage)
    calls = []
    state, report = optimize.run_stage(stage, state, problem, 7, chunk_size=3, loop=loop,
                                       progress=lambda *a: calls.append(a), progress_every_s=1e9)
    results[loop] = (state, report)
    assert int(state.step) == 7 and report.steps == 7
    assert set(report.history) == {'total', 'w_term'}
    chex.assert_shape(list(report.history.values()), (7,))
    # With progress_every_s huge, the reporter is called once, at the end.
    assert len(calls) == 1
    name, done, total, elapsed, terms = calls[0]
    assert (name, done, total) == ('quad', 7, 7) and elapsed >= 0
    assert terms['total'] == pytest.approx(float(report.history['total'][-1]))
  ws, bs = _np_quad_iterates(7)
  expected_hist = np.sum((ws[:7] - TARGET) ** 2, axis=1) + (bs[:7] - 1.0) ** 2
  for loop, (state, report) in results.items():
    np.testing.assert_allclose(report.history['total'], expected_hist, rtol=1e-5, err_msg=loop)
    np.testing.assert_allclose(np.asarray(state.params['w']), ws[7], rtol=0, atol=1e-6, err_msg=loop)
  chex.assert_trees_all_close(results['scan'][0], results['python'][0], atol=1e-6, rtol=0)


def test_run_stage_zero_steps():
  stage = _quad_stage()
  state, problem = _quad_init(stage)
  state, report = optimize.run_stage(stage, state, problem, 0, progress=None, loop='python')
  assert int(state.step) == 0 and report.steps == 0 and report.history == {}


# ------------------------------------------------------------------------------------------ NaN


def _nan_at_three(params, problem):
  """With SGD lr 1 the parameter is w_t = t; the loss is NaN from w > 2.5, i.e. from step 3 on."""
  w = params['w']
  loss = -w + jnp.where(w > 2.5, jnp.nan, 0.0)
  return loss, ({'total': loss}, jnp.stack([w, w]))


@pytest.mark.parametrize('loop', ['python', 'scan'])
def test_nonfinite_loss_names_the_step(loop):
  stage = optimize.Stage('toy', _nan_at_three, optax.sgd(1.0))
  state = optimize.init_state(stage, {'w': jnp.zeros((), jnp.float32)}, (2,))
  with pytest.raises(optimize.NonFiniteLossError, match=r'toy stage.*at step 3 \(of 6\)'):
    optimize.run_stage(stage, state, {}, 6, chunk_size=2, progress=None, loop=loop)
  assert issubclass(optimize.NonFiniteLossError, FloatingPointError)


def test_nonfinite_loss_in_first_step():
  stage = optimize.Stage('toy', lambda p, q: (jnp.log(p['w'] - 1.0),  # log(-1): NaN at once.
                                              ({'total': jnp.log(p['w'] - 1.0)}, p['w'][None])),
                         optax.sgd(0.1))
  state = optimize.init_state(stage, {'w': jnp.zeros((), jnp.float32)}, (1,))
  with pytest.raises(optimize.NonFiniteLossError, match='at step 0 '):
    optimize.run_stage(stage, state, {}, 3, chunk_size=5, progress=None, loop='python')


# ------------------------------------------------------------------------------------------ loops


def test_resolve_loop():
  if jax.default_backend() == 'cpu':
    assert optimize.resolve_loop('auto') == 'python'
  else:
    assert optimize.resolve_loop('auto') == 'scan'
  assert optimize.resolve_loop('scan') == 'scan'
  assert optimize.resolve_loop('python') == 'python'
  with pytest.raises(ValueError, match='loop'):
    optimize.resolve_loop('while')


# ------------------------------------------------------------------------------------------ SKIPnet stage


def _pair():
  """A 16 x 16 RGB pair and partitioned maps (left half from input 0, right half from input 1)."""
  rng = np.random.default_rng(0)
  images = rng.random((2, SIZE, SIZE, 3)).astype(np.float32)
  m = np.zeros((SIZE, SIZE), np.float32)
  m[:, : SIZE // 2] = 1.0
  return jnp.asarray(images), jnp.asarray(np.stack([m, 1.0 - m]))


@functools.lru_cache(maxsize=None)
def _main_runs():
  """The tiny main stage (Adam, CONFIG.lr) run for 5 steps in chunks of 2 with the 'python' loop, and
  the same loss with plain SGD run with each loop, all from the same initial state."""
  images, maps = _pair()
  stage = fusion.main_stage(CONFIG, 3)
  state0, problem = fusion.init_main_state(jax.random.key(0), images, maps, config=CONFIG)
  chex.assert_shape(state0.output, (2 * SIZE, 2 * SIZE, 3))
  runs = {'adam': optimize.run_stage(stage, _copy(state0), problem, CONFIG.iters, CONFIG.chunk_size,
                                     progress=None, loop='python')}
  # SGD for the loop comparison: Adam normalises each gradient, so parameters whose true gradient is
  # zero or nearly (the biases of convolutions that feed a BatchNorm, and BN scales at init) turn float
  # rounding noise into updates of ~lr that differ between compiled programs; SGD keeps noise as noise.
  sgd = optimize.Stage('main_sgd', stage.loss_fn, optax.sgd(0.05), CONFIG.ema_decay)
  sgd_state0 = optimize.init_state(sgd, state0.params, state0.output.shape)
  for loop in ('python', 'scan'):
    runs[loop] = optimize.run_stage(sgd, _copy(sgd_state0), problem, CONFIG.iters, CONFIG.chunk_size,
                                    progress=None, loop=loop)
  return stage, state0, problem, runs


def test_main_stage_reduces_the_loss():
  _, _, _, runs = _main_runs()
  for name, (state, report) in runs.items():
    total = report.history['total']
    assert total.shape == (5,), name
    assert np.all(np.isfinite(total)), name
    assert total[-1] < total[0], (name, total)
    assert int(state.step) == 5
    assert report.compile_seconds > 0 and report.seconds >= report.compile_seconds
  # The history's total is the weighted sum of its terms (default weights 1, 0.5, 0.1).
  hist = runs['adam'][1].history
  np.testing.assert_allclose(hist['total'], hist['content'] + 0.5 * hist['joint_grad'] +
                             0.1 * hist['grad_limit'], rtol=1e-5)


def test_main_stage_scan_and_python_agree():
  _, state0, _, runs = _main_runs()
  (s_py, r_py), (s_scan, r_scan) = runs['python'], runs['scan']
  assert set(r_py.history) == set(r_scan.history) == {'total', 'content', 'joint_grad', 'grad_limit'}
  for k in r_py.history:
    # 5 steps in chunks of 2: 2 + 2 + a partial chunk of 1.
    assert r_py.history[k].shape == r_scan.history[k].shape == (5,)
    np.testing.assert_allclose(r_py.history[k], r_scan.history[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert int(s_py.step) == int(s_scan.step) == 5
  chex.assert_trees_all_close(s_py.params, s_scan.params, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(s_py.output), np.asarray(s_scan.output), atol=1e-5)
  np.testing.assert_allclose(np.asarray(s_py.ema), np.asarray(s_scan.ema), atol=1e-5)
  # The parameters did move (the comparison is not between two copies of the initial state).
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s_py.params, state0.params)
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_main_stage_ema_and_final_output():
  stage, _, _, runs = _main_runs()
  state = runs['adam'][0]
  ema = np.asarray(optimize.ema_output(stage, state))
  np.testing.assert_allclose(ema, np.asarray(state.ema) / (1 - CONFIG.ema_decay ** 5), rtol=1e-5)
  # The EMA of sigmoid outputs lies in (0, 1) (a convex combination once bias-corrected).
  assert np.all(ema > 0) and np.all(ema < 1)


def test_mask_stage_runs_and_gives_partitions():
  images, maps = _pair()
  stage = fusion.mask_stage(CONFIG, 2)
  state, problem = fusion.init_mask_state(jax.random.key(1), images, maps, config=CONFIG)
  state, report = optimize.run_stage(stage, state, problem, CONFIG.mask_iters, CONFIG.chunk_size,
                                     progress=None, loop='python')
  assert int(state.step) == 3 and report.history['total'].shape == (3,)
  assert set(report.history) == {'total', 'map', 'masked_inputs'}
  hard = np.asarray(fusion.embedded_maps(state, config=CONFIG, num_inputs=2))
  chex.assert_shape(hard, (2, SIZE, SIZE))
  np.testing.assert_array_equal(hard.sum(axis=0), 1.0)
  # By default the embedded maps binarise the bias-corrected EMA of the soft maps ...
  np.testing.assert_array_equal(hard, np.asarray(embedding.hard_maps(optimize.ema_output(stage, state))))
  # ... and with output='last' the soft maps of the last forward pass.
  last = np.asarray(fusion.embedded_maps(state, config=CONFIG.replace(output_average='last'), num_inputs=2))
  np.testing.assert_array_equal(last, np.asarray(embedding.hard_maps(state.output)))


# ---------------------------------------------------------------------------------------- stop rule


def _np_stop_step(decay, rule, max_steps):
  """Where the stop rule must end the toy stage, from the closed-form iterates (float64)."""
  ws, bs = _np_quad_iterates(max_steps)
  outputs = [ws[t] * SCALE + bs[t] for t in range(max_steps)]  # Output of the forward pass of step t.
  ema, reads = np.zeros(4), {}
  for t, o in enumerate(outputs, start=1):
    ema = decay * ema + (1 - decay) * o
    reads[t] = ema / (1 - decay ** t)
  streak = 0
  for done in range(2 * rule.window, max_steps + 1, rule.window):
    change = np.mean(np.abs(reads[done] - reads[done - rule.window]))
    streak = streak + 1 if (done >= rule.min_steps and change < rule.tol) else 0
    if streak >= rule.patience:
      return done
  return max_steps


@pytest.mark.parametrize('loop', ['python', 'scan'])
def test_stop_rule_ends_a_converged_stage_where_the_closed_form_says(loop):
  stage = _quad_stage(ema_decay=0.5)
  rule = optimize.StopRule(tol=1e-3, window=5, min_steps=20, patience=2)
  state, problem = _quad_init(stage)
  state, report = optimize.run_stage(stage, state, problem, 400, progress=None, loop=loop, stop=rule)
  expected = _np_stop_step(0.5, rule, 400)
  assert 20 <= expected < 400  # The case really stops early...
  assert report.steps == expected and report.stopped_early and report.max_steps == 400
  assert int(state.step) == expected and len(report.history['total']) == expected
  changes = dict(report.changes)
  assert changes[expected] < rule.tol and changes[expected - rule.window] < rule.tol
  assert changes[rule.window * 2] > rule.tol  # ...and not from the start.
  # Without the rule, the same stage runs every step.
  state, problem = _quad_init(stage)
  _, fixed = optimize.run_stage(stage, state, problem, 400, chunk_size=5, progress=None, loop=loop)
  assert fixed.steps == 400 and not fixed.stopped_early


def test_stop_rule_respects_min_steps_and_config():
  stage = _quad_stage(ema_decay=0.5)
  state, problem = _quad_init(stage)
  rule = optimize.StopRule(tol=10.0, window=5, min_steps=30, patience=1)  # Always "converged".
  _, report = optimize.run_stage(stage, state, problem, 100, progress=None, loop='python', stop=rule)
  assert report.steps == 30
  cfg = config_lib.FusionConfig(mask_iters=100)
  assert cfg.stop_rule('main').min_steps == 200 and cfg.stop_rule('mask').min_steps == 50
  assert cfg.replace(stop='fixed').stop_rule('main') is None
  # The main stage's tolerance is --stop_tol at x1 and x2 and a quarter of it at x4; the mask stage's
  # never changes with the scale.
  tols = {s: cfg.replace(scale=s).stop_rule('main').tol for s in (1, 2, 4)}
  assert tols[1] == tols[2] == cfg.stop_tol and tols[4] == pytest.approx(cfg.stop_tol / 4)
  assert cfg.replace(scale=4).stop_rule('mask').tol == cfg.stop_tol
  with pytest.raises(ValueError, match='stop'):
    config_lib.FusionConfig(stop='sometimes')


def test_stop_step_replays_the_rule_run_stage_applied():
  stage = _quad_stage(ema_decay=0.5)
  rule = optimize.StopRule(tol=1e-3, window=5, min_steps=20, patience=2)
  state, problem = _quad_init(stage)
  _, report = optimize.run_stage(stage, state, problem, 400, progress=None, loop='python', stop=rule)
  assert report.stopped_early
  assert rule.stop_step(report.changes) == report.steps
  # A stricter threshold never ends on the same checks (they stop at the looser rule's end).
  assert rule.__class__(tol=1e-12, window=5, min_steps=20, patience=2).stop_step(report.changes) is None


def test_stop_step_needs_patience_checks_in_a_row_after_min_steps():
  rule = optimize.StopRule(tol=1.0, window=50, min_steps=200, patience=2)
  low, high = 0.5, 2.0
  # Below the threshold from the start, but checks before min_steps do not count.
  assert rule.stop_step([(100, low), (150, low), (200, low), (250, low)]) == 250
  # A check above the threshold resets the streak.
  assert rule.stop_step([(200, low), (250, high), (300, low), (350, low)]) == 350
  # Equal to the threshold is not below it; never twice in a row -> None.
  assert rule.stop_step([(200, 1.0), (250, low), (300, high), (350, low)]) is None
  assert optimize.StopRule(tol=1.0, min_steps=0, patience=1).stop_step([(50, low)]) == 50
