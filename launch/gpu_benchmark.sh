#!/usr/bin/env bash
# The performance issue's GPU table in one short run (planned for a few minutes on one H200):
# deform_conv2d against torchvision, whole-model inference at the paper's latency size, and the
# train step at batch 32, JAX against PyTorch on the same GPU. Each figure is written as Markdown
# and JSON under --out, and each runs under its own time limit, so one failure keeps the others.
# See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_benchmark.sh [flags]

Flags:
  --out DIR          where the tables go (default benchmark_gpu; created)
  --python PATH      interpreter with jax[cuda], torch and torchvision (default python3)
  --limit S          seconds allowed for each figure (default 200)
  --batch N          train-step batch (default 32)
  --lr HxW           inference LR size (default 80x137: 320x548 out; the paper's latency is for
                     322x550 on a GTX 1080 Ti)
  --tiny             every figure at the tiny sizes (a CPU rehearsal of the script; ratios
                     mean nothing then)
  --dry_run          print the commands instead of running them
  -h, --help         this help
EOF
}

OUT_DIR=benchmark_gpu PYTHON=python3 LIMIT=200 BATCH=32 LR=80x137 TINY=()

parse_init "$@"
# shellcheck disable=SC2119  # flag_value's optional argument is its own, not the script's $1.
while parse_next; do
  case $FLAG in
    -h | --help) usage; exit 0 ;;
    --out) flag_value; OUT_DIR=$VALUE ;;
    --python) flag_value; PYTHON=$VALUE ;;
    --limit) flag_value; LIMIT=$VALUE ;;
    --batch) flag_value; BATCH=$VALUE ;;
    --lr) flag_value; LR=$VALUE ;;
    --tiny) no_value; TINY=(--tiny) ;;
    --dry_run) no_value; DRY_RUN=1 ;;
    *) unknown_flag ;;
  esac
done
((${#REST_ARGS[@]} == 0)) || die "unexpected arguments: ${REST_ARGS[*]}"
[[ $LIMIT =~ ^[0-9]+$ ]] || die "--limit must be a whole number of seconds, got '$LIMIT'"
[[ $BATCH =~ ^[0-9]+$ ]] || die "--batch must be a positive integer, got '$BATCH'"
[[ $LR =~ ^[0-9]+x[0-9]+$ ]] || die "--lr must look like 80x137, got '$LR'"

[[ $OUT_DIR == /* ]] || OUT_DIR=$PWD/$OUT_DIR  # Relative to where it was started.
run cd "$SSEN_REPO_ROOT"
run mkdir -p "$OUT_DIR"
if command -v nvidia-smi >/dev/null || ((DRY_RUN)); then
  run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi

FAILED=0
figure() {  # figure NAME BENCHMARK_FLAGS...: one table, Markdown on stdout and NAME.md, + NAME.json.
  local name=$1 code=0
  shift
  # --overwrite: the tables under --out are this script's own; a rerun replaces them.
  local cmd=(timeout "$LIMIT" env PYTHONUNBUFFERED=1 "$PYTHON" -m ssen_jax.benchmark "$@"
             ${TINY[@]+"${TINY[@]}"} --json "$OUT_DIR/$name.json" --overwrite)
  say "figure $name"
  if ((DRY_RUN)); then
    run "${cmd[@]}"
    return
  fi
  run "${cmd[@]}" 2>&1 | tee "$OUT_DIR/$name.md" || code=$?
  if ((code != 0)); then
    note "figure $name failed (exit $code); the others still run"
    FAILED=1
  fi
}

figure op --what op --compare torch
figure infer --what infer --infer_lr "$LR" --compare torch
figure train --what train --train_batch "$BATCH" --compare torch
# bfloat16 compute (configs/refsr.py:bf16): the train step, JAX only (the twin is float32).
figure train_bf16 --what train --train_batch "$BATCH" --config configs/refsr.py:bf16
# The published config's step: XLA's FLOPs and memory, compile time, two steps, estimates.
figure compile --what compile --train_batch "$BATCH" --repeats 2
exit "$FAILED"
