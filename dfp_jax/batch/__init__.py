"""Batch fusion: many independent scenes at once (vmap, device-parallel, or a loop).

`fuse_batch(scenes, config, ...)` fuses every scene exactly as `fusion.fuse` would fuse it alone and
returns one `FusionResult` (or `BatchError`) per scene. How the scene axis is executed is a measured
choice per shape (`strategy`):

  * 'vmap': the single-scene functions of `fusion` are `jax.vmap`ped, so parameters, optimiser states,
    decision maps, network inputs and PRNG keys carry a leading scene axis; with several local devices
    the scene axis is split over a `Mesh(('scenes',))` with `jax.shard_map`. The right choice on GPU/TPU.
  * 'shard': one scene per device, all devices at once (`jax.shard_map`, straight-line single-scene
    steps; on a CPU split into host devices this is how every core gets used).
  * 'loop': one scene after another (`fusion.fuse`), the reference.
  * 'auto': a short measured probe of the main step per (backend, device count, shape) picks the fastest.

Modules: `plan` (buckets of one shape, group sizes from the memory estimate, the strategy probe),
`programs` (the compiled group programs), `engine` (`fuse_batch`: running the plan). Scenes of different
shapes never share a program (padding would change every result); the last group of a bucket is filled
with dummy copies rather than compiled again.
"""

from dfp_jax.batch.engine import BatchError, BatchReport, fuse_batch
from dfp_jax.batch.plan import STRATEGIES
from dfp_jax.batch.programs import ProgramCache

__all__ = ['BatchError', 'BatchReport', 'fuse_batch', 'ProgramCache', 'STRATEGIES']
