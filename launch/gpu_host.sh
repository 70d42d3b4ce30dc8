#!/usr/bin/env bash
# Trains ssen_jax on one host with several GPUs: one process sees every (visible) GPU and the data
# mesh spans them all. Rerunning the same command resumes from the workdir's latest checkpoint.
# See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_host.sh --workdir DIR [flags] [-- TRAINER_FLAGS...]
       launch/gpu_host.sh --install [--python_version V] [--dry_run]

Flags:
  --workdir DIR          checkpoints and summaries (required; relative paths are made absolute)
  --config PATH[:VARIANT] training config, relative to the repository (default configs/refsr.py)
  --extra FLAG           one trainer flag, e.g. --extra=--config.batch_size=16 (repeatable);
                         flags after `--` are passed on as well
  --gpus LIST            CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all GPUs)
  --mem_fraction F       XLA_PYTHON_CLIENT_MEM_FRACTION, the share of each GPU's memory JAX
                         preallocates (default 0.9: the input pipeline runs on the CPU)
  --env NAME=VALUE       environment variable for the trainer (repeatable)
  --python PATH          interpreter (default: the repository's .venv/bin/python)
  --log FILE             run in the background with nohup, appending to FILE, and print the pid;
                         the trainer's exit status goes to FILE.exit and the log's last line
  --install              make the repository's .venv and install the trainer in it, then exit:
                         uv pip install -e '.[train]' 'jax[cuda12]' (uv comes from pip --user
                         when missing; SSEN_JAX_REQUIREMENT replaces 'jax[cuda12]', e.g. jax[cuda13])
  --python_version V     --install: Python of the .venv, installed by uv when missing (default 3.11)
  --dry_run              print the commands (a runnable script) instead of running them
  -h, --help             this help
EOF
}

CONFIG=configs/refsr.py WORKDIR='' GPUS='' MEM_FRACTION=0.9 PYTHON='' LOG='' INSTALL=0
PYTHON_VERSION=3.11
EXTRA=() ENV_VARS=()

parse_init "$@"
while parse_next; do
  case $FLAG in
    -h | --help) usage; exit 0 ;;
    --workdir) flag_value; WORKDIR=$VALUE ;;
    --config) flag_value; CONFIG=$VALUE ;;
    --extra) flag_value allow_dashes; add_extra "$VALUE" ;;
    --gpus) flag_value; GPUS=$VALUE ;;
    --mem_fraction) flag_value; MEM_FRACTION=$VALUE ;;
    --env) flag_value; add_env "$VALUE" ;;
    --python) flag_value; PYTHON=$VALUE ;;
    --log) flag_value; LOG=$VALUE ;;
    --install) no_value; INSTALL=1 ;;
    --python_version) flag_value; PYTHON_VERSION=$VALUE ;;
    --dry_run) no_value; DRY_RUN=1 ;;
    *) unknown_flag ;;
  esac
done
for a in ${REST_ARGS[@]+"${REST_ARGS[@]}"}; do add_extra "$a"; done

if ((INSTALL)); then
  [[ -z $WORKDIR && -z $PYTHON && -z $LOG ]] ||
    die "--install makes the repository's .venv and runs nothing: drop --workdir, --python, --log"
  install_here "$PYTHON_VERSION" 'jax[cuda12]'
  exit
fi
require --workdir "$WORKDIR"
[[ -n $CONFIG ]] || die "--config must not be empty"
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] ||
  die "--gpus takes comma-separated GPU numbers such as 0,1,2,3, got '$GPUS'"
check_mem_fraction "$MEM_FRACTION"
WORKDIR=$(absolute_workdir "$WORKDIR")
PYTHON=${PYTHON:-$SSEN_REPO_ROOT/.venv/bin/python}
if [[ $PYTHON == */* && $PYTHON != /* ]]; then PYTHON=$PWD/$PYTHON; fi  # Before the cd below.
((DRY_RUN)) || command -v "$PYTHON" >/dev/null ||
  die "no Python at $PYTHON: make the .venv ($PROG --install) or pass --python"
if [[ -n $LOG && $LOG != /* ]]; then LOG=$PWD/$LOG; fi

# `off`: one process drives every local GPU, so there are no peers to find, even when this runs
# inside a SLURM allocation that would otherwise look like a cluster.
train_flags off
CMD=(env "XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION")
if [[ -n $GPUS ]]; then CMD+=("CUDA_VISIBLE_DEVICES=$GPUS"); fi
if ((${#ENV_VARS[@]})); then CMD+=("${ENV_VARS[@]}"); fi
CMD+=("$PYTHON" -m ssen_jax.main "${TRAIN_FLAGS[@]}")

# --log: the trainer runs in the background under a small sh that writes the trainer's own pid to
# LOG.pid (so `kill PID` reaches the trainer, which saves) and, when it ends, its exit status to
# LOG.exit and to the log's last line; the sh exits with that status too.
# shellcheck disable=SC2016
WAITER='p=$1 x=$2; shift 2; "$@" & t=$!; echo "$t" > "$p"; wait "$t"; s=$?; echo "$s" > "$x"'
# shellcheck disable=SC2016
WAITER+='; echo "gpu_host.sh: the trainer (pid $t) ended with exit status $s, $(date)"; exit "$s"'
if [[ -n $LOG ]]; then
  run mkdir -p "$(dirname "$LOG")"
  BG=(nohup sh -c "$WAITER" trainer "$LOG.pid" "$LOG.exit" "${CMD[@]}")
fi
# Relative config paths are read from the repository root.
run cd "$SSEN_REPO_ROOT"
if [[ -z $LOG ]]; then
  # exec: signals sent to this script (SIGTERM from a scheduler) reach the trainer, which saves.
  run exec "${CMD[@]}"
  exit  # Reached by a dry run only.
fi
run rm -f "$LOG.pid" "$LOG.exit"
if ((DRY_RUN)); then
  printf '%s >> %s 2>&1 < /dev/null &\n' "$(quote_words "${BG[@]}")" "$(shell_quote "$LOG")"
  # shellcheck disable=SC2016  # The printed script expands them.
  printf 'i=0; while [ ! -s %s ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done\n' \
    "$(shell_quote "$LOG.pid")"
  # shellcheck disable=SC2016
  printf 'echo "training started (pid $(cat %s)), log" %s\n' "$(shell_quote "$LOG.pid")" \
    "$(shell_quote "$LOG")"
else
  printf '+ %s >> %s 2>&1 < /dev/null &\n' "$(quote_words "${BG[@]}")" "$(shell_quote "$LOG")" >&2
  "${BG[@]}" >>"$LOG" 2>&1 </dev/null &
  for ((i = 0; i < 100; i++)); do [[ -s $LOG.pid ]] && break; sleep 0.1; done
  [[ -s $LOG.pid ]] || die "the trainer did not start; see $LOG"
  PID=$(<"$LOG.pid")
  echo "training started (pid $PID), log $LOG; its exit status goes to $LOG.exit;" \
    "stop it with: kill $PID (it saves a checkpoint first)"
fi
