# shellcheck shell=bash disable=SC2034  # Variables set here are read by the sourcing script.
# Helpers shared by the launch scripts (sourced, not run): flag parsing, quoting, dry runs.
#
# A dry run prints every command it would run, one shell-quoted line each, on stdout, and runs
# nothing; what it prints is itself a script (`... --dry_run > plan.sh && bash plan.sh` runs it).
# Without --dry_run the same lines go to stderr with a `+ ` prefix as each command starts.

SSEN_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=$(basename "$0")
DRY_RUN=0

# One line on stderr and exit 2: the caller's mistake, not a failure of the run.
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# Quotes one word for any POSIX shell: as is when it holds only characters no shell treats
# specially, else in single quotes (a quote inside becomes '\'').
shell_quote() {
  local s=$1 q="'\\''"
  if [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# The words, each quoted, joined by spaces: one command line that a shell splits back into them.
quote_words() {
  local out='' w
  for w in "$@"; do
    out+="${out:+ }$(shell_quote "$w")"
  done
  printf '%s' "$out"
}

# Runs a command (after echoing it to stderr), or only prints it in a dry run.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

# A comment line in the printed plan (dry run) or a progress note (real run).
say() {
  if ((DRY_RUN)); then printf '# %s\n' "$*"; else note "$*"; fi
}

# Flag parsing. Flags are `--name value` or `--name=value`; `--` ends them and the rest are
# trainer flags. Usage: parse_init "$@"; while parse_next; do case $FLAG in ... esac; done.
parse_init() {
  PARSE_ARGS=("$@")
  PARSE_I=0
  REST_ARGS=()
}

# Sets FLAG (and an inline value after `=`); returns 1 when the flags are done.
parse_next() {
  ((PARSE_I < ${#PARSE_ARGS[@]})) || return 1
  local a=${PARSE_ARGS[PARSE_I]}
  PARSE_I=$((PARSE_I + 1))
  if [[ $a == -- ]]; then
    REST_ARGS=("${PARSE_ARGS[@]:PARSE_I}")
    PARSE_I=${#PARSE_ARGS[@]}
    return 1
  fi
  if [[ $a == --*=* ]]; then
    FLAG=${a%%=*}
    PARSE_INLINE=${a#*=}
    PARSE_HAS_INLINE=1
  else
    FLAG=$a
    PARSE_INLINE=''
    PARSE_HAS_INLINE=0
  fi
  if [[ $FLAG != --* && $FLAG != -h ]]; then
    die "unexpected argument '$a' (flags start with --; see --help)"
  fi
}

# Sets VALUE to the flag's value (inline or the next argument). A value may start with `--` only
# when allow_dashes is passed (--extra takes trainer flags as its values).
flag_value() {
  if ((PARSE_HAS_INLINE)); then
    VALUE=$PARSE_INLINE
  else
    ((PARSE_I < ${#PARSE_ARGS[@]})) || die "$FLAG needs a value"
    VALUE=${PARSE_ARGS[PARSE_I]}
    if [[ $VALUE == --* && ${1:-} != allow_dashes ]]; then
      die "$FLAG needs a value, got the flag $VALUE"
    fi
    PARSE_I=$((PARSE_I + 1))
  fi
}

no_value() {
  ((!PARSE_HAS_INLINE)) || die "$FLAG takes no value"
}

unknown_flag() {
  die "unknown flag $FLAG (see $PROG --help)"
}

# Checks one trainer flag given through --extra (or after --) and appends it to EXTRA.
add_extra() {
  local a=$1
  [[ $a == --?* ]] || die "--extra takes a trainer flag such as --config.batch_size=16, got '$a'"
  case $a in
    --config | --config=* | --workdir | --workdir=*)
      die "pass ${a%%=*} as the launcher's own flag, not through --extra" ;;
    --multihost | --multihost=*)
      die "--multihost is set by the launcher, not through --extra" ;;
  esac
  EXTRA+=("$a")
}

# Checks one KEY=VALUE given through --env and appends it to ENV_VARS.
add_env() {
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes NAME=VALUE, got '$1'"
  ENV_VARS+=("$1")
}

require() {
  local flag=$1 value=$2
  [[ -n $value ]] || die "$flag is required"
}

check_mem_fraction() {
  [[ $1 =~ ^(0?\.[0-9]*[1-9][0-9]*|1|1\.0*)$ ]] ||
    die "--mem_fraction must be a number in (0, 1], got '$1'"
}

# Local workdirs become absolute (the scripts cd to the repository); URLs stay as they are.
absolute_workdir() {
  local w=$1
  if [[ $w == *://* || $w == /* ]]; then
    printf '%s' "$w"
  else
    printf '%s/%s' "$PWD" "${w#./}"
  fi
}

# The trainer's flags: config, workdir, the multihost mode when given, then the --extra overrides
# in order.
train_flags() {
  TRAIN_FLAGS=("--config=$CONFIG" "--workdir=$WORKDIR")
  if [[ -n ${1:-} ]]; then TRAIN_FLAGS+=("--multihost=$1"); fi
  if ((${#EXTRA[@]})); then TRAIN_FLAGS+=("${EXTRA[@]}"); fi
}

# --- Installing the trainer ------------------------------------------------------------------------
# `python -m ssen_jax.main` needs the project's `train` extra (optax, clu, TensorFlow, TFDS,
# TensorBoard); the base set is inference only. tests/test_launch.py checks that this extra provides
# every module the trainer imports.
INSTALL_PROJECT='.[train]'

# Prints the POSIX shell command, run in a checkout's root, that makes its .venv and installs the
# trainer there: uv (installed with `pip --user` when missing) makes the venv with Python $1 and
# installs the checkout (editable, with the train extra) and the JAX requirement $2, the
# accelerator's build (jax[tpu], jax[cuda12]); SSEN_JAX_REQUIREMENT, when set, replaces $2 (e.g.
# jax[cuda13], or plain jax on a machine without the accelerator).
venv_install_command() {
  local python_version=$1 jax=${SSEN_JAX_REQUIREMENT:-$2}
  local c="export PATH=\"\$HOME/.local/bin:\$PATH\""
  c+=" && { command -v uv >/dev/null 2>&1 || python3 -m pip install --user --quiet uv"
  c+=" || python3 -m pip install --user --quiet --break-system-packages uv; }"
  c+=" && { [ -x .venv/bin/python ]"
  c+=" || uv venv --quiet --python $(shell_quote "$python_version") .venv; }"
  c+=" && uv pip install --quiet --python .venv/bin/python -e $(shell_quote "$INSTALL_PROJECT")"
  c+=" $(shell_quote "$jax")"
  printf '%s' "$c"
}

# Makes this checkout's .venv (see venv_install_command) for the launchers that run here.
install_here() {
  run cd "$SSEN_REPO_ROOT" || return
  run sh -c "$(venv_install_command "$1" "$2")"
}
