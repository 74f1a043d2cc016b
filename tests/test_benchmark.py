"""experiments/benchmark.py end to end on a tiny dataset: layout of results.json, results.md, images,
external (lossy) results, the JPEG round trip, resume."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'experiments', 'benchmark.py')
TINY = ['--iters=3', '--mask_iters=2', '--chunk_size=2', '--channels=4,8', '--skip_channels=2,2',
        '--mask_skip_channels=0,2', '--kernel_size=3', '--nocompilation_cache', '--dip_iters=2',
        '--jax_disable_most_optimizations']


def _scene(folder, seed, external=True):
  rng = np.random.default_rng(seed)
  grey = cv2.GaussianBlur(rng.random((32, 40)).astype(np.float32), (3, 3), 0.8)
  # Colour = grey texture x a tint: JPEG's chroma subsampling does not destroy it.
  sharp = (grey[..., None] * np.array([200, 230, 255]) + 10).astype(np.uint8)
  blur = cv2.GaussianBlur(sharp, (9, 9), 3)
  a, b = sharp.copy(), sharp.copy()
  a[:, 20:] = blur[:, 20:]
  b[:, :20] = blur[:, :20]
  folder.mkdir(parents=True)
  for name, im in (('A.png', a), ('B.png', b), ('GT.png', sharp)):
    assert cv2.imwrite(str(folder / name), im)
  if external:
    (folder / 'fused').mkdir()
    assert cv2.imwrite(str(folder / 'fused' / 'PUBLISHED.jpg'), sharp, [cv2.IMWRITE_JPEG_QUALITY, 98])


def _run(args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, BENCH] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def test_benchmark_runner_layout_metrics_and_resume(tmp_path):
  data = tmp_path / 'data'
  _scene(data / 's1', 1)
  _scene(data / 's2', 2, external=False)
  out = tmp_path / 'out'
  args = [f'--dataset={data}', f'--output_dir={out}', '--scales=1,2',
          '--methods=dfp,average,decision_map,laplacian_pyramid,dip', '--upsamplers=bicubic,lanczos'] + TINY
  r = _run(args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'lossy' in r.stderr  # The JPEG external result is flagged.
  res = json.loads((out / 'results.json').read_text())
  s1 = res['scenes']['s1']
  x1 = {'dfp', 'average', 'decision_map', 'laplacian_pyramid', 'PUBLISHED'}
  x2 = {'dfp', 'dip'} | {f'{m}+{u}' for m in ('average', 'decision_map', 'laplacian_pyramid')
                         for u in ('bicubic', 'lanczos')}
  assert {m for m, v in s1.items() if 'x1' in v} == x1
  assert {m for m, v in s1.items() if 'x2' in v} == x2
  assert 'PUBLISHED' not in res['scenes']['s2']
  needed = {'MG', 'EI', 'IE', 'MGA', 'ECO', 'RMG', 'REI', 'RIE', 'RMGA', 'RECO', 'PSNR', 'SSIM', 'Qabf',
            'NMI', 'Qy', 'Qcb', 'SF', 'AG', 'EN', 'SD'}
  assert needed <= set(s1['dfp']['x2']) and needed <= set(s1['average']['x1'])
  # The published result is the ground truth up to a quality-98 JPEG: it scores above the average.
  assert s1['PUBLISHED']['x1']['PSNR'] > s1['average']['x1']['PSNR'] + 3
  # Laplacian-pyramid fusion of a left/right pair beats the average on the ground truth.
  assert s1['laplacian_pyramid']['x1']['PSNR'] > s1['average']['x1']['PSNR']
  for m in x2:
    assert (out / 's1' / 'x2' / f'{m.replace("+", "_")}.png').exists()
  assert cv2.imread(str(out / 's1' / 'x2' / 'dfp.png')).shape == (32, 40, 3)
  assert (out / 's1' / 'x1' / 'sheet.png').exists()
  md = (out / 'results.md').read_text()
  assert 'RMG x2' in md and 'PSNR x1' in md and 'Qabf x1' in md and 'JPEG round trip before scoring: none' in md
  # Resume: nothing recomputed.
  r = _run(args)
  assert r.returncode == 0
  assert r.stderr.count('already scored, skipped') == 4
  # JPEG round trip for everything (a new output folder): the average's scores change.
  out_q = tmp_path / 'out_q'
  r = _run([f'--dataset={data}', f'--output_dir={out_q}', '--scales=1', '--methods=average',
            '--jpeg_quality=75'] + TINY)
  assert r.returncode == 0, r.stderr[-3000:]
  q = json.loads((out_q / 'results.json').read_text())['scenes']['s1']
  assert q['average']['x1']['PSNR'] != s1['average']['x1']['PSNR']
  assert 'quality 75' in (out_q / 'results.md').read_text()


def test_benchmark_bad_dataset_is_one_line(tmp_path):
  r = _run([f'--dataset={tmp_path / "missing"}'])
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error:')
  assert 'missing' in r.stderr and 'Traceback' not in r.stderr


def test_robustness_table_collects_dfp_rows_of_every_run(tmp_path):
  for run, psnr in (('default', 30.0), ('robust_no_joint_grad', 29.5)):
    (tmp_path / run).mkdir()
    (tmp_path / run / 'results.json').write_text(json.dumps({'scenes': {'s': {
        'dfp': {'x2': {'PSNR': psnr, 'SSIM': 0.9, 'RMG': 0.5}},
        'average+bicubic': {'x2': {'PSNR': 1.0}}}}}))
  (tmp_path / 'unfinished').mkdir()  # No results.json: skipped.
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'robustness_table.py'),
                      str(tmp_path), f'--json={tmp_path / "t.json"}'], capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 0, r.stderr
  rows = json.loads((tmp_path / 't.json').read_text())
  assert [(x['run'], x['PSNR'], x['RMG'], x['REI']) for x in rows] == [
      ('default', 30.0, 0.5, None), ('robust_no_joint_grad', 29.5, 0.5, None)]
  assert '| robust_no_joint_grad | s | x2 | 29.50 | 0.9000 | 0.5000 |' in r.stdout


def test_plot_curves_replays_stop_thresholds_on_a_recorded_trajectory(tmp_path):
  # A trajectory whose change per window halves from 8e-4. The rule (2 checks in a row below the
  # threshold, from step 100): 2.5e-4 -> checks 200 and 250 -> ends at 250; 5e-4 -> 150 and 200 -> 200;
  # 1e-6 never ends.
  steps = [50, 100, 150, 200, 250, 300]
  changes = [None, 8e-4, 4e-4, 2e-4, 1e-4, 5e-5]
  psnr = [30.0, 31.0, 31.5, 31.8, 31.9, 32.0]
  curve = [dict({'step': s, 'psnr': p}, **({} if c is None else {'change': c}))
           for s, p, c in zip(steps, psnr, changes)]
  run = {'config': {'stop_window': 50, 'stop_min_iters': 100, 'stop_patience': 2},
         'results': [{'scene': 'a', 'fixed_curve': curve, 'stop_at': None}]}
  (tmp_path / 'run.json').write_text(json.dumps(run))
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'plot_curves.py'),
                      f'--json={tmp_path / "run.json"}', '--labels=x', '--tols=2.5e-4,5e-4,1e-6',
                      f'--tols_json={tmp_path / "t.json"}'], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  rows = json.loads((tmp_path / 't.json').read_text())
  assert [(x['tol'], x['stop_step'], x['psnr_at_stop']) for x in rows] == [
      (2.5e-4, 250, 31.9), (5e-4, 200, 31.8), (1e-6, None, 32.0)]
  assert abs(rows[0]['psnr_change'] - (31.9 - 32.0)) < 1e-9
  assert '| x | a | 0.0005 | 200 | 31.80 | -0.200 |' in r.stdout


def test_bench_step_writes_a_list_of_rows_with_issue_6_keys(tmp_path):
  out = tmp_path / 'step.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'bench_step.py'), '--sizes=32',
                      '--scales=2', '--stages=mask', '--steps=1', '--repeats=1', '--cpu_convs=eigen',
                      '--strided_convs=direct', f'--json={out}'], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert isinstance(rows, list) and len(rows) == 1
  row = rows[0]
  assert (row['lr_size'], row['scale'], row['stage'], row['cpu_conv'], row['strided_conv']) == (
      32, 2, 'mask', 'eigen', 'direct')
  assert row['step_s'] > 0 and row['gflops'] > 0 and row['compile_s'] > 0 and row['compile_cached_s'] > 0
  assert row['compile_cache_hit'] is True  # The cached compile really read the program back.
  assert row['backend'] == 'cpu' and 'jax' in row['versions'] and row['process_peak_rss_bytes'] > 2**20
  assert '| 32 | x2 | mask |' in r.stdout
