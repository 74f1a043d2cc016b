"""The light-field job: `--lightfield=FOLDER` -> focal stack -> DFP all-in-focus -> `--output_dir`.

A plenoptic camera records a 4D light field in one shot. This job loads its sub-aperture views
(`lightfield.load_light_field`), optionally crops and area-downsamples them, chooses the focal planes and
refocuses the views into a focal stack (`lightfield.make_focal_stack`), and fuses the slices with DFP
exactly as `--inputs` images would be fused. Disparities (`--planes`, `--sweep`, planes.json) are in
pixels per view step of the views as processed, i.e. after --lf_downsample.

Besides the single-scene files (the N-image scene of the slices), the result folder holds
focal_stack/plane_NN.png, planes.json, coverage.png, comparison_center.png and contact_sheet.png. With
--lf_downsample equal to --scale the output has the original view resolution and summary.json gets
"center_view_scores": PSNR/SSIM of DFP and baselines against the original-resolution centre view (a
true all-in-focus answer only for rendered light fields).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import logging
import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import memory
from dfp_jax import metrics
from dfp_jax import output_folder
from dfp_jax import tiles as tiles_lib
from dfp_jax import viz
from dfp_jax.app import outputs
from dfp_jax.app import scene as scene_job
from dfp_jax.app.scene import JobArgs


@dataclasses.dataclass(frozen=True, kw_only=True)
class LightFieldArgs(JobArgs):
  folder: str = ''  # The light field's folder of views.
  lightfield: lightfield.LightFieldConfig = lightfield.LightFieldConfig()
  tiles: tiles_lib.TileConfig = tiles_lib.TileConfig()


def _json_number(x: float):
  x = float(x)
  return x if math.isfinite(x) else ('inf' if x > 0 else '-inf')


def _resize_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """The reference centre view brought to the output size (bicubic up, area down), float [H, W, C]."""
  if image.shape[:2] == (height, width):
    return image
  interp = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_CUBIC
  out = cv2.resize(image, (width, height), interpolation=interp)
  return np.clip(out.reshape(height, width, image.shape[2]), 0, 1)


def _centre_reference(args: LightFieldArgs, lf: lightfield.LightField):
  """(original-resolution centre view over the processed region [H*ds, W*ds, C], its file name, the
  view size)."""
  cfg = args.lightfield
  h, w, c = lf.image_shape
  name = lf.names[int(lf.center_index)]
  full, _ = image_io.read_image(os.path.join(args.folder, name))
  view_size = full.shape[:2]
  if cfg.crop is not None:
    y, x, ch, cw = cfg.crop
    full = full[y:y + ch, x:x + cw]
  full = full[:h * cfg.downsample, :w * cfg.downsample]  # The rows/cols that downsampling kept.
  if full.shape[2] != c:  # Follow the loader's channel count.
    full = np.repeat(full, c, axis=2) if full.shape[2] == 1 else full[..., :c]
  return full, name, view_size


def _centre_scores(result, stack, lf, centre, centre_name, scale, bicubic) -> dict:
  """PSNR/SSIM of DFP and baselines against the original-resolution centre view."""
  gt = jnp.asarray(centre)
  slices = jnp.asarray(stack.slices)
  candidates = {
      'dfp': result.fused,
      'average+bicubic': bicubic,
      'decision_map+bicubic': np.asarray(baselines.upsample(
          baselines.decision_map_fusion(slices, jnp.asarray(result.decision_maps_raw)), scale)),
  }
  per_slice = [np.asarray(baselines.upsample(jnp.asarray(x), scale)) for x in stack.slices]
  slice_psnr = [float(metrics.gt_metrics(jnp.asarray(x), gt)['PSNR']) for x in per_slice]
  best = int(np.argmax(slice_psnr))
  candidates['best_slice+bicubic'] = per_slice[best]
  if scale > 1:
    candidates['center_view_lr+bicubic'] = np.asarray(baselines.upsample(lf.center_view, scale))
  scores = {k: {m: float(v) for m, v in metrics.gt_metrics(jnp.asarray(x), gt).items()}
            for k, x in candidates.items()}
  scores['best_slice+bicubic']['slice'] = best
  scores['reference'] = (f'original-resolution centre view {centre_name} ({centre.shape[0]}x{centre.shape[1]}); '
                         'a true all-in-focus image only for rendered light fields')
  return scores


def run_lightfield(args: LightFieldArgs) -> int:
  """Light field -> focal stack -> DFP -> args.output_dir. Returns the exit status (0)."""
  config, cfg, folder = args.config, args.lightfield, args.folder
  if not os.path.exists(folder):
    raise errors.InputError(f'{folder}: light-field folder not found')
  if not os.path.isdir(folder):
    raise errors.InputError(f'{folder}: is a file; --lightfield needs a folder of sub-aperture views')
  ds = cfg.downsample
  output_folder.check_output_dir(args.output_dir, protect=[folder])  # Before any work, not after it.
  t0 = time.perf_counter()

  # 1. Views (cropped, downsampled) and the original-resolution centre view (the reference). Sizes and
  # memory are checked from the first view's header, before any view is decoded.
  n_fused = len(cfg.planes) if cfg.planes is not None else cfg.num_planes
  plans = []

  def before_decoding(num_views, shape, reach):
    h, w, c = shape
    short = fusion.size_shortfall(config, h, w)
    if short:
      raise errors.InputError(f'{folder}: the processed views are {h}x{w} (after --crop / --lf_downsample); '
                              f'{short}')
    if args.check_memory:  # The sweep runs over the user's planes too.
      lightfield.check_memory(num_views, shape, reach, lightfield.largest_disparity(cfg),
                              memory.available_memory(), name=folder)
    try:  # Whole, tiles or the x1 fast path (`tiles.plan_tiles`), from the sizes alone.
      plans.append(scene_job.plan(h, w, n_fused, c, config, args))
    except errors.MemoryBudgetError as e:
      raise errors.MemoryBudgetError(f'{folder} (views processed to {h}x{w}): {e}') from None

  lf = lightfield.load_light_field(folder, crop=cfg.crop, downsample=ds, before_decoding=before_decoding)
  h, w, c = lf.image_shape
  centre, centre_name, view_size = _centre_reference(args, lf)
  lightfield.check_disparities(lf, cfg)
  n_aperture, _ = lightfield.aperture_reach(lf, cfg.aperture)
  logging.info('light field %s: %d views, centre %s (%s), processed view size %dx%dx%d '
               '(crop %s, downsample %d); aperture %s -> %d views', folder, lf.num_views, lf.center,
               centre_name, h, w, c, cfg.crop, ds, cfg.aperture, n_aperture)
  if lf.num_views < 2:
    logging.warning('%s holds a single view: every slice is the same image', folder)
  elif n_aperture < 2:
    logging.warning('--aperture=%s keeps only the centre view: every slice is the same image', cfg.aperture)

  # 2. Focal planes and the focal stack.
  stack = lightfield.make_focal_stack(lf, cfg)
  n = len(stack.planes)
  lf_seconds = time.perf_counter() - t0
  logging.info('focal planes (%s): %s; mean coverage %.3f; light-field stage %.1f s', stack.how,
               ', '.join(f'{d:+.3f}' for d in stack.planes), stack.coverage.mean(), lf_seconds)

  # 3. DFP on the stack, exactly as for --inputs images.
  stack_files = [f'focal_stack/plane_{i:02d}.png' for i in range(n)]
  names = lightfield.slice_names(folder, stack.planes)
  fusion.validate_images(list(stack.slices), config, names)
  tile_plan = plans[-1] if len(plans) and n == n_fused else scene_job.plan(h, w, n, c, config, args)
  mem = tiles_lib.plan_memory(tile_plan, h, w, n, c, config)
  bit_depth = args.bit_depth([lf.bit_depth])
  slice_share = np.bincount(stack.slice_index.ravel(), minlength=n) / float(h * w)
  sweep = stack.sweep
  planes_info = {
      'lightfield': os.path.abspath(folder),
      'num_views': int(lf.num_views),
      'center': list(lf.center),
      'center_view': centre_name,
      'view_size': [int(view_size[0]), int(view_size[1])],
      'crop': list(cfg.crop) if cfg.crop is not None else None,
      'lf_downsample': ds,
      'processed_size': [h, w, c],
      'planes': [float(d) for d in stack.planes],
      'how': stack.how,
      'num_planes': n,
      'disparity_unit': 'pixels per view step, after lf_downsample',
      'aperture': _json_number(cfg.aperture),
      'aperture_views': stack.aperture_views,
      'shift_method': lightfield.SHIFT_METHOD,
      'fourier_pad': stack.pad,
      'sweep': {'min': float(sweep[0]), 'max': float(sweep[-1]), 'count': int(sweep.size),
                'step': float(sweep[1] - sweep[0])},
      'mean_coverage': float(stack.coverage.mean()),
      'coverage_fraction_at_least_0.9': float(np.mean(stack.coverage >= 0.9)),
      'sharpest_slice_fraction': [float(x) for x in slice_share],
      'files': stack_files,
      'seconds': lf_seconds,
  }
  logging.info('DFP: %d slices of %dx%dx%d, x%d -> %dx%d; backend %s; estimated peak memory %.0f MiB',
               n, h, w, c, config.scale, config.scale * h, config.scale * w, jax.default_backend(),
               mem['peak'] / 2 ** 20)

  with output_folder.StagingDir(args.output_dir, protect=[folder]) as tmp:
    result = scene_job.fuse_planned(list(stack.slices), tile_plan, config, args.seed, names, None)
    s = config.scale
    out_h, out_w = result.fused.shape[:2]
    bicubic = np.asarray(baselines.upsample(baselines.average_fusion(jnp.asarray(stack.slices)), s))
    scores = None
    if ds == s and centre.shape[:2] == (out_h, out_w):
      scores = _centre_scores(result, stack, lf, centre, centre_name, s, bicubic)
      logging.info('against the centre view: DFP %.2f dB / %.4f, bicubic of the average %.2f dB / %.4f',
                   scores['dfp']['PSNR'], scores['dfp']['SSIM'], scores['average+bicubic']['PSNR'],
                   scores['average+bicubic']['SSIM'])
    ref_caption = 'centre view' if centre.shape[:2] == (out_h, out_w) else (
        f'centre view (resized to {out_h}x{out_w})')
    captions = [ref_caption, 'bicubic of the stack average', 'DFP']
    if scores is not None:
      captions[1] += f' {scores["average+bicubic"]["PSNR"]:.2f} dB'
      captions[2] += f' {scores["dfp"]["PSNR"]:.2f} dB'
    plane_labels = [f'{i:02d}: d={d:+.3f}' for i, d in enumerate(stack.planes)]
    extra_images = [(name, image, bit_depth) for name, image in zip(stack_files, stack.slices)] + [
        ('coverage.png', stack.coverage[..., None], 8),
        ('contact_sheet.png', viz.contact_sheet(stack.slices, result.decision_maps, result.fused,
                                                [f'slice {i:02d} d={d:+.3f}'
                                                 for i, d in enumerate(stack.planes)]), 8),
        ('comparison_center.png', viz.side_by_side(
            [_resize_reference(centre, out_h, out_w), bicubic, result.fused], captions), 8)]
    records = [{'path': p, 'height': h, 'width': w, 'channels': c, 'bit_depth': lf.bit_depth,
                'had_alpha': False} for p in stack_files]
    extra = {'seed': args.seed, 'memory_estimate_bytes': mem, 'lightfield': planes_info,
             'plan': tile_plan._asdict()}
    if scores is not None:
      extra['center_view_scores'] = scores
    outputs.write_result(tmp, result, list(stack.slices), [os.path.basename(f) for f in stack_files],
                         records, config, bit_depth,
                         index_labels=plane_labels, extra_images=extra_images,
                         extra_json={'planes.json': planes_info}, summary_extra=extra,
                         shown_as=args.output_dir)
  logging.info('done in %.1f s (light field %.1f s, DFP %.1f s): results in %s',
               time.perf_counter() - t0, lf_seconds, result.timings['total_s'],
               output_folder.resolve_output_dir(args.output_dir))
  return 0
