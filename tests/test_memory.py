"""memory: the per-scene estimate against XLA's compiled step, refusals that say what fits, the budget
variable."""

import jax
import jax.numpy as jnp
import pytest

from dfp_jax import fusion
from dfp_jax import memory
from dfp_jax import models
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError, MemoryBudgetError

TINY = models.NetConfig((4, 8), (4, 8), (2, 2), 3)
TINY_MASK = models.NetConfig((4, 8), (4, 8), (0, 2), 3)
CFG = FusionConfig(scale=2, iters=6, mask_iters=3, chunk_size=4, image_net=TINY, mask_net=TINY_MASK)


def test_memory_estimate_tracks_the_compiled_step():
  """The up-front estimate is within 25% of XLA's memory analysis of the compiled main step."""
  cfg = FusionConfig(scale=2)
  h = w = 48
  x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
  m = jax.ShapeDtypeStruct((2, h, w), jnp.float32)
  state, prob = jax.eval_shape(lambda k, x, m: fusion.init_main_state(k, x, m, config=cfg),
                               jax.random.key(0), x, m)
  ma = fusion.main_stage(cfg, 3).jit_step.lower(state, prob).compile().memory_analysis()
  compiled = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
  est = memory.estimate_memory(h, w, 2, 3, cfg)['main']
  assert abs(est - compiled) / compiled < 0.25, (est, compiled)


def test_check_memory_refuses_with_estimate_and_size_that_fits():
  cfg = FusionConfig(scale=4)
  with pytest.raises(MemoryBudgetError, match=r'big.png: 2000x3000 at x4 needs about .* GiB .* largest'):
    memory.check_memory(2000, 3000, 2, 3, cfg, available=2 * 2 ** 30, name='big.png')
  est = memory.check_memory(64, 64, 2, 3, cfg, available=2 * 2 ** 30)
  assert est['peak'] < 2 * 2 ** 30
  # A budget below what any usable input needs: sizes in MiB, and no "largest input" below the minimum.
  with pytest.raises(MemoryBudgetError) as e:
    memory.check_memory(64, 64, 2, 3, cfg, available=4 * 10 ** 7, name='small.png')
  msg = str(e.value)
  assert 'MiB but only 38 MiB is available' in msg and 'no input of this shape fits' in msg
  assert f'at least {fusion.min_input_size(cfg)} pixels' in msg and '0x0' not in msg


def test_memory_refusal_names_the_budget_variable_when_it_is_what_limits(monkeypatch):
  cfg = FusionConfig(scale=4)
  monkeypatch.delenv(memory.MEMORY_BUDGET_ENV, raising=False)
  with pytest.raises(MemoryBudgetError, match='free some memory first'):
    memory.check_memory(64, 64, 2, 3, cfg, available=4 * 10 ** 7)
  monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, '4e7')
  with pytest.raises(MemoryBudgetError, match=r'raise DFP_JAX_MEMORY_BUDGET \(now 4e7\)'):
    memory.check_memory(64, 64, 2, 3, cfg)


def test_memory_budget_environment_caps_the_available_memory(monkeypatch):
  monkeypatch.delenv(memory.MEMORY_BUDGET_ENV, raising=False)
  free = memory.available_memory()
  assert free is not None and free > 2 ** 20  # /proc/meminfo on this CPU.
  monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, '1e6')
  assert memory.available_memory() == 10 ** 6
  monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, str(10 * free))
  assert memory.available_memory() <= free * 1.05  # A cap never raises what is there (it may move).
  for text, expected in (('6GiB', 6 * 2 ** 30), ('512 MiB', 512 * 2 ** 20), ('8GB', 8 * 10 ** 9),
                         ('1.5e6', 1_500_000), ('2k', 2000)):
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, text)
    assert memory.available_memory() == min(expected, memory._device_available_memory(None)), text
  for bad in ('lots', '-5', '0', '6 GiBs', 'GiB', '1e999'):
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, bad)
    with pytest.raises(InputError, match=f"DFP_JAX_MEMORY_BUDGET='{bad}': expected a positive number of bytes"):
      memory.available_memory()
