#!/usr/bin/env bash
# The GPU checks of a lent accelerator session, as one script (docs/benchmarks.md, sections 2b'' and 3).
#
#   bash experiments/benchmarks/gpu_checks.sh OUT_DIR [HCI_DINO_FOLDER]     # from the repository root
#
# In priority order, each part under its own time limit so a slow part cannot take the others' results:
#   1. bf16 against float32 compute on the HCI ground-truth case (whole 512x512 view, N = 2, x1 / x2 / x4,
#      seed 0; x2 again with seed 1 for the spread): the issue-6 rule for a bf16 GPU default. Eight
#      whole-view cases: with the two parts below this may need more than one device call (the cases'
#      times on a GPU: docs/benchmarks.md section 2b''); run it in two (GPU_CHECKS_SCALES=2 first) or
#      trim.
#   2. Batch throughput: 32 scenes at 128x128 x2 in one vmapped program against the single-scene loop.
#   3. The step table, float32 and bfloat16, lax.scan chunks.
# Results: OUT_DIR/*.json and OUT_DIR/log.txt. Environment knobs for a dry run on CPU: GPU_CHECKS_CROP
# (gt_crop, default the whole view), GPU_CHECKS_ITERS, GPU_CHECKS_MASK_ITERS, GPU_CHECKS_SCALES,
# GPU_CHECKS_BATCH, GPU_CHECKS_SIZES, GPU_CHECKS_LIMIT (seconds per part).
set -u
out=${1:?usage: bash experiments/benchmarks/gpu_checks.sh OUT_DIR [HCI_FOLDER]}
lf=${2:-../shared/data/lightfield/hci_dino_33views}
crop=${GPU_CHECKS_CROP-}
iters=${GPU_CHECKS_ITERS:-1000}
mask_iters=${GPU_CHECKS_MASK_ITERS:-500}
scales=${GPU_CHECKS_SCALES:-1,2,4}
batch=${GPU_CHECKS_BATCH:-32}
sizes=${GPU_CHECKS_SIZES:-128,256,520}
limit=${GPU_CHECKS_LIMIT:-150}  # Seconds per part.
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/log.txt"
cache=$(mktemp -d)
common=(--lightfield="$lf" --gt_crop="$crop" --num_planes=2 --iters="$iters" --mask_iters="$mask_iters"
        --compilation_cache_dir="$cache" --bench_dir="$(mktemp -d)")
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
} 2>&1 | tee -a "$log"
part() {  # part NAME LIMIT_S COMMAND...
  local name=$1 lim=$2; shift 2
  echo "=== $name ($(date -u +%T), limit ${lim}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout "$lim" "$@" 2>&1 | grep -v -E '^I[0-9]{4} |^W[0-9]{4} .*(cuda|tpu)' | tee -a "$log"
  echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$log"
}
# One process per (dtype, scale, seed): a part that runs out of time loses only its own case, and
# benchmark_gt writes its JSON after each case anyway (three scales in one process can take longer
# than one part's limit when compiling cold).
for s in ${scales//,/ }; do
  for d in float32 bfloat16; do
    part "gt_${d}_x${s}_s0" "$limit" python3 -m experiments.benchmarks.benchmark_gt "${common[@]}" --scales="$s" \
      --compute_dtype="$d" --seed=0 --json="$out/gt_${d}_x${s}_s0.json"
  done
done
for d in float32 bfloat16; do
  part "gt_${d}_x2_s1" "$limit" python3 -m experiments.benchmarks.benchmark_gt "${common[@]}" --scales=2 \
    --compute_dtype="$d" --seed=1 --json="$out/gt_${d}_x2_s1.json"
done
part batch "$limit" python3 -m experiments.benchmarks.bench_batch --lr_sizes=128 --batches="$batch" --scale=2 \
  --strategies=vmap --host_devices=1 --json="$out/batch.json"
part step "$limit" python3 -m experiments.benchmarks.bench_step --sizes="$sizes" --scales=2 --stages=main \
  --loops=scan --dtypes=float32,bfloat16 --cpu_convs=eigen --strided_convs=space_to_depth \
  --json="$out/step.json"
date -u | tee -a "$log"
