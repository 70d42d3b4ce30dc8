#!/usr/bin/env bash
# The performance issue's GPU figures in one run of under 8 minutes on one GPU: the deformable
# convolution's and the whole model's parity with PyTorch (float32, every gradient), inference
# latency at the paper's 322x550 output, the train step at batch 32 in float32 and bfloat16, the
# full-size compile, and the deformable convolution's speed, JAX against PyTorch on the same GPU,
# each with its peak GPU memory. Each figure is written as Markdown and JSON under --out_dir and runs
# under its own time limit inside one total budget, so one failure keeps the others; a summary
# table (and summary.json) ends the run. See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_benchmark.sh [flags]

Flags:
  --out_dir DIR      where the tables go (default benchmark_gpu; created; --out DIR, its old
                     spelling, still works for one release)
  --python PATH      interpreter with jax[cuda], torch and torchvision (default python3)
  --budget S         seconds for the whole run (default 460: with the summary, under 8 minutes;
                     --tiny: 3600); a figure gets what is left when its own limit is more, and
                     is skipped when less than 5 s are left
  --limit S          seconds allowed for each figure (default: each its own, below; --tiny: 600)
  --batch N          train-step batch (default 32, the paper's)
  --tiny             every figure at the tiny sizes (a CPU rehearsal of the script; ratios
                     mean nothing then)
  --dry_run          print the commands instead of running them
  -h, --help         this help

Figures (limit s): op_parity (40), model_parity (70), latency (50), train (110), train_bf16 (80),
compile (70), op (40); then the summary (DIR/summary.md, DIR/summary.json). Exit status: 0 every
figure done; 1 a figure failed, timed out or was skipped (the others still ran); 2 a usage error.
EOF
}

OUT_DIR=benchmark_gpu PYTHON=python3 LIMIT='' BUDGET='' BATCH=32 TINY=()

parse_init "$@"
# shellcheck disable=SC2119  # flag_value's optional argument is its own, not the script's $1.
while parse_next; do
  case $FLAG in
    -h | --help) usage; exit 0 ;;
    --out_dir) flag_value; OUT_DIR=$VALUE ;;
    --out)  # The old spelling, for one release.
      flag_value; OUT_DIR=$VALUE
      note "warning: --out is deprecated; use --out_dir=$(shell_quote "$VALUE")" ;;
    --python) flag_value; PYTHON=$VALUE ;;
    --budget) flag_value; BUDGET=$VALUE ;;
    --limit) flag_value; LIMIT=$VALUE ;;
    --batch) flag_value; BATCH=$VALUE ;;
    --tiny) no_value; TINY=(--tiny) ;;
    --dry_run) no_value; DRY_RUN=1 ;;
    *) unknown_flag ;;
  esac
done
((${#REST_ARGS[@]} == 0)) || die "unexpected arguments: ${REST_ARGS[*]}"
[[ -z $LIMIT || $LIMIT =~ ^[0-9]+$ ]] ||
  die "--limit must be a whole number of seconds, got '$LIMIT'"
[[ -z $BUDGET || $BUDGET =~ ^[0-9]+$ ]] ||
  die "--budget must be a whole number of seconds, got '$BUDGET'"
[[ $BATCH =~ ^[1-9][0-9]*$ ]] || die "--batch must be a positive integer, got '$BATCH'"
# A loaded CPU takes minutes per tiny figure (mostly XLA compilation).
if ((${#TINY[@]})); then BUDGET=${BUDGET:-3600} LIMIT=${LIMIT:-600}; else BUDGET=${BUDGET:-460}; fi

[[ $OUT_DIR == /* ]] || OUT_DIR=$PWD/$OUT_DIR  # Relative to where it was started.
run cd "$SSEN_REPO_ROOT"
run mkdir -p "$OUT_DIR"
if command -v nvidia-smi >/dev/null || ((DRY_RUN)); then
  run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi
# One line per figure: name, exit status, seconds, limit; then the total and the budget.
((DRY_RUN)) || : >"$OUT_DIR/run.tsv"

FAILED=0 START=$SECONDS
figure() {  # figure NAME LIMIT BENCHMARK_FLAGS...: Markdown on stdout and NAME.md, + NAME.json.
  local name=$1 limit=${LIMIT:-$2} code=0 left begin
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  ((limit <= left)) || limit=$left
  say "figure $name (limit $limit s)"
  if ((limit < 5)); then
    note "figure $name skipped: the budget of $BUDGET s is spent"
    ((DRY_RUN)) || printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$OUT_DIR/run.tsv"
    FAILED=1
    return
  fi
  # --overwrite: the tables under --out_dir are this script's own; a rerun replaces them. JAX grows
  # its GPU memory as needed instead of taking 75 % at start, which leaves the PyTorch peers room.
  local cmd=(timeout "$limit" env PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
             "$PYTHON" -m ssen_jax.benchmark "$@" ${TINY[@]+"${TINY[@]}"}
             --out "$OUT_DIR/$name.json" --overwrite)
  if ((DRY_RUN)); then
    run "${cmd[@]}"
    return
  fi
  begin=$SECONDS
  run "${cmd[@]}" 2>&1 | tee "$OUT_DIR/$name.md" || code=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$code" $((SECONDS - begin)) "$limit" >>"$OUT_DIR/run.tsv"
  if ((code == 124)); then
    note "figure $name timed out after $limit s; the others still run"
    FAILED=1
  elif ((code != 0)); then
    note "figure $name failed (exit $code); the others still run"
    FAILED=1
  fi
}

# The issue's figures first, so that a budget cut falls on the last.
figure op_parity 40 --what op_parity
figure model_parity 70 --what model_parity
figure latency 50 --what latency --compare torch
figure train 110 --what train --train_batch "$BATCH" --compare torch
# bfloat16 compute (configs/refsr.py:bf16): the train step, JAX only (the twin is float32).
figure train_bf16 80 --what train --train_batch "$BATCH" --config configs/refsr.py:bf16
# The published config's step: XLA's FLOPs and memory, compile time, two steps, estimates.
figure compile 70 --what compile --train_batch "$BATCH" --repeats 2
figure op 40 --what op --compare torch
# The one table of every figure (DIR/summary.md, DIR/summary.json), and the total time.
((DRY_RUN)) || printf 'total\t-\t%s\t%s\n' $((SECONDS - START)) "$BUDGET" >>"$OUT_DIR/run.tsv"
SUMMARY=(timeout 15 "$PYTHON" -m ssen_jax.benchmark --what summary
         --out "$OUT_DIR/summary.json" --overwrite)
if ((DRY_RUN)); then
  run "${SUMMARY[@]}"
else
  run "${SUMMARY[@]}" 2>&1 | tee "$OUT_DIR/summary.md" || FAILED=1
  note "total: $((SECONDS - START)) s (budget $BUDGET s)"
fi
exit "$FAILED"
