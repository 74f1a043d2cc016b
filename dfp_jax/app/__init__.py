"""The command-line application: flags, the three jobs (single scene, batch, light field), the
result-folder writer. The one part of the package besides I/O that touches the disk.

Entry points: `dfp-jax` (console script), `python -m dfp_jax`, `python experiments/run.py`; all call
`dfp_jax.app.main.run`. Jobs take typed argument objects (`scene.SceneArgs`,
`lightfield_job.LightFieldArgs`, `batch_job.BatchArgs`), built from the flags once in `flags`.
"""
