"""The result folder's writer: every file of a result, written once, and its summary.json.

`write_result` writes into a (staging) folder: fused.png and fused_lr.png at the chosen bit depth, the
decision maps (two inputs: decision_map_raw.png / decision_map.png; N > 2: one pair per input and
index_map.png with a legend), loss.png, comparison.png, any job-specific extra images and JSON files,
and last summary.json, which lists every file (that list is how a later run recognises a previous
result it may replace: `output_folder.check_replaceable`).
"""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from typing import Sequence

import numpy as np
import jax

import dfp_jax
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import resample
from dfp_jax import viz
from dfp_jax.app import runtime
from dfp_jax.config import FusionConfig


def summary_of(result: fusion.FusionResult, inputs: list, config: FusionConfig, bit_depth: int,
               files: list) -> dict:
  """summary.json's common fields: the resolved configuration, the inputs, the output, the decision
  maps' shares, timings, iterations, final losses, versions and backend."""
  t = result.timings
  return {
      'dfp_jax_version': dfp_jax.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': shlex.join(sys.argv),
      'config': config.to_dict(),
      'inputs': inputs,
      'output': {'height': int(result.fused.shape[0]), 'width': int(result.fused.shape[1]),
                 'channels': int(result.fused.shape[2]), 'bit_depth': bit_depth, 'files': files},
      'decision_map_fractions': {
          'raw': [float(x) for x in result.decision_maps_raw.mean(axis=(1, 2))],
          'embedded': [float(x) for x in result.decision_maps.mean(axis=(1, 2))]},
      'timings_s': {k: v for k, v in t.items() if k.endswith('_s')},
      'iterations_per_second': {'mask': t.get('mask_steps_per_s'), 'main': t.get('main_steps_per_s')},
      'iterations': {'mask': t.get('mask_steps', 0), 'main': t.get('main_steps')},
      'final_loss': {stage: {k: float(v[-1]) for k, v in terms.items()}
                     for stage, terms in result.history.items()},
      'versions': runtime.versions(),
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
  }


def write_result(folder: str, result: fusion.FusionResult, images: Sequence[np.ndarray],
                 input_names: Sequence[str], input_records: list, config: FusionConfig, bit_depth: int,
                 *, index_labels: Sequence[str] | None = None, extra_images: Sequence = (),
                 extra_json: dict | None = None, summary_extra: dict | None = None,
                 shown_as: str | None = None) -> dict:
  """Writes every file of one result into `folder`; returns the summary written to summary.json.

  Args:
    folder: the (staging) folder.
    result: the fusion's result.
    images: the N inputs that were fused, float [H, W, C] (for comparison.png).
    input_names: short names of the inputs for captions and the index map's legend.
    input_records: summary.json's 'inputs' entries.
    config: the configuration that made it.
    bit_depth: 8 or 16 for fused.png and fused_lr.png.
    index_labels: the legend of index_map.png (which input each pixel takes), written for N > 2 inputs
      (default legend: `input_names`) and, when labels are given, for two inputs too.
    extra_images: (relative path, image, bit depth) of job-specific pictures.
    extra_json: {relative path: object} of job-specific JSON files.
    summary_extra: more top-level entries of summary.json.
    shown_as: the output folder as the user named it, for error messages (default `folder`).

  Raises:
    errors.InputError: a file could not be written (disk full, permissions); the message names the
      folder and the reason.
  """
  n = len(images)
  files: list = []

  def put(name, image, depth=8):
    image_io.write_image(os.path.join(folder, name), image, depth)
    files.append(name)

  try:
    put('fused.png', result.fused, bit_depth)
    put('fused_lr.png', result.fused_lr, bit_depth)
    if n == 2:
      put('decision_map_raw.png', viz.decision_map_image(result.decision_maps_raw[0]))
      put('decision_map.png', viz.decision_map_image(result.decision_maps[0]))
    else:
      for i in range(n):
        put(f'decision_map_raw_{i:02d}.png', viz.decision_map_image(result.decision_maps_raw[i]))
        put(f'decision_map_{i:02d}.png', viz.decision_map_image(result.decision_maps[i]))
    if n > 2 or index_labels is not None:
      put('index_map.png', viz.index_map_picture(result.decision_maps, index_labels or input_names))
    put('loss.png', viz.loss_plot(result.history))
    bicubic = np.clip(np.asarray(resample.bicubic_upsample(np.mean(np.stack(images), 0), config.scale)), 0, 1)
    put('comparison.png', viz.comparison(images, bicubic, result.fused, list(input_names)))
    for name, image, depth in extra_images:
      put(name, image, depth)
    for name, obj in (extra_json or {}).items():
      image_io.write_json(os.path.join(folder, name), obj)
      files.append(name)
    summary = summary_of(result, input_records, config, bit_depth, files + ['summary.json'])
    summary.update(summary_extra or {})
    image_io.write_json(os.path.join(folder, 'summary.json'), summary)
  except OSError as e:
    raise errors.InputError(f'{shown_as or folder}: writing the results failed ({e.strerror or e}); '
                            'nothing was changed there (free some space or choose another --output_dir)'
                            ) from None
  return summary
