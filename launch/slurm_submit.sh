#!/usr/bin/env bash
# Writes an sbatch script for ssen_jax on several GPU nodes (the body of launch/slurm.sbatch with
# this run's #SBATCH lines and trainer flags in front) and submits it. See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/slurm_submit.sh --workdir DIR [flags] [-- TRAINER_FLAGS...]
       launch/slurm_submit.sh --install [--python_version V] [--dry_run]

Job:
  --nodes N              nodes (default 1)
  --gpus_per_node N      GPUs per node, and so tasks per node: one task per GPU (default 8)
  --cpus_per_task N      CPUs per task, for the input pipeline (default: the cluster's)
  --time T               time limit, e.g. 24:00:00 (default 24:00:00); the job is requeued
                         when it runs out, and resumes
  --partition P          partition (default: the cluster's)
  --account A            account to charge (default: the cluster's)
  --qos Q                quality of service (default: the cluster's)
  --job_name NAME        job name (default ssen)
  --signal_lead S        seconds before the time limit at which the trainers are told to save
                         (default 120)
  --sbatch_arg ARG       one more sbatch option, e.g. --sbatch_arg=--constraint=a100 (repeatable)
  --log_dir DIR          job logs and the generated script (default launch/logs)
Training:
  --workdir DIR          checkpoints and summaries, on a filesystem every node sees (required)
  --config PATH[:VARIANT] training config, relative to the repository (default configs/refsr.py)
  --extra FLAG           one trainer flag, e.g. --extra=--config.batch_size=64 (repeatable);
                         flags after `--` are passed on as well
  --env NAME=VALUE       environment variable for the trainers (repeatable)
  --mem_fraction F       XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9)
  --python PATH          interpreter on the nodes (default: the repository's .venv/bin/python)
  --setup COMMAND        shell command run on each start before training, e.g. 'module load cuda'
Install (on a login node; the repository is on a filesystem every node sees):
  --install              make the repository's .venv and install the trainer in it, then exit:
                         uv pip install -e '.[train]' 'jax[cuda12]' (uv comes from pip --user
                         when missing; SSEN_JAX_REQUIREMENT replaces 'jax[cuda12]', e.g. jax[cuda13])
  --python_version V     --install: Python of the .venv, installed by uv when missing (default 3.11)
Other:
  --dry_run              print the generated script and the sbatch command; submit nothing
  -h, --help             this help
EOF
}

NODES=1 GPUS_PER_NODE=8 CPUS_PER_TASK='' TIME=24:00:00 PARTITION='' ACCOUNT='' QOS='' JOB_NAME=ssen
SIGNAL_LEAD=120 LOG_DIR=$SSEN_REPO_ROOT/launch/logs
CONFIG=configs/refsr.py WORKDIR='' MEM_FRACTION=0.9 PYTHON='' SETUP='' INSTALL=0
PYTHON_VERSION=3.11
EXTRA=() ENV_VARS=() SBATCH_ARGS=()

parse_init "$@"
while parse_next; do
  case $FLAG in
    -h | --help) usage; exit 0 ;;
    --nodes) flag_value; NODES=$VALUE ;;
    --gpus_per_node) flag_value; GPUS_PER_NODE=$VALUE ;;
    --cpus_per_task) flag_value; CPUS_PER_TASK=$VALUE ;;
    --time) flag_value; TIME=$VALUE ;;
    --partition) flag_value; PARTITION=$VALUE ;;
    --account) flag_value; ACCOUNT=$VALUE ;;
    --qos) flag_value; QOS=$VALUE ;;
    --job_name) flag_value; JOB_NAME=$VALUE ;;
    --signal_lead) flag_value; SIGNAL_LEAD=$VALUE ;;
    --sbatch_arg) flag_value allow_dashes; SBATCH_ARGS+=("$VALUE") ;;
    --log_dir) flag_value; LOG_DIR=$VALUE ;;
    --workdir) flag_value; WORKDIR=$VALUE ;;
    --config) flag_value; CONFIG=$VALUE ;;
    --extra) flag_value allow_dashes; add_extra "$VALUE" ;;
    --env) flag_value; add_env "$VALUE" ;;
    --mem_fraction) flag_value; MEM_FRACTION=$VALUE ;;
    --python) flag_value; PYTHON=$VALUE ;;
    --setup) flag_value; SETUP=$VALUE ;;
    --install) no_value; INSTALL=1 ;;
    --python_version) flag_value; PYTHON_VERSION=$VALUE ;;
    --dry_run) no_value; DRY_RUN=1 ;;
    *) unknown_flag ;;
  esac
done
for a in ${REST_ARGS[@]+"${REST_ARGS[@]}"}; do add_extra "$a"; done

if ((INSTALL)); then
  [[ -z $WORKDIR && -z $PYTHON ]] ||
    die "--install makes the repository's .venv and submits nothing: drop --workdir and --python"
  install_here "$PYTHON_VERSION" 'jax[cuda12]'
  exit
fi
require --workdir "$WORKDIR"
[[ -n $CONFIG ]] || die "--config must not be empty"
for n in NODES GPUS_PER_NODE SIGNAL_LEAD; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "--${n,,} must be a positive whole number, got '${!n}'"
done
[[ -z $CPUS_PER_TASK || $CPUS_PER_TASK =~ ^[1-9][0-9]*$ ]] ||
  die "--cpus_per_task must be a positive whole number, got '$CPUS_PER_TASK'"
[[ $TIME =~ ^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$ ]] ||
  die "--time must look like 24:00:00, 1-12:00:00 or 90 (minutes), got '$TIME'"
# #SBATCH lines are read by sbatch, not by a shell: no quoting there, so no spaces either.
for n in PARTITION ACCOUNT QOS JOB_NAME; do
  [[ ${!n} =~ ^[A-Za-z0-9_.,:@+-]*$ ]] ||
    die "--${n,,} must not contain spaces or quotes, got '${!n}'"
done
[[ -n $JOB_NAME ]] || die "--job_name must not be empty"
for a in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
  [[ $a =~ ^--[a-z][-a-z]*(=[^[:space:]\'\"]+)?$ ]] ||
    die "--sbatch_arg takes one sbatch option such as --constraint=a100 (no spaces), got '$a'"
done
check_mem_fraction "$MEM_FRACTION"
WORKDIR=$(absolute_workdir "$WORKDIR")
LOG_DIR=$(absolute_workdir "$LOG_DIR")
[[ $LOG_DIR =~ ^[^[:space:]\'\"]+$ ]] || die "--log_dir must not contain spaces or quotes"
PYTHON=${PYTHON:-$SSEN_REPO_ROOT/.venv/bin/python}
[[ $SETUP != *$'\n'* ]] || die "--setup takes one line"
BODY_MARK='# ===== ssen_jax job body'
TEMPLATE=$SSEN_REPO_ROOT/launch/slurm.sbatch
grep -q "^$BODY_MARK" "$TEMPLATE" || die "$TEMPLATE has no '$BODY_MARK' line"

# The trainer's flags; --multihost=on is added by the body, for every task.
train_flags ''

generate() {
  echo '#!/bin/bash'
  echo "# Written by launch/slurm_submit.sh from launch/slurm.sbatch; resubmit: sbatch THIS_FILE"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$GPUS_PER_NODE"
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  if [[ -n $CPUS_PER_TASK ]]; then echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"; fi
  echo "#SBATCH --time=$TIME"
  if [[ -n $PARTITION ]]; then echo "#SBATCH --partition=$PARTITION"; fi
  if [[ -n $ACCOUNT ]]; then echo "#SBATCH --account=$ACCOUNT"; fi
  if [[ -n $QOS ]]; then echo "#SBATCH --qos=$QOS"; fi
  echo '#SBATCH --requeue'
  echo "#SBATCH --signal=B:TERM@$SIGNAL_LEAD"
  echo '#SBATCH --open-mode=append'
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  echo "#SBATCH --chdir=$SSEN_REPO_ROOT"
  for a in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do echo "#SBATCH $a"; done
  echo
  echo "export SSEN_REPO=$(shell_quote "$SSEN_REPO_ROOT")"
  echo "export SSEN_PYTHON=$(shell_quote "$PYTHON")"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$(shell_quote "$MEM_FRACTION")"
  if [[ -n $SETUP ]]; then echo "export SSEN_SETUP=$(shell_quote "$SETUP")"; fi
  for e in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
    echo "export ${e%%=*}=$(shell_quote "${e#*=}")"
  done
  echo "# The trainer's flags, as if given to sbatch after the script."
  echo "set -- $(quote_words "${TRAIN_FLAGS[@]}")"
  echo
  sed -n "/^$BODY_MARK/,\$p" "$TEMPLATE"
}

SCRIPT=$LOG_DIR/$JOB_NAME-$(date +%Y%m%d-%H%M%S).sbatch
if ((DRY_RUN)); then
  echo "# ----- generated script (written to $SCRIPT) -----"
  generate
  echo "# ----- end of generated script -----"
else
  mkdir -p "$LOG_DIR"
  generate >"$SCRIPT"
  note "wrote $SCRIPT; job log: $LOG_DIR/$JOB_NAME-<jobid>.out"
fi
run sbatch "$SCRIPT"
