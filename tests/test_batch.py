"""Batch engine: vmap / shard / loop give the same per-scene results, one compilation per bucket,
failed scenes recorded, and the resumable batch job (manifest, checksums, kill -9)."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import cv2
import numpy as np
import pytest
import jax

from dfp_jax import batch
from dfp_jax import fusion
from dfp_jax import memory
from dfp_jax.app import manifest
from dfp_jax.config import FusionConfig
from dfp_jax.errors import InputError
from dfp_jax.models import NetConfig

import synthetic  # pylint: disable=g-bad-import-order  (tests/ is on pytest's path)

# Compile time dominates these small tests on CPU (as in tests/test_optimize.py).
jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, 'experiments', 'run.py')
TINY_NET = NetConfig((4, 8), (4, 8), (2, 2), kernel_size=3)
TINY_MASK = NetConfig((4, 8), (4, 8), (0, 2), kernel_size=3)
CFG = FusionConfig(scale=2, iters=4, mask_iters=3, chunk_size=2, image_net=TINY_NET, mask_net=TINY_MASK)
TINY_FLAGS = ['--iters=3', '--mask_iters=2', '--chunk_size=2', '--channels=4,8', '--skip_channels=2,2',
              '--mask_skip_channels=0,2', '--kernel_size=3', '--nocompilation_cache',
              '--jax_disable_most_optimizations']


def _pair(h, w, seed):
  """A left/right multi-focus pair: A sharp on the left, B sharp on the right."""
  _, a, b = synthetic.left_right_pair(h, w, seed, 0.7, 7, 2.0)
  return [a, b]


@pytest.fixture(scope='module')
def scenes():
  return [_pair(16, 16, i) for i in range(3)] + [_pair(16, 24, 7)]


@pytest.fixture(scope='module')
def programs():
  return batch.ProgramCache()  # Compiled group programs shared by the tests below.


@pytest.fixture(scope='module')
def singles(scenes):
  return [fusion.fuse(s, config=CFG, progress=None) for s in scenes]


def _close(r, ref):
  """vmap runs a different (batched) convolution program, so float32 rounding differs; Adam's
  normalised steps amplify it on near-zero gradients, and the gap grows with every main step (one
  16x24 scene here: 3e-8 in the loss at step 2, 1e-5 at step 4, 5.6e-4 in the image on an AVX-512
  machine, 2e-5 on another; with the compare-rule maps the second main loss already differs by 1e-4
  relative and the fourth by 8e-4: Adam's first updates are sign-like on near-zero gradients). So:
  maps exact, the first loss of each stage tight, the later ones and the image loose. A real mix-up (another scene's data,
  statistics or key) changes the maps or the first loss."""
  np.testing.assert_array_equal(r.decision_maps_raw, ref.decision_maps_raw)
  np.testing.assert_array_equal(r.decision_maps, ref.decision_maps)
  for k, v in ref.history['mask'].items():
    np.testing.assert_allclose(r.history['mask'][k], v, rtol=1e-5, atol=1e-7)
  for k, v in ref.history['main'].items():
    np.testing.assert_allclose(r.history['main'][k][:1], v[:1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.history['main'][k], v, rtol=3e-3, atol=1e-6)
  np.testing.assert_allclose(r.fused, ref.fused, atol=3e-3)


def test_vmap_equals_loop_of_single_scenes(scenes, singles, programs):
  results, report = batch.fuse_batch(scenes, CFG, strategy='vmap', progress=None, probe_cache=None,
                                     programs=programs)
  assert [b['strategy'] for b in report.buckets] == ['vmap', 'vmap']
  assert [b['shape'] for b in report.buckets] == [[2, 16, 16, 3], [2, 16, 24, 3]]
  for r, ref in zip(results, singles):
    chex.assert_shape(r.fused, ref.fused.shape)
    _close(r, ref)
  assert all(v == {'step': 1} for v in report.traces.values()), report.traces
  assert [r.timings['strategy'] for r in results] == ['vmap'] * len(results)
  loop, _ = batch.fuse_batch(scenes, CFG, strategy='loop', progress=None)
  for r, ref in zip(loop, singles):
    np.testing.assert_array_equal(r.fused, ref.fused)  # The loop is the single-scene program.
    assert r.timings['strategy'] == 'loop'


def test_result_does_not_depend_on_batch_mates(scenes, programs):
  a, _ = batch.fuse_batch([scenes[0], scenes[1]], CFG, strategy='vmap', progress=None, programs=programs)
  b, _ = batch.fuse_batch([scenes[2], scenes[0]], CFG, strategy='vmap', progress=None, programs=programs)
  np.testing.assert_allclose(a[0].fused, b[1].fused, atol=1e-6)
  # Different keys give different results (the key really is per scene).
  c, _ = batch.fuse_batch([scenes[0], scenes[0]], CFG, keys=[jax.random.key(0), jax.random.key(5)],
                          strategy='vmap', progress=None, programs=programs)
  np.testing.assert_allclose(c[0].fused, a[0].fused, atol=1e-6)
  assert np.abs(c[1].fused - c[0].fused).max() > 1e-3


def test_one_trace_per_bucket_with_padded_groups(scenes, monkeypatch):
  # 5 scenes of one shape in groups of 2: groups 2, 2 and 1 + a dummy; the step is traced once.
  cfg = CFG.replace(mask_iters=0, iters=2)
  original = batch.programs.GroupStage.step
  counted = chex.assert_max_traces(lambda self, state, problem: original(self, state, problem), n=1)
  monkeypatch.setattr(batch.programs.GroupStage, 'step', counted)
  five = [scenes[i % 3] for i in range(5)]
  results, report = batch.fuse_batch(five, cfg, strategy='vmap', max_scenes_per_step=2, progress=None)
  assert report.buckets[0]['group_size'] == 2 and len(results) == 5
  np.testing.assert_allclose(results[3].fused, results[0].fused, atol=1e-6)  # Same scene, same key.
  chex.clear_trace_counter()


def test_converged_scenes_are_frozen_in_a_group(scenes):
  import jax.numpy as jnp
  from dfp_jax import optimize
  cfg = CFG.replace(mask_iters=0)
  x = jnp.stack([jnp.asarray(np.stack(s)) for s in scenes[:2]])
  keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.key(0)] * 2))[:, 1]
  maps = batch.programs.decision_maps(x, cfg.focus)
  state, problem = batch.programs.init_main(keys, x, maps, config=cfg)
  problem = dict(problem, active=jnp.ones(2, bool))
  stage = batch.programs.group_stage(fusion.main_stage(cfg, 3), 'vmap')
  state, _ = optimize.run_stage(stage, state, problem, 2, 2, None, loop='python')
  after2 = jax.tree.map(np.asarray, state)
  problem = stage.set_active(problem, [False, True])
  state, _ = optimize.run_stage(stage, state, problem, 2, 2, None, loop='python')
  for a, b in zip(jax.tree.leaves(after2), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a[0], np.asarray(b)[0])  # Scene 0 frozen (params, Adam, EMA).
  assert int(state.step[0]) == 2 and int(state.step[1]) == 4
  assert np.abs(after2.output[1] - np.asarray(state.output)[1]).max() > 0


def test_stop_rule_per_scene_in_a_batch_matches_single_runs(scenes, programs):
  # A tolerance every scene meets: each stops at its min_steps, alone or in a batch.
  cfg = CFG.replace(iters=20, mask_iters=0, stop_window=2, stop_min_iters=6, stop_tol=10.0,
                    stop_patience=1)
  single = fusion.fuse(scenes[0], config=cfg, progress=None)
  results, _ = batch.fuse_batch(scenes[:2], cfg, strategy='vmap', progress=None, programs=programs)
  assert single.timings['main_steps'] == 6
  assert [r.timings['main_steps'] for r in results] == [6, 6]
  assert len(results[0].history['main']['total']) == 6
  np.testing.assert_allclose(results[0].fused, single.fused, atol=2e-5)


def test_bad_scene_is_reported_and_others_go_on(scenes):
  bad = [scenes[0][0], scenes[1][0][:8]]  # Inputs of different sizes.
  results, _ = batch.fuse_batch([scenes[0], bad], CFG.replace(iters=2, mask_iters=0), strategy='auto',
                                progress=None, names=['good', 'bad'])
  assert isinstance(results[0], fusion.FusionResult)
  assert isinstance(results[1], batch.BatchError) and 'bad' in results[1].message
  assert 'differs' in results[1].message


def test_memory_split_and_refusal():
  big = batch.plan.scenes_that_fit(512, 512, 2, 3, FusionConfig(), available=2 ** 40)
  small = batch.plan.scenes_that_fit(512, 512, 2, 3, FusionConfig(), available=2 ** 31)
  per = memory.estimate_memory(512, 512, 2, 3, FusionConfig())['host_peak']  # CPU devices.
  assert small == int(0.9 * 2 ** 31 // per) and big > small >= 0
  assert batch.plan.scenes_that_fit(512, 512, 2, 3, FusionConfig(), available=per // 2) == 0
  assert [batch.plan.vmap_group(3, 100, 2), batch.plan.vmap_group(5, 4, 2),
          batch.plan.vmap_group(3, 1, 2)] == [4, 4, 1]


def test_probe_picks_a_measured_strategy_and_caches_it(scenes, tmp_path):
  import jax.numpy as jnp
  x = jnp.stack([jnp.asarray(np.stack(s)) for s in scenes[:2]])
  keys = jnp.stack([jax.random.key(0)] * 2)
  cfg = CFG.replace(mask_iters=0)
  cache = str(tmp_path / 'probe.json')
  best, rates = batch.plan.probe_strategy(x, keys, cfg, group=2, steps=1, cache_path=cache)
  assert set(rates) == {'loop', 'vmap'} and best == max(rates, key=rates.get)
  assert all(r > 0 for r in rates.values())
  saved = json.load(open(cache))
  assert list(saved.values())[0]['best'] == best
  assert batch.plan.probe_strategy(x, keys, cfg, group=2, steps=1, cache_path=cache) == (best, rates)


def test_probe_cache_key_covers_what_changes_the_step():
  """A cached probe result is reused only for the same step cost: settings that change it (XLA:CPU
  kernels, output form, the net's input width, any image-net field) give a new key; those that do not
  (step counts) keep it."""
  shape = (2, 16, 16, 3, 2, True)
  key = batch.plan.probe_key(shape, CFG, None)
  no_skips = (0,) * len(CFG.image_net.channels_skip)
  changed = [CFG.replace(cpu_conv='ynnpack'), CFG.replace(output_base='none'),
             CFG.replace(input_type='noise'), CFG.replace(input_type='noise', noise_channels=8),
             CFG.replace(image_net=dataclasses.replace(CFG.image_net, upsample='nearest')),
             CFG.replace(image_net=dataclasses.replace(CFG.image_net, channels_skip=no_skips))]
  keys = [batch.plan.probe_key(shape, c, None) for c in changed]
  assert len(set(keys + [key])) == len(keys) + 1
  assert batch.plan.probe_key(shape, CFG.replace(iters=7, mask_iters=3), None) == key


MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import sys, numpy as np, jax
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_batch import CFG, _pair
    from dfp_jax import batch, fusion
    assert jax.device_count() == 4
    scenes = [_pair(16, 16, i) for i in range(3)]
    singles = [fusion.fuse(s, config=CFG, progress=None) for s in scenes]
    out = {{}}
    for strategy in ('shard', 'vmap'):
      res, rep = batch.fuse_batch(scenes, CFG, strategy=strategy, progress=None, probe_cache=None)
      out[strategy] = (rep.buckets[0]['group_size'], rep.buckets[0]['devices'],
                       max(float(np.abs(r.fused - s.fused).max()) for r, s in zip(res, singles)))
    print('RESULT', out)
''')


def test_sharded_over_four_host_devices_equals_unsharded(tmp_path):
  script = tmp_path / 'multi.py'
  script.write_text(MULTI_DEVICE_SCRIPT.format(root=ROOT, tests=os.path.dirname(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = eval(r.stdout.split('RESULT', 1)[1])  # pylint: disable=eval-used
  assert out['shard'][:2] == (4, 4) and out['vmap'][:2] == (4, 4)  # 3 scenes + 1 dummy on 4 devices.
  # Sharded vmap runs another convolution program than unsharded: float32 rounding differs, and
  # Adam's normalised first steps amplify it on near-zero gradients (~1e-4 after 7 steps).
  assert out['shard'][2] < 2e-5 and out['vmap'][2] < 5e-4


# ---------------------------------------------------------------------------------------------------
# The batch job of the application.


def _dataset(root, bad=True):
  for i, (h, w) in enumerate([(24, 24), (24, 24), (24, 32)]):
    d = root / f'scene{i}'
    d.mkdir(parents=True)
    for name, im in zip('AB', _pair(h, w, i)):
      assert cv2.imwrite(str(d / f'{name}.png'), (im * 255).round().astype(np.uint8))
  if bad:
    d = root / 'broken'
    d.mkdir()
    (d / 'A.png').write_bytes(b'not an image')
    assert cv2.imwrite(str(d / 'B.png'), np.zeros((24, 24, 3), np.uint8))
  return root


def _run(args, **env):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **env)
  return subprocess.run([sys.executable, RUN] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def test_batch_job_manifest_failure_kill_and_resume(tmp_path):
  data = _dataset(tmp_path / 'data')
  out = tmp_path / 'out'
  args = [f'--input_dir={data}', f'--output_dir={out}', '--batch_strategy=loop', '--host_devices=1',
          '--scale=2'] + TINY_FLAGS
  # Killed hard (SIGKILL) after the first scene is done.
  r = _run(args, DFP_JAX_TEST_KILL_AFTER_SCENES='1')
  assert r.returncode == -9, r.stderr[-2000:]
  m = json.loads((out / 'manifest.json').read_text())['scenes']
  assert m['scene0']['status'] == 'done' and m['scene1']['status'] == 'pending'
  assert m['broken']['status'] == 'failed' and 'A.png' in m['broken']['error']
  assert len({m[n]['config_sha256'] for n in ('scene0', 'scene1', 'broken')}) == 1  # Load failures too.
  done_seconds = m['scene0']['seconds']
  # Restarted with the same command: scene0 kept, the others done, broken still failed (exit 1).
  r = _run(args)
  assert r.returncode == 1, r.stderr[-2000:]
  assert 'scene0: already done (checksums verified)' in r.stderr
  m = json.loads((out / 'manifest.json').read_text())['scenes']
  assert m['scene0']['seconds'] == done_seconds
  assert [m[f'scene{i}']['status'] for i in range(3)] == ['done'] * 3
  assert [m[f'scene{i}']['strategy'] for i in range(3)] == ['loop'] * 3
  for i in range(3):
    files = m[f'scene{i}']['files']
    assert {f'scene{i}/fused.png', f'scene{i}/summary.json'} <= set(files)
    for rel, digest in files.items():
      import hashlib
      assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
  assert cv2.imread(str(out / 'scene2' / 'fused.png')).shape == (48, 64, 3)
  assert not [p for p in os.listdir(out) if p.startswith('.')]  # No staging folders left.
  # A damaged output is detected by its checksum (not by existence) and that scene alone is redone.
  with open(out / 'scene1' / 'fused.png', 'ab') as f:
    f.write(b'damage')
  r = _run(args)
  assert r.returncode == 1
  assert 'scene0: already done' in r.stderr and 'scene1: already done' not in r.stderr
  m2 = json.loads((out / 'manifest.json').read_text())['scenes']
  assert m2['scene1']['status'] == 'done' and m2['scene0']['seconds'] == done_seconds


def test_batch_output_dir_holding_the_dataset_is_refused(tmp_path):
  data = _dataset(tmp_path / 'data', bad=False)
  before = sorted(os.listdir(data))
  for out in (data, tmp_path):  # The dataset itself, or a folder holding it.
    r = _run([f'--input_dir={data}', f'--output_dir={out}'] + TINY_FLAGS)
    assert r.returncode == 2, r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
    assert len(err) == 1 and 'holds --input_dir' in err[0] and 'Traceback' not in r.stderr
  assert sorted(os.listdir(data)) == before and not os.path.exists(data / 'manifest.json')


def test_batch_output_dir_inside_the_dataset_and_foreign_scene_folders(tmp_path):
  data = _dataset(tmp_path / 'data', bad=False)
  out = data / 'results'  # Inside the dataset: not a scene, on the first run or a rerun.
  (out / 'scene1').mkdir(parents=True)
  (out / 'scene1' / 'mine.txt').write_text('not ours')  # A scene folder holding the user's file.
  args = [f'--input_dir={data}', f'--output_dir={out}', '--batch_strategy=loop', '--host_devices=1',
          '--scale=2'] + TINY_FLAGS
  for attempt in range(2):
    r = _run(args)
    assert r.returncode == 1, r.stderr[-2000:]  # scene1 refused, the others done.
    m = json.loads((out / 'manifest.json').read_text())['scenes']
    assert set(m) == {'scene0', 'scene1', 'scene2'}  # 'results' is not a scene.
    assert m['scene0']['status'] == m['scene2']['status'] == 'done'
    assert m['scene1']['status'] == 'failed' and 'is not a previous dfp_jax result' in m['scene1']['error']
    if attempt == 0:  # Refused while loading, before anything was compiled or optimised.
      assert r.stderr.index('[batch] scene1:') < r.stderr.index('compiling')
  assert 'scene0: already done' in r.stderr and 'scene2: already done' in r.stderr
  assert os.listdir(out / 'scene1') == ['mine.txt']


def test_two_processes_share_the_scene_list(tmp_path):
  data = _dataset(tmp_path / 'data', bad=False)
  out = tmp_path / 'out'
  import socket
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, RUN, f'--input_dir={data}', f'--output_dir={out}', '--batch_strategy=loop',
       '--host_devices=1', '--num_processes=2', f'--process_id={i}',
       f'--coordinator_address=localhost:{port}'] + TINY_FLAGS,
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][1][-2000:] + logs[1][1][-2000:]
  m = json.loads((out / 'manifest.json').read_text())['scenes']
  assert sorted(m) == ['scene0', 'scene1', 'scene2']
  assert all(e['status'] == 'done' for e in m.values())
  done = _done_lines(logs[0][1]) + _done_lines(logs[1][1])
  assert sorted(done) == ['scene0', 'scene1', 'scene2']  # Each scene made once, by one process.


def test_batch_skips_result_folders_and_refuses_a_scene_folder_as_output(tmp_path):
  """A previous batch output (manifest.json) or single-scene result (summary.json) inside the dataset is
  not a scene (its images are results); --output_dir naming a scene folder is refused, not skipped."""
  from dfp_jax.app import batch_job  # pylint: disable=g-import-not-at-top
  data = _dataset(tmp_path / 'data', bad=False)
  (data / 'old_batch').mkdir()
  (data / 'old_batch' / 'manifest.json').write_text(json.dumps({'scenes': {}}))
  assert cv2.imwrite(str(data / 'old_batch' / 'stray.png'), np.zeros((8, 8, 3), np.uint8))
  (data / 'old_single').mkdir()
  for name in ('fused.png', 'comparison.png'):
    assert cv2.imwrite(str(data / 'old_single' / name), np.zeros((8, 8, 3), np.uint8))
  (data / 'old_single' / 'summary.json').write_text(json.dumps({'dfp_jax_version': '0'}))
  (data / 'notes').mkdir()  # A folder with a summary.json of someone else's stays a (failing) scene.
  (data / 'notes' / 'summary.json').write_text(json.dumps({'title': 'x'}))
  assert batch_job.result_folder_kind(str(data / 'old_batch')) == 'batch'
  assert batch_job.result_folder_kind(str(data / 'old_single')) == 'scene'
  assert batch_job.result_folder_kind(str(data / 'scene0')) is None
  names = [n for n, _ in batch_job.discover_scenes(str(data))]
  assert names == ['notes', 'scene0', 'scene1', 'scene2']
  r = _run([f'--input_dir={data}', f'--output_dir={data / "scene1"}'] + TINY_FLAGS)
  assert r.returncode == 2, r.stderr[-2000:]
  err = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert len(err) == 1 and 'is the scene folder' in err[0] and 'Traceback' not in r.stderr
  assert sorted(os.listdir(data / 'scene1')) == ['A.png', 'B.png']


def _scene_dirs(root, count, size=24):
  for i in range(count):
    d = root / f'scene{i}'
    d.mkdir(parents=True)
    for name, im in zip('AB', _pair(size, size, i)):
      assert cv2.imwrite(str(d / f'{name}.png'), (im * 255).round().astype(np.uint8))
  return root


def _done_lines(log: str) -> list[str]:
  return [line.split('[batch] ', 1)[1].split(':', 1)[0] for line in log.splitlines()
          if '[batch] ' in line and line.rstrip().endswith(': done')]


def test_three_processes_share_the_queue_and_take_over_a_killed_ones_claim(tmp_path):
  """Three processes on one dataset of six scenes, the first killed (kill -9) while it works on a scene
  it claimed: every scene done exactly once among the survivors' work plus the dead one's finished
  scenes, its claim taken over, every checksum right."""
  data = _scene_dirs(tmp_path / 'data', 6)
  out = tmp_path / 'out'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  logs = [open(tmp_path / f'log{i}.txt', 'w+', encoding='utf-8') for i in range(3)]  # pylint: disable=consider-using-with
  procs = [subprocess.Popen([sys.executable, RUN, f'--input_dir={data}', f'--output_dir={out}',
                             '--batch_strategy=loop', '--host_devices=1'] + TINY_FLAGS,
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(3)]
  victim = procs[0]
  claimed, deadline = [], time.time() + 300
  while not claimed and time.time() < deadline and victim.poll() is None:
    try:
      scenes = json.loads((out / 'manifest.json').read_text())['scenes']
    except (OSError, ValueError, KeyError):
      scenes = {}
    claimed = [n for n, e in scenes.items() if e.get('status') == 'running'
               and (e.get('claim') or {}).get('pid') == victim.pid]
    time.sleep(0.1)
  assert claimed, 'the first process never claimed a scene'
  os.kill(victim.pid, signal.SIGKILL)  # Mid-scene: it was compiling or running its claimed scene.
  victim.wait()
  for p in procs[1:]:
    assert p.wait(timeout=600) == 0
  texts = []
  for f in logs:
    f.seek(0)
    texts.append(f.read())
    f.close()
  m = json.loads((out / 'manifest.json').read_text())['scenes']
  assert sorted(m) == [f'scene{i}' for i in range(6)]
  assert all(e['status'] == 'done' for e in m.values()), m
  for name in claimed:  # Taken over by a survivor.
    assert m[name]['pid'] in (procs[1].pid, procs[2].pid)
  by_victim = {n for n, e in m.items() if e['pid'] == victim.pid}
  survivors = _done_lines(texts[1]) + _done_lines(texts[2])
  assert len(survivors) == len(set(survivors)), survivors  # No scene computed twice by live processes.
  assert set(survivors) | by_victim == set(m) and not set(survivors) & by_victim
  for name, e in m.items():
    for rel, digest in e['files'].items():
      assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
  assert not [p for p in os.listdir(out) if p.startswith('.') and p != '.dfp_jax_processes']



def test_damaged_manifest_is_kept_aside_and_folders_in_its_way_are_one_line(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'manifest.json').write_text('[1, 2]')
  with manifest.locked(str(out)):
    assert manifest.read(str(out)) == {'scenes': {}}
  kept = sorted(p for p in os.listdir(out) if p.startswith('manifest.json.damaged-'))
  assert len(kept) == 1 and (out / kept[0]).read_text() == '[1, 2]'  # Never silently overwritten.
  assert not (out / 'manifest.json').exists()
  (out / 'manifest.json').write_text(json.dumps({'scenes': {'scene0': 'done', 'scene1': {'status': 'done'}}}))
  assert manifest.read(str(out))['scenes'] == {'scene1': {'status': 'done'}}  # The bad entry dropped...
  assert len([p for p in os.listdir(out) if p.startswith('manifest.json.damaged-')]) == 2  # ...and kept.
  for name in ('manifest.json', 'manifest.json.lock'):
    other = tmp_path / name.replace('.', '_')
    (other / name).mkdir(parents=True)
    with pytest.raises(InputError, match=f'{name}: is a folder'):
      manifest.update(str(other), {})


def test_damaged_probe_cache_is_ignored_before_probing(tmp_path, caplog):
  cache = tmp_path / 'batch_probe.json'
  for text in ('[1, 2]', '{"k": 3}', 'not json'):
    cache.write_text(text)
    with caplog.at_level('WARNING'):
      assert batch.plan._read_probe_cache(str(cache)) == {}  # pylint: disable=protected-access
    assert 'batch_probe.json: damaged' in caplog.text, caplog.text
    caplog.clear()
  cache.write_text(json.dumps({'k': {'best': 'loop', 'rates': {'loop': 1.0}}}))
  assert batch.plan._read_probe_cache(str(cache)) == {'k': {'best': 'loop', 'rates': {'loop': 1.0}}}  # pylint: disable=protected-access


def test_batch_refuses_before_any_work_what_it_can_and_skips_nested_results(tmp_path):
  """A scene holding a FIFO is failed, not a hang; a scene folder named like the batch's manifest is
  failed before anything is optimised; a folder holding only a nested batch result is not a scene;
  OUT/manifest.json being a folder is one line."""
  data = _scene_dirs(tmp_path / 'data', 1)
  clash = data / 'manifest.json'
  clash.mkdir()
  for name, im in zip('AB', _pair(24, 24, 7)):
    assert cv2.imwrite(str(clash / f'{name}.png'), (im * 255).round().astype(np.uint8))
  piped = data / 'piped'
  piped.mkdir()
  assert cv2.imwrite(str(piped / 'A.png'), np.zeros((24, 24, 3), np.uint8))
  os.mkfifo(piped / 'B.png')
  (data / 'old' / 'out').mkdir(parents=True)
  (data / 'old' / 'out' / 'manifest.json').write_text(json.dumps({'scenes': {}}))
  out = tmp_path / 'out'
  r = _run([f'--input_dir={data}', f'--output_dir={out}', '--batch_strategy=loop', '--host_devices=1']
           + TINY_FLAGS)
  assert r.returncode == 1, r.stderr[-3000:]
  m = json.loads((out / 'manifest.json').read_text())['scenes']
  assert sorted(m) == ['manifest.json', 'piped', 'scene0']  # 'old' is not a scene.
  assert m['scene0']['status'] == 'done'
  assert m['piped']['status'] == 'failed' and 'is a FIFO' in m['piped']['error']
  assert m['manifest.json']['status'] == 'failed' and 'rename the scene folder' in m['manifest.json']['error']
  assert 'manifest.json: claimed' not in r.stderr  # Refused before any work.
  blocked = tmp_path / 'blocked'
  (blocked / 'manifest.json').mkdir(parents=True)
  r = _run([f'--input_dir={data}', f'--output_dir={blocked}'] + TINY_FLAGS)
  err = [line for line in r.stderr.splitlines() if line.startswith('error: ')]
  assert r.returncode == 2 and len(err) == 1 and 'manifest.json: is a folder' in err[0], r.stderr[-2000:]


def test_the_deep_decoder_prior_runs_under_vmap_and_shard_as_alone(scenes):
  """A second prior under the batch engine: vmap (and the loop) give what fuse gives alone."""
  cfg = CFG.replace(prior='deep_decoder', deep_decoder=CFG.deep_decoder.__class__(channels=6, levels=2),
                    degradation='area', mask_iters=0)
  pair = scenes[:2]
  alone = [fusion.fuse(s, config=cfg, progress=None) for s in pair]
  results, report = batch.fuse_batch(pair, cfg, strategy='vmap', progress=None, probe_cache=None)
  assert report.buckets[0]['strategy'] == 'vmap'
  for r, ref in zip(results, alone):
    np.testing.assert_allclose(r.fused, ref.fused, atol=3e-3)
