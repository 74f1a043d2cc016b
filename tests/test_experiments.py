"""The scripts of experiments/, run as modules from the repository root as a user runs them:
`benchmarks.benchmark` end to end on a tiny dataset (layout of results.json, results.md, images,
external (lossy) results, the JPEG round trip, resume), `benchmarks.benchmark_gt` and
`studies.x1_ceiling` on synthetic light fields, `benchmarks.bench_step`, `benchmarks.bench_vs_authors` and
`benchmarks.bench_scene` against a stand-in for the authors' step, `benchmarks.plot_curves`,
`studies.robustness_table`, and the oracles of `experiments.common`."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import synthetic  # pylint: disable=g-bad-import-order  (tests/ is on the path)
from experiments import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ['--iters=3', '--mask_iters=2', '--chunk_size=2', '--channels=4,8', '--skip_channels=2,2',
              '--mask_skip_channels=0,2', '--kernel_size=3', '--nocompilation_cache']
SIZE = 32  # Of synthetic.write_light_field's views.
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


def _module(name):
  """The command of script `experiments.<name>`, run as a module (from ROOT)."""
  return [sys.executable, '-m', f'experiments.{name}']


def _run(args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(_module('benchmarks.benchmark') + args, cwd=ROOT, env=env, capture_output=True,
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
  r = subprocess.run(_module('studies.robustness_table') + [str(tmp_path), f'--json={tmp_path / "t.json"}'],
                     cwd=ROOT, capture_output=True, text=True, timeout=60)
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
  r = subprocess.run(_module('benchmarks.plot_curves') + [
      f'--json={tmp_path / "run.json"}', '--labels=x', '--tols=2.5e-4,5e-4,1e-6',
      f'--tols_json={tmp_path / "t.json"}'], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  rows = json.loads((tmp_path / 't.json').read_text())
  assert [(x['tol'], x['stop_step'], x['psnr_at_stop']) for x in rows] == [
      (2.5e-4, 250, 31.9), (5e-4, 200, 31.8), (1e-6, None, 32.0)]
  assert abs(rows[0]['psnr_change'] - (31.9 - 32.0)) < 1e-9
  assert '| x | a | 0.0005 | 200 | 31.80 | -0.200 |' in r.stdout


def test_bench_step_writes_a_list_of_rows_with_issue_6_keys(tmp_path):
  out = tmp_path / 'step.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run(_module('benchmarks.bench_step') + [
      '--sizes=32', '--scales=2', '--stages=mask', '--steps=1', '--repeats=1', '--cpu_convs=eigen',
      '--strided_convs=direct', f'--json={out}'], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
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


# A stand-in for ../shared/tools/ref_step_bench.py (the authors' PyTorch step; no torch needed): the
# same command line and JSON lines. Call n (counted in the MIRROR folder) reports main 0.1 (n + 1) and
# mask 0.05 (n + 1) s/step, or a failed mask row if MIRROR/mask_fails exists.
FAKE_AUTHORS_BENCH = """
import argparse, json, os
ap = argparse.ArgumentParser()
ap.add_argument('--sizes', type=int, nargs='+')
ap.add_argument('--stages')
ap.add_argument('--reps', type=int)
ap.add_argument('--warmup', type=int, default=3)
ap.add_argument('--threads', type=int, default=2)
a = ap.parse_args()
repo = os.environ['MIRROR']
calls = os.path.join(repo, 'calls.jsonl')
n = len(open(calls).read().splitlines()) if os.path.exists(calls) else 0
with open(calls, 'a') as f:
  f.write(json.dumps(dict(vars(a), tmpdir=os.environ['TMPDIR'])) + '\\n')
print(f'# torch fake threads={a.threads}')
for hr in a.sizes:
  for stage in a.stages.split(','):
    row = {'stage': stage, 'hr': hr, 'net_size': hr if stage == 'main' else hr // 2,
           'params': 1550755 if stage == 'main' else 3089938}
    if stage == 'mask' and os.path.exists(os.path.join(repo, 'mask_fails')):
      row['error'] = 'fake: mask fails'
    else:
      t = (0.1 if stage == 'main' else 0.05) * (n + 1)
      row.update(median_s=t, min_s=t, mean_s=t, reps=a.reps)
    print(json.dumps(row))
print('| a table |')
"""


def _fake_authors(tmp_path, mask_fails=False):
  """(flags that run FAKE_AUTHORS_BENCH as the authors' step, a function returning its calls)."""
  repo = tmp_path / 'authors_repo'
  repo.mkdir()
  if mask_fails:
    (repo / 'mask_fails').write_text('')
  bench = tmp_path / 'fake_ref_step_bench.py'
  bench.write_text(FAKE_AUTHORS_BENCH)
  calls = lambda: [json.loads(l) for l in (repo / 'calls.jsonl').read_text().splitlines()]
  return [f'--authors_python={sys.executable}', f'--authors_repo={repo}', f'--authors_bench={bench}'], calls


def _bench(name, args, timeout=300):
  return subprocess.run(_module(f'benchmarks.{name}') + args, cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
                        timeout=timeout)


TINY_NETS = ['--channels=4,8', '--skip_channels=2,2', '--mask_skip_channels=0,2', '--kernel_size=3',
             '--jax_disable_most_optimizations']


def test_bench_vs_authors_ratio_of_medians_over_rounds_with_a_fake_authors_step(tmp_path):
  """Three rounds against the stand-in: the authors' main step is 0.1, 0.2, 0.3 s in rounds 0-2, so its
  median is 0.2 s and the ratio 0.2 / the median of our rounds; their failed mask row has no ratio; our
  cheaper prior is its own row, outside the ratio; our tiny network is flagged as not theirs."""
  authors, calls = _fake_authors(tmp_path, mask_fails=True)
  out = tmp_path / 'vs.json'
  r = _bench('bench_vs_authors', authors + [
      '--hr_sizes=32', '--rounds=3', '--reps=1', '--warmup=1', '--threads=3', '--prior=deep_decoder',
      f'--json={out}'] + TINY_NETS)
  assert r.returncode == 0, r.stderr[-3000:]
  assert [(c['sizes'], c['stages'], c['reps'], c['warmup'], c['threads']) for c in calls()] == [
      ([32], 'main,mask', 1, 1, 3)] * 3
  assert not any(os.path.exists(c['tmpdir']) for c in calls())  # Their extraction folder, removed.
  d = json.loads(out.read_text())
  assert d['authors_measured'] and d['authors']['threads'] == 3 and d['authors']['header'] == [
      '# torch fake threads=3']
  assert d['ours']['threads']['cores_available'] >= 1 and d['ours']['config']['prior'] == 'deep_decoder'
  assert [(e['round'], e['side']) for e in d['round_log']] == [
      (k, side) for k in range(3) for side in ('authors', 'ours')]
  assert all(len(e['loadavg_before']) == 3 and len(e['loadavg_after']) == 3 for e in d['round_log'])
  rows = {(row['stage'], row['prior']): row for row in d['rows']}
  assert set(rows) == {('main', 'skipnet'), ('main', 'deep_decoder'), ('mask', 'skipnet')}
  main = rows[('main', 'skipnet')]
  assert (main['hr'], main['lr'], main['in_ratio']) == (32, 16, True)
  ours = main['ours']['rounds']
  assert len(ours) == 3 and main['ours']['median'] == pytest.approx(np.median(ours))
  assert main['authors']['rounds'] == pytest.approx([0.1, 0.2, 0.3]) and main['authors']['median'] == (
      pytest.approx(0.2))
  assert main['authors']['spread'] == pytest.approx(0.2 / 0.2)
  assert main['ratio'] == pytest.approx(0.2 / np.median(ours))
  assert main['ratio_rounds'] == pytest.approx([a / o for a, o in zip([0.1, 0.2, 0.3], ours)])
  assert main['authors_params'] == 1550755 and main['same_network'] is False  # Tiny nets here.
  assert main['ours_params'] == main['ours_row']['params'] < 10 ** 5
  mask = rows[('mask', 'skipnet')]
  assert mask['authors_error'] == 'fake: mask fails' and 'ratio' not in mask and mask['authors_nets'] == 2
  assert 'two mask nets' in mask['note'] and mask['lr'] == 16
  dd = rows[('main', 'deep_decoder')]
  assert not dd['in_ratio'] and 'ratio' not in dd and 'authors' not in dd and 'own row' in dd['note']
  assert dd['ours_skipnet_over_this'] == pytest.approx(main['ours']['median'] / dd['ours']['median'])
  lines = r.stdout.splitlines()
  row_line = next(l for l in lines if l.startswith('| main | 32 | 16 |'))
  assert f"| **{main['ratio']:.2f}x** |" in row_line and '| 200.0 [100.0-300.0] |' in row_line
  assert '| 1,550,755 / ' in row_line and 'NOT the same network' in row_line
  assert any(l.startswith('| mask | 32 | 16 | fails: fake: mask fails |') for l in lines)
  assert any(l.startswith('| main (deep_decoder) | 32 | 16 | - |') and 'not a ratio' in l for l in lines)
  assert 'NOT measured' not in r.stdout


def test_bench_vs_authors_without_the_authors_flags_says_their_step_was_not_measured(tmp_path):
  out = tmp_path / 'vs.json'
  r = _bench('bench_vs_authors', ['--hr_sizes=32', '--stages=main', '--rounds=1', '--reps=1', '--warmup=1',
                                  f'--json={out}'] + TINY_NETS)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "The authors' step was NOT measured in this run" in r.stdout
  assert any(l.startswith('| main | 32 | 16 | not measured |') for l in r.stdout.splitlines())
  d = json.loads(out.read_text())
  assert d['authors_measured'] is False and d['authors'] is None
  assert [e['side'] for e in d['round_log']] == ['ours']
  (row,) = d['rows']
  assert 'ratio' not in row and 'authors' not in row and len(row['ours']['rounds']) == 1
  # Half the authors' flags is a usage error, not a silent ours-only run.
  r = _bench('bench_vs_authors', [f'--authors_python={sys.executable}', '--hr_sizes=32'])
  assert r.returncode != 0 and '--authors_python and --authors_repo go together' in r.stderr


def test_bench_scene_prices_the_authors_full_run_at_their_step_measured_before_and_after(lf_folder,
                                                                                       tmp_path):
  """The stand-in's steps are main 0.1 / mask 0.05 s before our timings and 0.2 / 0.1 s after: their
  full run = 500 x 0.075 + 2000 x 0.15 = 337.5 s, against our warm and cold scene times (our decision
  embedding off here: the pricing does not depend on it)."""
  authors, calls = _fake_authors(tmp_path)
  out = tmp_path / 'scene.json'
  r = _bench('bench_scene', authors + [
      f'--scenes=syn={lf_folder / "views"}@0:0:{SIZE}:{SIZE}', '--scale=2', '--authors_reps=2',
      '--iters=2', '--mask_iters=0', '--chunk_size=2', '--stop_window=1', '--stop_min_iters=1',
      f'--json={out}'] + TINY_NETS)
  assert r.returncode == 0, r.stderr[-3000:]
  assert [(c['sizes'], c['stages'], c['reps']) for c in calls()] == [([SIZE], 'main,mask', 2)] * 2
  d = json.loads(out.read_text())
  assert d['authors_measured'] and d['authors']['threads'] == 2
  (res,) = d['results']
  a = res['authors']
  assert (a['hr'], a['square_of_equal_area'], a['mask_iters'], a['main_iters']) == (SIZE, False, 500, 2000)
  assert a['t_main_runs'] == [0.1, 0.2] and a['t_mask_runs'] == [0.05, 0.1]
  assert a['full_run_s'] == pytest.approx(337.5) and len(a['loadavg']) == 2
  assert res['ratio_warm'] == pytest.approx(337.5 / res['auto_warm']['seconds'])
  assert res['ratio_cold'] == pytest.approx(337.5 / res['auto_cold']['seconds'])
  line = next(l for l in r.stdout.splitlines() if l.startswith('| syn |'))
  assert f"| 338 (75.0 / 150.0) | **{res['ratio_warm']:.1f}x** | {res['ratio_cold']:.1f}x |" in line
  assert 'NOT measured' not in r.stdout


@pytest.fixture(scope='module')
def lf_folder(tmp_path_factory):
  d = tmp_path_factory.mktemp('lf')
  synthetic.write_light_field(str(d / 'views'))
  return d


GT_SIZE, GT_REGION = 48, 32  # benchmark_gt: a larger synthetic light field, two regions of 32 px.
GT_SIMPLE = ('average', 'map', 'laplacian_energy', 'laplacian_pyramid', 'best_slice')


@pytest.fixture(scope='module')
def lf_folder_48(tmp_path_factory):
  d = tmp_path_factory.mktemp('lf48') / 'hci_syn_33views'  # Scene name 'syn'.
  tex = synthetic.write_light_field(str(d), size=GT_SIZE)
  return d, tex.astype(np.float32) / 255.0  # The centre view is the texture itself.


def _gt_run(args, cache):
  """benchmarks/benchmark_gt.py with tiny networks; one persistent compilation cache for the test, so
  that reruns and the light-field job (the same [2, 16, 16, 3] inputs at x2) compile nothing again."""
  tiny = [f for f in TINY_FLAGS if f != '--nocompilation_cache'] + ['--jax_disable_most_optimizations']
  r = subprocess.run(_module('benchmarks.benchmark_gt') + args + tiny + [f'--compilation_cache_dir={cache}'],
                     cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _gt_rows(path):
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      assert line == '{"kind": "row", "digest"'  # The cut write of the resume test, ignored.
  return [r for r in records if r['kind'] == 'row'], [r for r in records if r['kind'] == 'header']


def test_benchmark_gt_scores_every_method_resumes_and_runs_the_light_field_job(lf_folder, lf_folder_48,
                                                                              tmp_path):
  """benchmarks/benchmark_gt.py on synthetic light fields whose centre view is the all-in-focus truth
  (left half at disparity -1, right half at +1; the regions straddle the two)."""
  from dfp_jax import baselines, metrics, resample  # pylint: disable=g-import-not-at-top
  folder, truth = lf_folder_48
  out, bench, cache, table = tmp_path / 'gt.jsonl', tmp_path / 'bench', tmp_path / 'cache', tmp_path / 't.md'
  grid = [f'--lightfield={folder}', '--regions=0:8,16:8', f'--region_size={GT_REGION}', '--apertures=inf',
          '--num_planes=2', f'--bench_dir={bench}', '--seed=7']
  r = _gt_run(grid + ['--scales=2', f'--json={out}', f'--table={table}', '--batch_strategy=loop'], cache)
  rows, headers = _gt_rows(out)
  assert len(headers) == 1 and headers[0]['seed'] == 7 and headers[0]['config']['iters'] == 3
  assert 'jax' in headers[0]['versions'] and all(row['digest'] == headers[0]['digest'] for row in rows)
  by_case = {}
  for row in rows:
    by_case.setdefault((tuple(row['region']), row['scale']), {})[row['method']] = row
  x2 = {'dfp', 'perfect+bicubic', 'perfect+lanczos3', 'oracle_pixel+bicubic'} | {
      f'{m}+{u}' for m in GT_SIMPLE + ('dfp_map',) for u in ('bicubic', 'lanczos3')}
  assert set(by_case) == {((0, 8), 2), ((16, 8), 2)} and all(set(v) == x2 for v in by_case.values())
  assert len(rows) == 2 * len(x2)  # One row per (case, method).
  for (y, x), _ in by_case:
    case = by_case[((y, x), 2)]
    assert all(row['scene'] == 'syn' and row['aperture'] == 'inf' and row['N'] == 2 for row in case.values())
    assert case['dfp']['lr_size'] == [GT_REGION // 2] * 2 and case['dfp']['planes'] == [-1.0, 1.0]
    assert case['dfp']['main_steps'] == 3 and case['dfp']['mask_steps'] == 2 and case['dfp']['seconds'] > 0
    # The truth is the centre view over the region, and the inputs area averages: `perfect` recomputed.
    gt = truth[y:y + GT_REGION, x:x + GT_REGION]
    perfect = baselines.upsample(resample.area_downsample(gt, 2), 2, 'bicubic')
    assert abs(case['perfect+bicubic']['PSNR'] - float(metrics.psnr(perfect, gt))) < 1e-3
    for u in ('bicubic', 'lanczos3'):  # The ceiling of every fuse-then-upsample pipeline.
      for m in GT_SIMPLE + ('oracle_pixel',):
        if f'{m}+{u}' in case:
          assert case[f'perfect+{u}']['PSNR'] >= case[f'{m}+{u}']['PSNR'], (m, u, case)
    # Each slice has one half in focus: selecting by focus beats averaging (a wrong truth breaks this).
    assert case['map+bicubic']['PSNR'] > case['average+bicubic']['PSNR'] + 1
    # The inputs are the cached slices area-averaged by the scale (the stack cache holds the slices).
    cached = [f for f in os.listdir(bench / 'stacks') if f.startswith(f'syn_{y}_{x}_{GT_REGION}_ainf_n2_')]
    assert len(cached) == 1
    with np.load(bench / 'stacks' / cached[0]) as z:
      assert np.array_equal(z['gt'], gt)
      lr = resample.area_downsample(z['slices'], 2)
    ups = [baselines.upsample(v, 2, 'bicubic') for v in (lr.mean(0), *lr)]
    assert abs(case['average+bicubic']['PSNR'] - float(metrics.psnr(ups[0], gt))) < 1e-3
    assert abs(case['best_slice+bicubic']['PSNR'] - max(float(metrics.psnr(u, gt)) for u in ups[1:])) < 1e-3
  lines = r.stdout.splitlines()
  assert '| method | syn | mean | worst |' in lines and any(l.startswith('| **DFP - best simple baseline** |')
                                                          for l in lines)
  # Per scene = the mean over its regions; best simple baseline = the per-case best, then that mean.
  cases = list(by_case.values())
  mean = lambda f: f'{np.mean([f(c) for c in cases]):.2f}'
  best = lambda c: max(v['PSNR'] for k, v in c.items() if k.split('+')[0] in GT_SIMPLE)
  assert f'| dfp | {mean(lambda c: c["dfp"]["PSNR"])} |' in r.stdout
  assert f'| **best simple baseline** | {mean(best)} |' in r.stdout
  assert table.read_text().strip() == r.stdout.strip()

  # An interrupted run (the baseline rows of the last case missing, its write cut), resumed with --nodfp
  # and x1 added: only those rows and the x1 cases are scored, without DFP. At x1 (no upsampling) the
  # pixel oracle is the best per-pixel selection.
  text = out.read_text().splitlines(keepends=True)
  keep = [l for l in text if '"region": [16, 8]' not in l or '"method": "dfp"' in l]
  assert len(text) - len(keep) == len(x2) - 1
  out.write_text(''.join(keep) + '{"kind": "row", "digest"')
  r2 = _gt_run(grid + ['--scales=1,2', '--nodfp', f'--json={out}'], cache)
  assert '4 cases: 1 done before, 3 to run' in r2.stderr and '[main]' not in r2.stderr
  assert '| dfp |' not in r2.stdout  # The tables of this run's methods.
  rows2, _ = _gt_rows(out)
  assert len(rows2) == len(rows) + 2 * len(GT_SIMPLE + ('dfp_map', 'oracle_pixel'))
  before = {(tuple(row['region']), row['method']): row['PSNR'] for row in rows}
  assert all(abs(row['PSNR'] - before[(tuple(row['region']), row['method'])]) < 1e-4
             for row in rows2 if row['scale'] == 2)
  x1 = {}
  for row in rows2:
    if row['scale'] == 1:
      x1.setdefault(tuple(row['region']), {})[row['method']] = row['PSNR']
  assert len(x1) == 2
  for p in x1.values():
    assert set(p) == {f'{m}+bicubic' for m in GT_SIMPLE + ('dfp_map', 'oracle_pixel')}, p  # No dfp, no perfect.
    assert p['oracle_pixel+bicubic'] >= p['dfp_map+bicubic'] - 1e-6, p
    for m in ('map', 'laplacian_energy', 'best_slice'):
      assert p['oracle_pixel+bicubic'] >= p[f'{m}+bicubic'] - 1e-6, p
    assert p['map+bicubic'] > p['average+bicubic'] + 3, p
  # The first command again: nothing to do, no DFP, no row, the same tables.
  r3 = _gt_run(grid + ['--scales=2', f'--json={out}'], cache)
  assert '2 cases: 2 done before, 0 to run' in r3.stderr and '[main]' not in r3.stderr
  assert len(_gt_rows(out)[0]) == len(rows2) and r3.stdout == r.stdout

  # The light-field job: views area-downsampled x2 ([2, 16, 16, 3] inputs), x2, full-resolution truth.
  out2 = tmp_path / 'lf.jsonl'
  r4 = _gt_run([f'--lightfield={lf_folder / "views"}', '--lf_job', f'--bench_dir={bench}', f'--json={out2}'],
               cache)
  rows3, _ = _gt_rows(out2)
  lf = {row['method']: row for row in rows3}
  assert set(lf) == {'dfp', 'best_slice+bicubic', 'average+bicubic', 'map+bicubic', 'perfect+bicubic'}
  assert all(row['mode'] == 'lf_job' and row['scene'] == 'views' and row['scale'] == 2 for row in rows3)
  assert lf['dfp']['lr_size'] == [SIZE // 2] * 2
  assert lf['perfect+bicubic']['PSNR'] >= max(lf[m]['PSNR'] for m in lf if m != 'dfp')
  assert any(l.startswith('| **DFP - best_slice+bicubic** |') for l in r4.stdout.splitlines())


def test_x1_ceiling_bounds_are_ordered_on_the_synthetic_light_field(lf_folder, tmp_path):
  """studies/x1_ceiling.py: the per-pixel oracle selection is no worse than any other selection (the
  map, the windowed oracles, the |Laplacian| rule), the per-pixel best convex blend no worse than any
  selection or feathered blend, and a window of sigma 0.01 (an identity kernel) turns the windowed
  oracle into the per-pixel one."""
  out = tmp_path / 'ceiling.json'
  r = subprocess.run(_module('studies.x1_ceiling') + [
      f'--lightfield={lf_folder / "views"}', '--regions=0:0', f'--region_size={SIZE}',
      '--num_planes=2,3', '--window_sigmas=0.01,2', f'--json={out}'], cwd=ROOT,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  d = json.loads(out.read_text())
  assert [row['num_planes'] for row in d['rows']] == [2, 3]
  for row in d['rows']:
    p = {k: v['PSNR'] for k, v in row['scores'].items()}
    selections = ['map', 'laplacian 0.01', 'laplacian 2', 'oracle window 0.01', 'oracle window 2']
    assert set(p) == set(selections) | {'feather 1', 'feather 2', 'oracle pixel', 'oracle blend'}, p
    assert all(p['oracle pixel'] >= p[k] - 1e-6 for k in selections), p
    assert all(p['oracle blend'] >= p[k] - 1e-6 for k in p), p
    assert abs(p['oracle window 0.01'] - p['oracle pixel']) < 1e-6, p
  assert '| 3 (1 regions) |' in r.stdout


def _dense_simplex_best(stack, gt, steps=200):
  """Smallest squared error over convex weights of 3 inputs on a 1/steps grid, per pixel."""
  a, b = np.meshgrid(np.arange(steps + 1) / steps, np.arange(steps + 1) / steps, indexing='ij')
  keep = a + b <= 1 + 1e-12
  w = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]])  # [3, G]
  fits = np.einsum('ng,nhwc->ghwc', w, stack.astype(np.float64))
  return ((fits - gt[None]) ** 2).sum(-1).min(0)


@pytest.mark.parametrize('channels', [3, 1])
def test_oracle_blend_matches_a_dense_search_of_the_simplex(channels):
  """The exact per-pixel convex blend against a 1/200 grid of the weights, for 3 inputs in colour and in
  grey (where the 3-input face is underdetermined and must come from the 2-input faces)."""
  rng = np.random.default_rng(3)
  stack = rng.random((3, 4, 5, channels)).astype(np.float32)
  gt = rng.random((4, 5, channels)).astype(np.float32)
  err = ((common.oracle_blend(stack, gt).astype(np.float64) - gt) ** 2).sum(-1)
  dense = _dense_simplex_best(stack, gt)
  # The exact optimum is never above the grid's best (a blend outside the simplex would be far below it).
  assert np.all(err <= dense + 1e-6), (err, dense)
  np.testing.assert_allclose(err, dense, atol=2e-5)


def test_laplacian_selection_picks_the_sharp_input_and_window_oracle_the_true_one():
  rng = np.random.default_rng(5)
  sharp = cv2.GaussianBlur(rng.random((24, 24, 3)).astype(np.float32), (3, 3), 0.6)
  blurred = cv2.GaussianBlur(sharp, (9, 9), 2.5)
  left = (np.arange(24) < 12)[None, :, None]
  a, b = np.where(left, sharp, blurred), np.where(left, blurred, sharp)  # Each sharp on one half.
  stack = np.stack([a, b])
  inner = np.s_[:, 3:9]  # Away from the border between the halves (a window straddles it).
  np.testing.assert_array_equal(common.laplacian_selection(stack, 1.0)[inner], sharp[inner])
  np.testing.assert_array_equal(common.oracle_window(stack, sharp, 1.0)[inner], sharp[inner])
  np.testing.assert_array_equal(common.oracle_pixel(stack, sharp), sharp)


def test_seam_ratio_sees_error_at_inner_tile_borders_only():
  """A plan of 2 x 2 tiles (side 40, starts 0 and 24) at x2: error concentrated along the inner borders
  (output rows/columns 48 and 80) gives a large ratio, uniform error exactly 1, error on the outer frame
  (not a seam) below 1."""
  from dfp_jax import tiles  # pylint: disable=g-import-not-at-top
  plan = tiles.TilePlan('tiles', 40, 16, (0, 24), (0, 24))
  base = np.full((128, 128, 3), 1e-4, np.float32)
  assert common.seam_ratio(base, plan, 2) == pytest.approx(1.0)
  seam = base.copy()
  seam[46:50] = seam[:, 78:82] = 1e-2
  assert common.seam_ratio(seam, plan, 2) > 3
  frame = base.copy()
  frame[:4] = 1e-2  # The image border is not a tile border.
  assert common.seam_ratio(frame, plan, 2) < 1


def test_stop_rule_study_replays_rules_on_recorded_trajectories(tmp_path):
  """Two hand-made trajectories: one whose change falls fast (an absolute rule stops it early, where the
  PSNR is already final), one that keeps improving with small changes (a loose rule stops it too early
  and loses 0.5 dB). The replay table reports each rule's worst cost and the count over the budget."""
  from dfp_jax.config import FusionConfig  # pylint: disable=g-import-not-at-top
  from experiments.studies import stop_rule  # pylint: disable=g-import-not-at-top  (defines no flags)
  cfg = FusionConfig().replace(stop='fixed', scale=1).to_dict()
  digest = stop_rule.trajectory_digest(cfg, 0, float('inf'), 2, 256)
  # The trajectories do not depend on the stop fields (every case is the fixed run).
  assert stop_rule.trajectory_digest(dict(cfg, stop_tol=1.0), 0, float('inf'), 2, 256) == digest
  fast = [{'step': s, 'psnr': 30.0, 'change': 1e-3 if s < 300 else 1e-5} for s in range(50, 1001, 50)]
  slow = [{'step': s, 'psnr': 30.0 + 0.5 * s / 1000, 'change': 1.2e-4} for s in range(50, 1001, 50)]
  path = tmp_path / 'traj.jsonl'
  with open(path, 'w') as f:
    for i, t in enumerate((fast, slow)):
      f.write(json.dumps({'digest': digest, 'scene': f's{i}', 'region': [0, 0], 'scale': 2,
                          'trajectory': t}) + '\n')
  r = subprocess.run([sys.executable, '-m', 'experiments.studies.stop_rule', '--norun', f'--json={path}',
                      f'--table={tmp_path / "t.md"}'], cwd=common.ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = {line.split('|')[1].strip(): line.split('|')[2:6] for line in r.stdout.splitlines()
          if line.startswith('| abs') or line.startswith('| rel') or line.startswith('| library')}
  worst, _, over, steps = rows['abs 0.0002 p2']  # Stops slow at 250 (0.375 dB lost), fast at 350.
  assert float(worst) == pytest.approx(-0.375, abs=1e-3) and int(over) == 1
  worst, _, over, _ = rows['abs 0.0001 p2']  # Never stops slow: no loss.
  assert float(worst) == pytest.approx(0.0, abs=1e-6) and int(over) == 0
  assert rows['library default'] == rows['abs 0.0001 p2']  # Both cases are x2: the default tolerance.
  assert (tmp_path / 't.md').read_text().startswith('2 cases')


def test_experiment_scripts_define_their_flags_only_when_run():
  """Scripts that tests import (for their functions) define no flags on import, so that two of them
  imported by one test process never define a flag twice (a fresh process: this one may hold flags)."""
  code = ('from absl import flags\n'
          'from experiments.benchmarks import bench_align, bench_large\n'
          'from experiments.studies import stop_rule\n'
          'print(len(list(flags.FLAGS)))\n')
  r = subprocess.run([sys.executable, '-c', code], cwd=common.ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  bare = subprocess.run([sys.executable, '-c', 'from absl import app, flags, logging\n'
                         'print(len(list(flags.FLAGS)))'], capture_output=True, text=True)
  assert r.stdout.split() == bare.stdout.split()  # absl's own flags only.
