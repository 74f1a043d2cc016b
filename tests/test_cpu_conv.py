"""Tests of the XLA:CPU convolution choice (`FusionConfig.cpu_conv`, `Stage.compiler_options`).

'eigen' must keep every convolution of the compiled step out of YNNPACK while 'ynnpack' (XLA's
default) sends them there, the two must compute the same step (same maths, different kernels: float32
rounding only), and an option this XLA rejects must fall back to its defaults instead of failing.
A depth-2 SKIPnet (3x3 kernels, 8 and 16 channels: XLA leaves narrower convolutions off YNNPACK
anyway) on a 16 x 16 pair at x2, so each compile takes a few seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfp_jax import fusion
from dfp_jax import models
from dfp_jax import optimize
from dfp_jax.config import FusionConfig

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU option')

TINY = models.NetConfig(channels_down=(8, 16), channels_up=(8, 16), channels_skip=(4, 4), kernel_size=3)
CFG = FusionConfig(scale=2, image_net=TINY, mask_net=TINY, lr=1e-2)
SIZE = 16


def _problem(cfg):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, SIZE, SIZE, 3)).astype(np.float32))
  m = jnp.asarray(np.stack([np.tri(SIZE, dtype=np.float32), 1 - np.tri(SIZE, dtype=np.float32)]))
  return fusion.init_main_state(jax.random.key(0), x, m, config=cfg)


def _ynn_convolutions(hlo_text: str) -> int:
  """Convolutions inside a YNNPACK fusion, in the compiled program's HLO text."""
  return sum(1 for line in hlo_text.splitlines()
             if '__ynn_fusion' in line and 'conv_general_dilated' in line)


def _three_steps(cpu_conv):
  cfg = CFG.replace(cpu_conv=cpu_conv)
  stage = fusion.main_stage(cfg, 3)
  state, problem = _problem(cfg)
  run, _ = optimize.compile_chunk(stage, state, problem, 3, loop='python')
  state, terms = run(state, problem, 3)
  return run.executable.as_text(), state, terms


def test_eigen_keeps_convolutions_off_ynnpack_and_computes_the_same_step():
  hlo_eigen, s_eigen, t_eigen = _three_steps('eigen')
  hlo_ynn, s_ynn, t_ynn = _three_steps('ynnpack')
  assert _ynn_convolutions(hlo_eigen) == 0
  if _ynn_convolutions(hlo_ynn) == 0:
    pytest.skip('this XLA does not send convolutions to YNNPACK by default: nothing to compare')
  # Same loss terms and output up to float32 rounding (the kernels sum in different orders; Adam at
  # lr 1e-2 turns rounding on near-zero gradients into parameter moves of up to ~lr, hence 1e-3).
  for k in t_eigen:
    np.testing.assert_allclose(np.asarray(t_eigen[k]), np.asarray(t_ynn[k]), rtol=1e-3, err_msg=k)
  np.testing.assert_allclose(np.asarray(s_eigen.output), np.asarray(s_ynn.output), atol=2e-3)
  assert int(s_eigen.step) == int(s_ynn.step) == 3


def test_config_validates_cpu_conv():
  assert FusionConfig().cpu_conv == 'eigen'
  assert FusionConfig(cpu_conv='ynnpack').compiler_options() is None
  assert dict(FusionConfig().compiler_options())  # Non-empty (name, value) pairs.
  with pytest.raises(ValueError, match='cpu_conv'):
    FusionConfig(cpu_conv='mkl')


def test_rejected_compiler_option_falls_back_to_xla_defaults(caplog):
  stage = fusion.main_stage(CFG, 3)
  bad = optimize.Stage('main_bad_option', stage.loss_fn, stage.optimizer, stage.ema_decay, stage.net,
                       (('xla_cpu_experimental_ynn_fusion_type', 'NOT_A_FUSION_TYPE'),))
  state, problem = _problem(CFG)
  with caplog.at_level('WARNING'):
    run, _ = optimize.compile_chunk(bad, state, problem, 2, loop='python')
    state, terms = run(state, problem, 2)
  assert np.all(np.isfinite(np.asarray(terms['total'])))
  assert int(state.step) == 2
  assert any('rejected the compiler options' in r.getMessage() for r in caplog.records)
