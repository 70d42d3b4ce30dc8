#!/usr/bin/env bash
# Trains ssen_jax on a Cloud TPU VM (single host or pod slice): create, install, run on every
# worker, watch for preemption and recreate + resume. See launch/README.md.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE [flags] [-- TRAINER_FLAGS...]

Commands:
  create    create the TPU VM (gcloud compute tpus tpu-vm create)
  install   copy (or clone) the repository to every worker, make .venv, install the trainer:
            uv pip install -e '.[train]' 'jax[tpu]' (SSEN_JAX_REQUIREMENT replaces 'jax[tpu]')
  run       start training on every worker in the background (nohup, log in REMOTE_DIR/logs)
  status    the TPU's state and whether training runs on each worker
  logs      the end of the training log on one worker
  stop      SIGTERM the trainer on every worker (it saves a checkpoint, then exits)
  resume    one check: recreate + reinstall + rerun when preempted or gone, rerun the trainer
            when it stopped; a STOPPED or TERMINATED TPU is deleted and recreated only with
            --recreate or after a "yes" typed at the prompt (else: one line, exit 1)
  watch     resume every --interval seconds until training finishes, fails or is stopped
            with stop; a trainer ended by SIGTERM elsewhere (exit 143) is rerun
  delete    delete the TPU VM

Flags:
  --name NAME            TPU name (required)
  --zone ZONE            zone, e.g. us-central2-b (required)
  --project PROJECT      Google Cloud project (default: gcloud's configured one)
  --accelerator TYPE     accelerator type (default v4-32; v4-8, v5litepod-16, v5p-32, v6e-16, ...)
  --version VERSION      TPU software version (default: from the accelerator, e.g.
                         tpu-ubuntu2204-base for v4)
  --spot | --preemptible create a Spot / preemptible TPU (cheaper; may be preempted)
  --repo PATH|URL        what install puts on the workers: a local checkout, copied (default: this
                         repository), or a git URL, cloned
  --ref REF              git branch, tag or commit to check out (git URLs only; default HEAD)
  --remote_dir DIR       the repository's directory on the workers, relative to home
                         (default ssen_jax)
  --python_version V     Python of the workers' .venv, installed by uv (default 3.11)
  --stage SRC=DEST       install also copies the gs:// folder SRC to DEST (relative to REMOTE_DIR)
                         on every worker (repeatable), e.g. the CUFED5 evaluation folder, which the
                         trainer reads from a local path
  --config PATH[:VARIANT] training config, relative to the repository (default configs/refsr.py)
  --workdir gs://...     checkpoints and summaries (required by run, resume, watch)
  --extra FLAG           one trainer flag, e.g. --extra=--config.batch_size=64 (repeatable);
                         flags after `--` are passed on as well
  --env NAME=VALUE       environment variable for the trainer (repeatable)
  --multihost MODE       on|off|auto (default: on for slices of more than 8, where there are several
                         workers, else off)
  --worker N|all         worker for logs (default 0)
  --lines N              log lines shown by logs (default 100)
  --interval SECONDS     watch: seconds between checks (default 300)
  --max_restarts N       watch: give up after N recoveries (default 20)
  --recreate             resume/watch: delete and recreate a STOPPED or TERMINATED TPU without
                         asking (a PREEMPTED or missing one is always recreated)
  --dry_run              print the commands (a runnable script) instead of running them
  --dry_run_state STATE  dry runs of resume/watch: assume this TPU state (default PREEMPTED)
  -h, --help             this help
EOF
}

COMMANDS='create|install|run|status|logs|stop|resume|watch|delete'
(($#)) || die "missing COMMAND ($COMMANDS; see --help)"
COMMAND=$1
shift
case $COMMAND in
  create | install | run | status | logs | stop | resume | watch | delete) ;;
  -h | --help | help) usage; exit 0 ;;
  *) die "unknown command '$COMMAND' ($COMMANDS)" ;;
esac

NAME='' ZONE='' PROJECT='' ACCELERATOR=v4-32 VERSION='' SPOT=0 PREEMPTIBLE=0
REPO=$SSEN_REPO_ROOT REF='' REMOTE_DIR=ssen_jax PYTHON_VERSION=3.11
CONFIG=configs/refsr.py WORKDIR='' MULTIHOST='' WORKER=0 LINES=100 INTERVAL=300 MAX_RESTARTS=20
DRY_RUN_STATE=PREEMPTED RECREATE=0
EXTRA=() ENV_VARS=() STAGES=()

parse_init "$@"
while parse_next; do
  case $FLAG in
    -h | --help) usage; exit 0 ;;
    --name) flag_value; NAME=$VALUE ;;
    --zone) flag_value; ZONE=$VALUE ;;
    --project) flag_value; PROJECT=$VALUE ;;
    --accelerator) flag_value; ACCELERATOR=$VALUE ;;
    --version) flag_value; VERSION=$VALUE ;;
    --spot) no_value; SPOT=1 ;;
    --preemptible) no_value; PREEMPTIBLE=1 ;;
    --repo) flag_value; REPO=$VALUE ;;
    --ref) flag_value; REF=$VALUE ;;
    --remote_dir) flag_value; REMOTE_DIR=$VALUE ;;
    --python_version) flag_value; PYTHON_VERSION=$VALUE ;;
    --stage) flag_value; STAGES+=("$VALUE") ;;
    --config) flag_value; CONFIG=$VALUE ;;
    --workdir) flag_value; WORKDIR=$VALUE ;;
    --extra) flag_value allow_dashes; add_extra "$VALUE" ;;
    --env) flag_value; add_env "$VALUE" ;;
    --multihost) flag_value; MULTIHOST=$VALUE ;;
    --worker) flag_value; WORKER=$VALUE ;;
    --lines) flag_value; LINES=$VALUE ;;
    --interval) flag_value; INTERVAL=$VALUE ;;
    --max_restarts) flag_value; MAX_RESTARTS=$VALUE ;;
    --recreate) no_value; RECREATE=1 ;;
    --dry_run) no_value; DRY_RUN=1 ;;
    --dry_run_state) flag_value; DRY_RUN_STATE=$VALUE ;;
    *) unknown_flag ;;
  esac
done
for a in ${REST_ARGS[@]+"${REST_ARGS[@]}"}; do add_extra "$a"; done

# --- Checks -------------------------------------------------------------------------------------
require --name "$NAME"
require --zone "$ZONE"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name must be lower-case letters, digits and hyphens, starting with a letter; got '$NAME'"
[[ $ACCELERATOR =~ ^v[0-9]+[a-z]*-([0-9]+)$ ]] ||
  die "--accelerator must look like v4-32 or v5litepod-16, got '$ACCELERATOR'"
SLICE_SIZE=${BASH_REMATCH[1]}
((!(SPOT && PREEMPTIBLE))) || die "--spot and --preemptible exclude each other"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_./-]+$ ]] ||
  die "--remote_dir must be a plain path, got '$REMOTE_DIR'"
[[ $WORKER =~ ^([0-9]+|all)$ ]] || die "--worker must be a number or 'all', got '$WORKER'"
for n in LINES INTERVAL MAX_RESTARTS; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n,,} must be a whole number, got '${!n}'"
done
case $MULTIHOST in
  '') if ((SLICE_SIZE > 8)); then MULTIHOST=on; else MULTIHOST=off; fi ;;
  on | off | auto) ;;
  *) die "--multihost must be on, off or auto, got '$MULTIHOST'" ;;
esac
if [[ -z $VERSION ]]; then
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default --version for $ACCELERATOR; pass --version" ;;
  esac
fi
for s in ${STAGES[@]+"${STAGES[@]}"}; do
  [[ $s =~ ^gs://[^=]+=[^=]+$ ]] || die "--stage takes gs://SOURCE=LOCAL_DIR, got '$s'"
done
case $COMMAND in
  run | resume | watch)
    require --workdir "$WORKDIR"
    [[ $WORKDIR == gs://?* ]] ||
      die "--workdir must be a gs:// path: the workers' disks are lost when a TPU is recreated"
    [[ -n $CONFIG ]] || die "--config must not be empty" ;;
esac
case $COMMAND in
  install | resume | watch)
    if [[ $REPO == *://* || $REPO == git@* ]]; then
      REPO_KIND=git
    else
      [[ -d $REPO ]] || die "--repo: no such directory '$REPO' (give a local checkout or a git URL)"
      [[ -z $REF ]] || die "--ref needs a git URL as --repo"
      REPO_KIND=local
      REPO=$(cd "$REPO" && pwd)
    fi ;;
esac
case $DRY_RUN_STATE in
  READY | RUNNING | PREEMPTED | TERMINATED | STOPPED | MISSING | CREATING) ;;
  *) die "--dry_run_state must be READY, RUNNING, PREEMPTED, TERMINATED, STOPPED," \
    "MISSING or CREATING" ;;
esac

GCLOUD=(gcloud compute tpus tpu-vm)
LOC=("--zone=$ZONE")
if [[ -n $PROJECT ]]; then LOC+=("--project=$PROJECT"); fi
D=$(shell_quote "$REMOTE_DIR")  # The remote directory, quoted for the workers' shell.

# `run` for commands naming the private temporary folder: a dry run prints it as "$tmp", the
# variable its plan sets with mktemp -d.
run_tmp() {
  if ((DRY_RUN)); then
    # shellcheck disable=SC2016  # "$tmp" is printed for the plan's shell, not expanded here.
    run "$@" | sed 's#@TMP@#"$tmp"#g'
  else
    run "$@"
  fi
}

# Runs a POSIX shell command on the workers (all, or one number).
on_workers() {
  local workers=$1 command=$2
  run "${GCLOUD[@]}" ssh "$NAME" "${LOC[@]}" "--worker=$workers" --quiet "--command=$command"
}

# --- Subcommands --------------------------------------------------------------------------------
create_tpu() {
  local cmd=("${GCLOUD[@]}" create "$NAME" "${LOC[@]}" "--accelerator-type=$ACCELERATOR"
    "--version=$VERSION")
  if ((SPOT)); then cmd+=(--spot); fi
  if ((PREEMPTIBLE)); then cmd+=(--preemptible); fi
  run "${cmd[@]}"
}

delete_tpu() {
  run "${GCLOUD[@]}" delete "$NAME" "${LOC[@]}" "$@"
}

install_all() {
  local fetch
  if [[ $REPO_KIND == local ]]; then
    # The working tree as it is (uncommitted edits included), without .venv, caches and workdirs,
    # packed in a private folder of mktemp -d (no predictable /tmp name another user could take).
    local tmp
    if ((DRY_RUN)); then
      # shellcheck disable=SC2016  # A line of the printed plan.
      printf '%s\n' 'tmp=$(mktemp -d)'
      tmp=@TMP@  # Printed as "$tmp" by run_tmp.
    else
      tmp=$(mktemp -d) || return
    fi
    local tarball=$tmp/ssen_jax.tar.gz
    local skip=(.git .venv '*.egg-info' __pycache__ .pytest_cache build workdirs tmp .whl
      launch/logs)
    if ! run_tmp tar -czf "$tarball" "${skip[@]/#/--exclude=}" -C "$REPO" . ||
      ! run_tmp "${GCLOUD[@]}" scp "$tarball" "$NAME:ssen_jax.tar.gz" "${LOC[@]}" --worker=all \
        --quiet; then
      run_tmp rm -rf "$tmp"
      return 1
    fi
    run_tmp rm -rf "$tmp"
    fetch="mkdir -p $D && tar -xzf ssen_jax.tar.gz -C $D && rm ssen_jax.tar.gz"
  else
    local r q
    r=$(shell_quote "${REF:-HEAD}")
    q=$(shell_quote "$REPO")
    fetch="if [ -d $D/.git ]; then git -C $D fetch --quiet origin $r"
    fetch+=" && git -C $D checkout --quiet --force FETCH_HEAD;"
    fetch+=" else git clone --quiet $q $D && git -C $D checkout --quiet $r; fi"
  fi
  # TPU VM images ship an older Python than the project needs: uv installs the one asked for.
  local venv
  venv=$(venv_install_command "$PYTHON_VERSION" 'jax[tpu]')
  local stage='' s
  for s in ${STAGES[@]+"${STAGES[@]}"}; do
    stage+=" && mkdir -p $(shell_quote "${s#*=}") && gcloud storage rsync --recursive"
    stage+=" $(shell_quote "${s%%=*}") $(shell_quote "${s#*=}")"
  done
  on_workers all "set -eu; $fetch && cd $D && $venv$stage && echo \"\$(hostname): installed\""
}

# Worker-side shell, expanded there: whether the trainer of the pid file is alive; the host's name.
# In REMOTE_DIR/logs: train.pid (the trainer's pid), train.exit (its exit status, written when it
# ends) and stopped (left by `stop`: a watch then ends instead of restarting the trainer).
# shellcheck disable=SC2016
ALIVE='[ -f logs/train.pid ] && kill -0 "$(cat logs/train.pid)" 2>/dev/null' HOST='$(hostname)'
# The shell that runs the trainer: it starts it in the background, so that the pid file names the
# trainer itself (`stop` signals it directly), waits for it and writes its exit status.
# shellcheck disable=SC2016
WAITER='"$@" & echo $! > logs/train.pid; wait $!; echo $? > logs/train.exit'

# The trainer in the background on every worker; the pid file lets stop and resume find it.
start_training() {
  train_flags "$MULTIHOST"
  local envs='PYTHONUNBUFFERED=1' e
  # NAME='value': a shell takes a word as an assignment only when NAME= is not quoted.
  for e in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do envs+=" ${e%%=*}=$(shell_quote "${e#*=}")"; done
  local pid=logs/train.pid
  local remote="set -eu; cd $D; mkdir -p logs; if $ALIVE; then"
  remote+=" echo \"$HOST: training already runs (pid \$(cat $pid)); stop it first\" >&2; exit 1; fi"
  remote+="; rm -f $pid logs/train.exit logs/stopped"
  remote+="; $envs nohup sh -c $(shell_quote "$WAITER") trainer .venv/bin/python -m ssen_jax.main"
  remote+=" $(quote_words "${TRAIN_FLAGS[@]}") >> logs/train.log 2>&1 < /dev/null &"
  remote+=" i=0; while [ ! -s $pid ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done"
  remote+="; [ -s $pid ] || { echo \"$HOST: the trainer did not start; see"
  remote+=" ~/$REMOTE_DIR/logs/train.log\" >&2; exit 1; }"
  remote+="; echo \"$HOST: training started (pid \$(cat $pid)), log ~/$REMOTE_DIR/logs/train.log\""
  on_workers all "$remote"
}

stop_training() {
  local pid=logs/train.pid
  local remote="cd $D && if $ALIVE; then touch logs/stopped && kill -TERM \"\$(cat $pid)\""
  remote+=" && echo \"$HOST: sent SIGTERM; the trainer saves a checkpoint and exits\";"
  remote+=" else echo \"$HOST: training is not running\"; fi"
  on_workers all "$remote"
}

show_status() {
  local pid=logs/train.pid
  run "${GCLOUD[@]}" describe "$NAME" "${LOC[@]}" '--format=value(state,acceleratorType,health)'
  local remote="cd $D && if $ALIVE; then echo \"$HOST: training runs (pid \$(cat $pid))\";"
  remote+=" else echo \"$HOST: training is not running\"; fi"
  remote+="; tail -n 2 logs/train.log 2>/dev/null || true"
  on_workers all "$remote"
}

# Sets STATE to the TPU's state: READY, PREEMPTED, ..., MISSING (no such TPU) or UNKNOWN (gcloud
# failed; a watch tries again later).
tpu_state() {
  local describe=("${GCLOUD[@]}" describe "$NAME" "${LOC[@]}" '--format=value(state)') out
  if ((DRY_RUN)); then
    run "${describe[@]}"
    say "dry run: assuming state $DRY_RUN_STATE (--dry_run_state)"
    STATE=$DRY_RUN_STATE
  elif out=$("${describe[@]}" 2>&1); then
    STATE=${out:-UNKNOWN}
  elif [[ $out == *NOT_FOUND* || $out == *"not found"* ]]; then
    STATE=MISSING
  else
    note "gcloud describe failed: ${out//$'\n'/ }"
    STATE=UNKNOWN
  fi
}

# Whether the trainer runs: 0 on some worker, 3 on none, anything else: could not tell (ssh
# failed). Every worker is asked, since a pod slice's trainers end one by one, and a rerun started
# while one of them still runs would not find its peers. When none runs, ENDED says how they ended,
# from each worker's exit status and the workdir (the first that applies, in this order):
#   failed    an exit status other than 0 and 143 (ENDED_NOTE: the status)
#   unsaved   exit status 143 but the workdir's newest checkpoint is not complete: a shell shows a
#             death by SIGTERM as 143 too, so 143 alone does not prove that the trainer saved
#   saved     exit status 143 (SIGTERM: a maintenance event, a preemption) and the newest
#             checkpoint is complete
#   unknown   no exit status: never started there, or the worker restarted under it
#   stopped   stopped with `stop`
#   finished  exit status 0
# ENDED_NOTE holds that worker's line (the checkpoint's state, or the exit status).
training_running() {
  ENDED=unknown ENDED_NOTE=''
  # Each worker prints one line: "ssen-worker-state CODE [NOTE]" (CODE as in the case below).
  local check='st() { echo "ssen-worker-state $*"; exit 0; }'
  check+="; cd $D 2>/dev/null || st 9; if $ALIVE; then st 0; fi"
  # The trainer may have ended a moment ago, before its status was written.
  check+="; [ -f logs/train.exit ] || sleep 1; s=\$(cat logs/train.exit 2>/dev/null) || s=none"
  check+="; [ ! -f logs/stopped ] || st 4"
  check+="; case \$s in 0) st 3 ;; none) st 9 ;; 143) ;; *) st 7 \"\$s\" ;; esac"
  check+="; n=\$(.venv/bin/python launch/checkpoint_state.py $(shell_quote "$WORKDIR") 2>&1)"
  check+=" && st 5 \"\$n\"; st 8 \"\$n\""
  if ((DRY_RUN)); then
    on_workers all "$check"
    if [[ $DRY_RUN_STATE == RUNNING ]]; then return 0; else return 3; fi
  fi
  local rc=0 out
  out=$("${GCLOUD[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --quiet "--command=$check" 2>/dev/null) ||
    rc=$?
  local states
  states=$(printf '%s\n' "$out" | sed -n 's/^ssen-worker-state //p')
  if [[ $states =~ (^|$'\n')0($'\n'|$) ]]; then return 0; fi
  ((rc == 0)) || return "$rc"
  [[ -n $states ]] || return 255
  local code name line
  for code in 7:failed 8:unsaved 5:saved 9:unknown 4:stopped 3:finished; do
    name=${code#*:} code=${code%%:*}
    line=$(printf '%s\n' "$states" | grep -m 1 "^$code\\b" || true)
    if [[ -n $line ]]; then
      ENDED=$name ENDED_NOTE=${line#"$code"}
      ENDED_NOTE=${ENDED_NOTE# }
      return 3
    fi
  done
  return 255
}

# How the trainer ended, in words (see training_running).
ended_words() {
  local s=$ENDED_NOTE
  case $ENDED in
    finished) printf 'the trainer finished (exit status 0)' ;;
    stopped) printf 'the trainer was stopped with %s stop' "$PROG" ;;
    saved) printf 'the trainer was stopped by SIGTERM (exit status 143) and saved (%s)' "$s" ;;
    unsaved) printf 'the trainer ended with status 143 without a complete save, killed by SIGTERM' \
      && printf ' during it? (%s)' "$s" ;;
    failed)
      printf 'the trainer failed (exit status %s' "$s"
      if [[ $s =~ ^[0-9]+$ ]] && ((s > 128)); then printf ': killed by signal %d' $((s - 128)); fi
      printf ')' ;;
    *) printf 'no trainer has run here, or it left no exit status' ;;
  esac
}

# Whether the TPU (STOPPED or TERMINATED: someone may have stopped it on purpose, and it may hold
# what a recreation loses) may be deleted: --recreate, or "yes" typed at a terminal.
may_delete_stopped() {
  ((RECREATE)) && return 0
  if ((!DRY_RUN)) && [[ -t 0 ]]; then
    local answer=''
    printf '%s: %s is %s. Delete it and create a new one (its disks are lost)? [yes/no] ' \
      "$PROG" "$NAME" "$STATE" >&2
    read -r answer || true
    [[ $answer == yes ]] && return 0
  fi
  return 1
}

recreate_and_run() {
  if [[ $STATE != MISSING ]]; then delete_tpu --quiet || return; fi
  create_tpu || return
  install_all || return
  start_training
}

# One look at the TPU, and the repair it needs. Returns
#   0  training runs
#   10 the TPU is READY but training does not run (ENDED says how it ended)
#   11 the TPU is changing state, or gcloud could not tell: look again later
#   12 the TPU was preempted (or is gone) and has been recreated, reinstalled and restarted
#   13 the TPU is STOPPED or TERMINATED and may not be deleted (no --recreate, no "yes")
#   1  a recovery step failed (e.g. no capacity for the new TPU)
check_once() {
  local rc=0
  tpu_state
  # In a dry run, RUNNING stands for READY with the trainer alive.
  [[ $STATE == RUNNING ]] && STATE=READY
  case $STATE in
    READY)
      training_running || rc=$?
      case $rc in
        0) say "$NAME: READY, training runs"; return 0 ;;
        3) say "$NAME: READY, training does not run: $(ended_words)"; return 10 ;;
        *) say "$NAME: READY, but a worker did not answer (ssh exit $rc)"; return 11 ;;
      esac ;;
    TERMINATED | STOPPED)
      if ! may_delete_stopped; then
        say "$NAME: $STATE: not deleted"
        return 13
      fi
      say "$NAME: $STATE: recreating it (--recreate), reinstalling and resuming from the latest" \
        "checkpoint"
      recreate_and_run || return 1
      return 12 ;;
    PREEMPTED | MISSING)
      say "$NAME: $STATE: recreating it, reinstalling and resuming from the latest checkpoint"
      recreate_and_run || return 1
      return 12 ;;
    *)
      say "$NAME: $STATE; look again later"
      return 11 ;;
  esac
}

# resume: make training run, whatever happened to it (the trainer resumes from the checkpoint).
resume_once() {
  local rc=0
  check_once || rc=$?
  case $rc in
    0 | 12) return 0 ;;
    10)
      say "rerunning the training command; it resumes from the latest checkpoint"
      start_training ;;
    11) note "nothing done: $NAME is $STATE or did not answer; try again later"; exit 1 ;;
    13) stopped_refusal ;;
    *) note "recovery failed"; exit 1 ;;
  esac
}

stopped_refusal() {
  note "nothing done: $NAME is $STATE; start it (gcloud compute tpus tpu-vm start $NAME)" \
    "or pass --recreate to delete and recreate it"
  exit 1
}

# watch: a resume, then a check every INTERVAL seconds until training ends (the TPU is READY and the
# trainer finished, failed or was stopped with `stop`), recovering each preemption on the way: of
# the TPU (recreated), or of the trainer alone (SIGTERM from a maintenance event: rerun).
watch_loop() {
  local restarts=0 rc first=1
  while true; do
    rc=0
    check_once || rc=$?
    case $rc in
      10)
        if ((first)); then
          say "rerunning the training command; it resumes from the latest checkpoint"
          start_training || note "could not start training; looking again in ${INTERVAL}s"
        else
          case $ENDED in
            finished | stopped)
              note "training has ended: $(ended_words); see: $PROG logs --name $NAME --zone $ZONE"
              return 0 ;;
            failed)
              note "training has ended: $(ended_words); see: $PROG logs --name $NAME --zone $ZONE"
              exit 1 ;;
            *)
              restarts=$((restarts + 1))
              note "recovery $restarts of at most $MAX_RESTARTS: rerunning the training command," \
                "which resumes from the latest complete checkpoint"
              start_training || note "could not start training; looking again in ${INTERVAL}s" ;;
          esac
        fi ;;
      12)
        if ((!first)); then
          restarts=$((restarts + 1))
          note "recovery $restarts of at most $MAX_RESTARTS done"
        fi ;;
      1) note "recovery failed; trying again in ${INTERVAL}s" ;;
      13) stopped_refusal ;;
    esac
    # Until the TPU has been seen usable, no trainer means "not started yet", not "ended".
    if ((rc == 0 || rc == 10 || rc == 12)); then first=0; fi
    if ((restarts >= MAX_RESTARTS)); then
      note "stopping the watch after $MAX_RESTARTS recoveries"
      exit 1
    fi
    if ((DRY_RUN)); then
      say "dry run: a watch would now check again every ${INTERVAL}s"
      return 0
    fi
    sleep "$INTERVAL"
  done
}

case $COMMAND in
  create) create_tpu ;;
  install) install_all ;;
  run) start_training ;;
  stop) stop_training ;;
  delete) delete_tpu ;;
  status) show_status ;;
  logs) on_workers "$WORKER" "tail -n $LINES $D/logs/train.log" ;;
  resume) resume_once ;;
  watch) watch_loop ;;
esac
