"""The light-field job of `experiments/run.py`: light field -> focal stack -> DFP all-in-focus.

  python experiments/run.py --flagfile=plenoptic.flags
  python experiments/run.py --lightfield=my_views/ --num_planes=3 --scale=2 --output_dir=out/lf

A plenoptic camera records a 4D light field in one shot. This job loads its sub-aperture views
(`dfp_jax.lightfield.load_light_field`: HCI `input_Cam###.png`, decoded-Lytro `<scene>_RR_CC.png`, or
any names listed in a `views.json`), optionally crops (`--crop=y,x,h,w`, in the views' own pixels) and
area-downsamples (`--lf_downsample=s`) every view, chooses N focal planes (`--planes`, or automatically
from a focus sweep so that every region is sharp in some slice), refocuses the views at those planes by
shift-and-add (Fourier sub-pixel shifts, synthetic aperture `--aperture` in view steps), and fuses the
N slices with DFP at `--scale`, exactly as `--inputs` images would be fused.

Disparities (`--planes`, `--sweep`, planes.json) are in pixels per view step of the views as processed,
i.e. after --lf_downsample: a plane at d = 1 on the original views is d = 0.5 with --lf_downsample=2.

Outputs in --output_dir (staged in a temporary sibling folder, moved into place on success): all the
files of an --inputs run for the N-image scene (fused.png, fused_lr.png, decision maps, loss.png,
comparison.png, summary.json), plus
  focal_stack/plane_NN.png  the N refocused slices fed to DFP, in plane order (ascending disparity);
  planes.json               chosen disparities, how (auto/user), aperture, crop, downsampling, sweep,
                            coverage statistics;
  coverage.png              per pixel, focus in its best chosen slice over its best focus in the sweep
                            (white: as sharp as refocusing can make it);
  index_map.png             which slice each pixel of the final decision maps takes, with a legend
                            (a coarse depth map);
  comparison_center.png     the centre view (resized to the output size if needed), the bicubic of the
                            stack average, and DFP;
  contact_sheet.png         the focal-stack slices, the index map, DFP and the decision maps on one
                            sheet.
With --lf_downsample equal to --scale the output has the original view resolution and summary.json gets
"center_view_scores": PSNR/SSIM of DFP and the baselines against the original-resolution centre view.
The centre view is a true all-in-focus answer only for rendered light fields (HCI); for a real capture
(Lytro) it is an approximate reference (one sub-aperture, large depth of field, but noisier).
"""

from __future__ import annotations

import math
import os
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dfp_jax import baselines
from dfp_jax import errors
from dfp_jax import fusion
from dfp_jax import image_io
from dfp_jax import lightfield
from dfp_jax import metrics
from dfp_jax import viz
from experiments import cli

SHIFT_METHOD = 'fourier'
LEGEND_MIN_WIDTH = 256  # index_map.png is enlarged (pixel replication) to at least this width.


def define_lightfield_flags():
  """Flags of the light-field job (the DFP flags are `cli.define_flags`)."""
  flags.DEFINE_string('lightfield', None, 'Folder of sub-aperture views of one light field (HCI '
                      'input_Cam###.png, <scene>_RR_CC.png, or a views.json); runs the light-field '
                      'job in place of --inputs.')
  flags.DEFINE_integer('num_planes', 2, 'Focal planes N of the stack, chosen automatically to cover '
                       'the scene\'s depth (ignored with --planes).')
  flags.DEFINE_list('planes', [], 'Focal planes as comma-separated disparities (pixels per view step, '
                    'after --lf_downsample); overrides the automatic choice.')
  flags.DEFINE_float('aperture', float('inf'), 'Synthetic aperture radius in view steps (Euclidean '
                     'distance from the centre view); inf = all views, 0 = centre view only.')
  flags.DEFINE_list('crop', [], 'y,x,h,w: process only this region of the views (their own pixel '
                    'coordinates, before --lf_downsample).')
  flags.DEFINE_integer('lf_downsample', 1, 'Area-average every view by this factor first; with '
                       '--scale equal to it, the output has the original resolution and is scored '
                       'against the original centre view.')
  flags.DEFINE_list('sweep', ['-2', '2', '33'], 'min,max,count: disparities swept to measure focus '
                    '(automatic planes, coverage).')


# ------------------------------------------------------------------------------------------------
# Flag parsing.


def _parse_crop(values):
  if not values:
    return None
  try:
    crop = tuple(int(v) for v in values)
  except ValueError:
    crop = None
  if crop is None or len(crop) != 4:
    raise errors.InputError(f'--crop must be four integers y,x,h,w, got {",".join(values)}')
  y, x, h, w = crop
  if y < 0 or x < 0 or h < 1 or w < 1:
    raise errors.InputError(f'--crop={",".join(values)}: y and x must be >= 0, h and w >= 1')
  return crop


def _parse_planes(values):
  if not values:
    return None
  try:
    planes = np.asarray([float(v) for v in values], np.float64)
  except ValueError:
    raise errors.InputError(f'--planes must be comma-separated numbers (disparities), got '
                            f'{",".join(values)}') from None
  if not np.all(np.isfinite(planes)):
    raise errors.InputError(f'--planes must be finite numbers, got {",".join(values)}')
  if len(np.unique(planes)) != len(planes):
    raise errors.InputError(f'--planes has repeated values: {",".join(values)}')
  if len(planes) < 2:
    raise errors.InputError(f'--planes needs at least 2 disparities for a focal stack to fuse, got '
                            f'{",".join(values)}')
  return np.sort(planes).astype(np.float32)


MAX_SWEEP = 257  # Each swept plane is a refocused image of the whole view: bounded work.


def _parse_sweep(values):
  try:
    lo, hi, num = float(values[0]), float(values[1]), int(values[2])
    if len(values) != 3:
      raise ValueError
  except (ValueError, IndexError):
    raise errors.InputError(f'--sweep must be min,max,count (e.g. -2,2,33), got {",".join(values)}') from None
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and 2 <= num <= MAX_SWEEP):
    raise errors.InputError(f'--sweep={",".join(values)}: need finite min < max and 2 <= count <= '
                            f'{MAX_SWEEP}')
  return lightfield.disparity_sweep(hi, num, min_disparity=lo)


def _json_number(x: float):
  x = float(x)
  return x if math.isfinite(x) else ('inf' if x > 0 else '-inf')


# ------------------------------------------------------------------------------------------------
# Pictures.


def _index_map_picture(maps: np.ndarray, planes: np.ndarray) -> np.ndarray:
  """Colour index map of the decision maps [N, H, W] with a legend of the planes, uint8 RGB."""
  n = maps.shape[0]
  index = np.asarray(lightfield.index_map(jnp.asarray(maps)))
  colour = np.asarray(lightfield.index_map_image(index, n))
  k = max(1, -(-LEGEND_MIN_WIDTH // colour.shape[1]))
  colour = np.repeat(np.repeat(colour, k, axis=0), k, axis=1)
  legend = lightfield.index_map_legend(n, [f'{i:02d}: d={d:+.3f}' for i, d in enumerate(planes)],
                                       width=colour.shape[1])
  return np.concatenate([colour, legend], axis=0)


def _contact_sheet(stack, maps, fused, planes) -> np.ndarray:
  """One picture of the whole chain: two rows at the output size, the focal-stack slices (pixel
  replication) with the index map and the DFP result, then each slice's decision map. uint8 RGB."""
  h, w = fused.shape[:2]
  n = len(stack)
  index = np.asarray(lightfield.index_map_image(np.asarray(lightfield.index_map(jnp.asarray(maps))), n))
  top = ([viz.resize_to(viz.to_uint8_rgb(x), h, w, nearest=True) for x in stack]
         + [viz.resize_to(index, h, w, nearest=True), viz.to_uint8_rgb(fused)])
  top_caps = [f'slice {i:02d} d={d:+.3f}' for i, d in enumerate(planes)] + ['index map', 'DFP']
  bottom = [viz.resize_to(viz.to_uint8_rgb(np.asarray(m, np.float32)), h, w, nearest=True) for m in maps]
  bottom_caps = [f'decision map {i:02d}' for i in range(n)]
  rows = [viz.side_by_side(top, top_caps, max_width=10 ** 6),
          viz.side_by_side(bottom, bottom_caps, max_width=10 ** 6)]
  width = max(r.shape[1] for r in rows)
  rows = [np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)], 1) for r in rows]
  sheet = np.concatenate([rows[0], np.full((6, width, 3), 255, np.uint8), rows[1]], 0)
  return viz.resize_to(sheet, int(sheet.shape[0] * min(1.0, 2400 / width)), min(width, 2400))


def _resize_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """The reference centre view brought to the output size (bicubic up, area down), float [H, W, C]."""
  import cv2  # pylint: disable=g-import-not-at-top
  if image.shape[:2] == (height, width):
    return image
  interp = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_CUBIC
  out = cv2.resize(image, (width, height), interpolation=interp)
  return np.clip(out.reshape(height, width, image.shape[2]), 0, 1)


# ------------------------------------------------------------------------------------------------
# The job.


def run_lightfield(f) -> int:
  """Light field (--lightfield) -> focal stack -> DFP -> --output_dir. Returns the exit status."""
  config = cli.config_from_flags(f)
  folder = f.lightfield
  if f.inputs:
    raise errors.InputError('give either --inputs (images) or --lightfield (a folder of views), not both')
  if not os.path.exists(folder):
    raise errors.InputError(f'{folder}: light-field folder not found')
  if not os.path.isdir(folder):
    raise errors.InputError(f'{folder}: is a file; --lightfield needs a folder of sub-aperture views')
  crop = _parse_crop(f.crop)
  if f.lf_downsample < 1:
    raise errors.InputError(f'--lf_downsample must be an integer >= 1, got {f.lf_downsample}')
  if not f.aperture >= 0:
    raise errors.InputError(f'--aperture must be >= 0 (view steps; inf = all views), got {f.aperture}')
  user_planes = _parse_planes(f.planes)
  sweep = _parse_sweep(f.sweep)
  if user_planes is None and not 2 <= f.num_planes <= sweep.size:
    raise errors.InputError(f'--num_planes must be between 2 and the {sweep.size} swept disparities '
                            f'(--sweep), got {f.num_planes}')
  if user_planes is not None and f['num_planes'].present and f.num_planes != user_planes.size:
    logging.warning('--planes gives %d planes: --num_planes=%d is ignored', user_planes.size,
                    f.num_planes)
  ds = f.lf_downsample
  image_io.check_output_dir(f.output_dir, protect=[folder])  # Before any work, not after it.
  t0 = time.perf_counter()

  # 1. Views (cropped, downsampled) and the original-resolution centre view (the reference).
  lf = lightfield.load_light_field(folder, crop=crop, downsample=ds)
  h, w, c = lf.image_shape
  short = fusion.size_shortfall(config, h, w)
  if short:
    raise errors.InputError(f'{folder}: the processed views are {h}x{w} (after --crop / --lf_downsample); '
                            f'{short}')
  center_name = lf.names[int(lf.center_index)]
  center_full, center_info = image_io.read_image(os.path.join(folder, center_name))
  view_size = center_full.shape[:2]
  if crop is not None:
    y, x, ch, cw = crop
    center_full = center_full[y:y + ch, x:x + cw]
  center_full = center_full[:h * ds, :w * ds]  # The rows/cols that downsampling kept.
  if center_full.shape[2] != c:  # views.json may mix; follow the loader's channel count.
    center_full = np.repeat(center_full, c, axis=2) if center_full.shape[2] == 1 else center_full[..., :c]
  offsets = np.asarray(lightfield.view_offsets(lf.rows, lf.cols, lf.center))
  weights = np.asarray(lightfield.aperture_weights(jnp.asarray(offsets), f.aperture))
  n_aperture = int(np.sum(weights))
  reach = float(np.max(np.abs(offsets[weights > 0]))) if n_aperture else 0.0
  flag, values = ('--sweep', sweep) if user_planes is None else ('--planes', user_planes)
  far = float(np.max(np.abs(values)))
  if reach > 0 and far * reach >= min(h, w):
    raise errors.InputError(
        f'{flag}: disparity {far:g} shifts the outermost views in the aperture ({reach:g} view steps) by '
        f'{far * reach:.0f} px, as much as the {h}x{w} processed views; use |disparity| < '
        f'{min(h, w) / reach:.3g} (pixels per view step)')
  if f.check_memory:  # The sweep runs over the user's planes too.
    swept = sweep if user_planes is None else np.concatenate([sweep, user_planes])
    lightfield.check_memory(lf, float(np.max(np.abs(swept))), fusion.available_memory(), name=folder)
  logging.info('light field %s: %d views, centre %s (%s), processed view size %dx%dx%d '
               '(crop %s, downsample %d); aperture %s -> %d views', folder, lf.num_views, lf.center,
               center_name, h, w, c, crop, ds, f.aperture, n_aperture)
  if lf.num_views < 2:
    logging.warning('%s holds a single view: every slice is the same image', folder)
  elif n_aperture < 2:
    logging.warning('--aperture=%s keeps only the centre view: every slice is the same image', f.aperture)

  # 2. Focal planes and the focal stack.
  fp = lightfield.choose_focal_planes(lf, None if user_planes is not None else f.num_planes,
                                      disparities=user_planes, sweep=sweep, aperture=f.aperture,
                                      method=SHIFT_METHOD)
  planes = np.asarray(fp.disparities, np.float32)
  pad = lightfield.required_pad(lf, float(np.max(np.abs(planes))))
  stack = lightfield.focal_stack(lf, jnp.asarray(planes), f.aperture, method=SHIFT_METHOD, pad=pad)
  stack = np.clip(np.asarray(stack), 0.0, 1.0)
  coverage = np.asarray(fp.coverage)
  lf_seconds = time.perf_counter() - t0
  how = 'user' if user_planes is not None else 'auto'
  logging.info('focal planes (%s): %s; mean coverage %.3f; light-field stage %.1f s', how,
               ', '.join(f'{d:+.3f}' for d in planes), coverage.mean(), lf_seconds)

  # 3. DFP on the stack, exactly as for --inputs images.
  n = len(planes)
  stack_files = [f'focal_stack/plane_{i:02d}.png' for i in range(n)]
  names = [f'{folder} refocused at d={d:+.3f}' for d in planes]
  fusion.validate_images(list(stack), config, names)
  mem = fusion.estimate_memory(h, w, n, c, config)
  if f.check_memory:
    mem = fusion.check_memory(h, w, n, c, config, name=f'{folder} (views processed to {h}x{w})')
  bit_depth = (int(f.output_bit_depth) if f.output_bit_depth != 'auto'
               else image_io.auto_bit_depth([center_info]))
  infos = [image_io.ImageInfo(p, h, w, c, center_info.bit_depth, False) for p in stack_files]
  slice_share = np.bincount(np.asarray(fp.slice_index).ravel(), minlength=n) / float(h * w)
  planes_info = {
      'lightfield': os.path.abspath(folder),
      'num_views': int(lf.num_views),
      'center': list(lf.center),
      'center_view': center_name,
      'view_size': [int(view_size[0]), int(view_size[1])],
      'crop': list(crop) if crop is not None else None,
      'lf_downsample': ds,
      'processed_size': [h, w, c],
      'planes': [float(d) for d in planes],
      'how': how,
      'num_planes': n,
      'disparity_unit': 'pixels per view step, after lf_downsample',
      'aperture': _json_number(f.aperture),
      'aperture_views': n_aperture,
      'shift_method': SHIFT_METHOD,
      'fourier_pad': pad,
      'sweep': {'min': float(sweep[0]), 'max': float(sweep[-1]), 'count': int(sweep.size),
                'step': float(sweep[1] - sweep[0])},
      'mean_coverage': float(coverage.mean()),
      'coverage_fraction_at_least_0.9': float(np.mean(coverage >= 0.9)),
      'sharpest_slice_fraction': [float(x) for x in slice_share],
      'files': stack_files,
      'seconds': lf_seconds,
  }
  logging.info('DFP: %d slices of %dx%dx%d, x%d -> %dx%d; backend %s; estimated peak memory %.0f MiB',
               n, h, w, c, config.scale, config.scale * h, config.scale * w, jax.default_backend(),
               mem['peak'] / 2 ** 20)

  with image_io.StagingDir(f.output_dir, protect=[f.lightfield]) as tmp:
    result = fusion.fuse(list(stack), config=config, key=jax.random.key(f.seed), names=names)
    s = config.scale
    out_h, out_w = result.fused.shape[:2]
    bicubic = np.asarray(baselines.upsample(baselines.average_fusion(jnp.asarray(stack)), s))

    # Scores against the original-resolution centre view, when the output has its resolution.
    scores = None
    if ds == s and center_full.shape[:2] == (out_h, out_w):
      gt = jnp.asarray(center_full)
      raw = jnp.asarray(result.decision_maps_raw)
      candidates = {
          'dfp': result.fused,
          'average+bicubic': bicubic,
          'decision_map+bicubic': np.asarray(baselines.upsample(
              baselines.decision_map_fusion(jnp.asarray(stack), raw), s)),
      }
      per_slice = [np.asarray(baselines.upsample(jnp.asarray(x), s)) for x in stack]
      slice_scores = [{k: float(v) for k, v in metrics.gt_metrics(jnp.asarray(x), gt).items()}
                      for x in per_slice]
      best = int(np.argmax([sc['PSNR'] for sc in slice_scores]))
      candidates['best_slice+bicubic'] = per_slice[best]
      if ds > 1:
        candidates['center_view_lr+bicubic'] = np.asarray(baselines.upsample(lf.center_view, s))
      scores = {k: {m: float(v) for m, v in metrics.gt_metrics(jnp.asarray(x), gt).items()}
                for k, x in candidates.items()}
      scores['best_slice+bicubic']['slice'] = best
      scores['reference'] = (f'original-resolution centre view {center_name} '
                             f'({center_full.shape[0]}x{center_full.shape[1]}); a true all-in-focus '
                             'image only for rendered light fields')
      logging.info('against the centre view: DFP %.2f dB / %.4f, bicubic of the average %.2f dB / %.4f',
                   scores['dfp']['PSNR'], scores['dfp']['SSIM'], scores['average+bicubic']['PSNR'],
                   scores['average+bicubic']['SSIM'])

    extra = {'seed': f.seed, 'memory_estimate_bytes': mem, 'lightfield': planes_info}
    if scores is not None:
      extra['center_view_scores'] = scores
    summary = cli.write_scene_outputs(tmp, result, list(stack), infos, config, bit_depth, extra=extra)

    mine = []

    def put(name, image, depth=8):
      image_io.write_image(os.path.join(tmp, name), image, depth)
      mine.append(name)

    for name, image in zip(stack_files, stack):
      put(name, image, bit_depth)
    put('coverage.png', coverage[..., None])
    put('index_map.png', _index_map_picture(np.asarray(result.decision_maps), planes))
    put('contact_sheet.png', _contact_sheet(stack, np.asarray(result.decision_maps), result.fused, planes))
    ref_tile = _resize_reference(center_full, out_h, out_w)
    ref_caption = 'centre view' if center_full.shape[:2] == (out_h, out_w) else (
        f'centre view (resized to {out_h}x{out_w})')
    captions = [ref_caption, 'bicubic of the stack average', 'DFP']
    if scores is not None:
      captions[1] += f' {scores["average+bicubic"]["PSNR"]:.2f} dB'
      captions[2] += f' {scores["dfp"]["PSNR"]:.2f} dB'
    put('comparison_center.png', viz.side_by_side([ref_tile, bicubic, result.fused], captions))
    image_io.write_json(os.path.join(tmp, 'planes.json'), planes_info)
    mine.append('planes.json')
    files = summary['output']['files']
    summary['output']['files'] = [x for x in files if x != 'summary.json'] + [
        x for x in mine if x not in files] + ['summary.json']
    image_io.write_json(os.path.join(tmp, 'summary.json'), summary)
  logging.info('done in %.1f s (light field %.1f s, DFP %.1f s): results in %s',
               time.perf_counter() - t0, lf_seconds, result.timings['total_s'],
               image_io.resolve_output_dir(f.output_dir))
  return 0
