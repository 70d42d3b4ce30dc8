"""launch/: the TPU VM, GPU host and SLURM scripts, run as subprocesses, without cloud or cluster.

gcloud, sbatch, srun, scancel and scontrol are replaced by stubs on PATH that record their argv
(a dry run must record nothing), and the trainer by a fake `python` that records its argv and
environment. A TPU worker is emulated by running the `--command` of `gcloud ... ssh` in a fake home.
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT

LAUNCH = REPO_ROOT / 'launch'
SCRIPTS = ['tpu_vm.sh', 'gpu_host.sh', 'slurm_submit.sh', 'lib.sh', 'slurm.sbatch',
           'gpu_benchmark.sh']
TPU = ['--name', 'ssen-test', '--zone', 'us-central2-b']
SPACED = '--config.data.train_pattern=gs://b/my data/*.tfrecord'  # A space and a glob.
QUOTED = "--config.data.eval_dir=/data/it's here"  # A single quote.

_STUB = r'''#!{python} -S
import json, os, pathlib, signal, subprocess, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ['STUB_LOG'], 'a') as f:
  f.write(json.dumps([name] + args) + '\n')
out = pathlib.Path(os.environ.get('FAKE_OUT', '/nonexistent'))
if name == 'gcloud' and args[:4] == ['compute', 'tpus', 'tpu-vm', 'describe']:
  states = pathlib.Path(os.environ['FAKE_STATES'])
  lines = (states.read_text().split() if states.exists() else []) or ['READY']
  states.write_text('\n'.join(lines[1:]))
  if lines[0] == 'MISSING':
    sys.exit(print('ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: no such TPU',
                   file=sys.stderr) or 1)
  print(lines[0])
elif name == 'gcloud' and args[3:4] == ['ssh']:
  command = next(a for a in args if a.startswith('--command='))[len('--command='):]
  if 'ssen-worker-state' in command and not os.environ.get('FAKE_REMOTE_HOME'):
    # The is-training-running check: FAKE_RUNNING lists the answers, one check a line, workers
    # separated by |, e.g. 7:137 (a trainer failed with exit status 137); 255: ssh failed.
    results = pathlib.Path(os.environ['FAKE_RUNNING'])
    lines = (results.read_text().splitlines() if results.exists() else []) or ['3']
    results.write_text('\n'.join(lines[1:]))
    for answer in lines[0].split('|'):  # One per worker.
      code, _, note = answer.partition(':')
      if code == '255':
        sys.exit(255)
      print(f'ssen-worker-state {{code}} {{note}}'.rstrip())
  home = os.environ.get('FAKE_REMOTE_HOME')
  if 'FAKE_BUCKET' in os.environ:  # The bucket gs://fake-bucket is this local folder.
    command = command.replace('gs://fake-bucket', os.environ['FAKE_BUCKET'])
  if home:  # Run it as a worker would: a POSIX shell (dash) in the home directory.
    sys.exit(subprocess.run(['sh', '-c', command], cwd=home, env={{**os.environ, 'HOME': home}})
             .returncode)
elif name == 'gcloud' and args[3:4] == ['scp'] and os.environ.get('FAKE_REMOTE_HOME'):
  src, dest = args[4], args[5].split(':', 1)[1]
  pathlib.Path(os.environ['FAKE_REMOTE_HOME'], dest).write_bytes(pathlib.Path(src).read_bytes())
elif name == 'srun':
  i = next(i for i, a in enumerate(args) if not a.startswith('-'))
  os.execvp(args[i], args[i:])
elif name == 'scancel':  # slurmd delivers the signal to the tasks.
  os.kill(int((out / 'pid').read_text()), signal.SIGTERM)
elif name == 'scontrol':
  (out / 'scontrol_saw_term').write_text(str((out / 'term').exists()))
elif name == 'sbatch':
  print('Submitted batch job 4242')
'''

_FAKE_PYTHON = r'''#!/bin/bash
# Records what the trainer would get, then (FAKE_SLEEP) waits for SIGTERM like the real one.
out=${FAKE_OUT:?}
if [[ ${1:-} == */checkpoint_state.py ]]; then  # The launchers' question after a SIGTERM.
  echo "newest checkpoint: step 7, complete (asked about $2)"
  exit 0
fi
printf '%s\0' "$@" > "$out/argv"
env -0 > "$out/env"
pwd > "$out/cwd"
echo $$ > "$out/pid"
if [[ -n ${FAKE_SLEEP:-} ]]; then
  trap 'echo saved > "$out/term"; exit 0' TERM
  for ((i = 0; i < FAKE_SLEEP * 20; i++)); do sleep 0.05; done
fi
exit "${FAKE_EXIT:-0}"
'''


@pytest.fixture
def env(tmp_path):
  """Environment with the stubs first on PATH; FAKE_OUT is where the fakes write."""
  bin_dir = tmp_path / 'stubs'
  bin_dir.mkdir()
  for name in ['gcloud', 'sbatch', 'srun', 'scancel', 'scontrol']:
    stub = bin_dir / name
    stub.write_text(_STUB.format(python=sys.executable))
    stub.chmod(0o755)
  out = tmp_path / 'out'
  out.mkdir()
  return {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}',
          'STUB_LOG': str(tmp_path / 'calls'), 'FAKE_OUT': str(out),
          'FAKE_STATES': str(tmp_path / 'states'), 'FAKE_RUNNING': str(tmp_path / 'running'),
          'TMPDIR': str(tmp_path)}


@pytest.fixture
def fake_python(tmp_path):
  path = tmp_path / 'fake_python'
  path.write_text(_FAKE_PYTHON)
  path.chmod(0o755)
  return path


@pytest.fixture
def small_repo(tmp_path):
  """A stand-in checkout for --repo: install tars it, and the real one is larger than needed."""
  repo = tmp_path / 'repo'
  (repo / 'ssen_jax').mkdir(parents=True)
  (repo / 'ssen_jax' / 'main.py').write_text('# trainer\n')
  (repo / 'pyproject.toml').write_text('[project]\nname = "x"\n')
  return repo


def run(script, *args, env, cwd=REPO_ROOT, input=None):
  return subprocess.run(['bash', str(LAUNCH / script), *map(str, args)], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=30, input=input)


def ok(script, *args, env, **kwargs):
  proc = run(script, *args, env=env, **kwargs)
  assert proc.returncode == 0, proc.stderr
  return proc


def calls(env):
  log = pathlib.Path(env['STUB_LOG'])
  calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
  log.unlink(missing_ok=True)
  return calls


def commands(stdout):
  """The dry run's commands, each split as a shell would; comment lines dropped."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith('#')]


def replay(stdout, env, tmp_path):
  """Runs a dry run's output as the script it is; returns the stub calls it made."""
  plan = tmp_path / 'plan.sh'
  plan.write_text(stdout)
  proc = subprocess.run(['bash', str(plan)], env=env, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  return calls(env)


def remote_command(argv):
  assert argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'], argv
  return next(a for a in argv if a.startswith('--command='))[len('--command='):]


def trainer_flags(remote):
  """The trainer's argv inside a worker command (`... nohup .venv/bin/python -m ... >> log`)."""
  words = shlex.split(remote)
  start = words.index('.venv/bin/python')
  return words[start + 1:words.index('>>')]


def recorded(tmp_path):
  out = tmp_path / 'out'
  argv = (out / 'argv').read_bytes().decode().split('\0')[:-1]
  environ = dict(kv.split('=', 1) for kv in (out / 'env').read_bytes().decode().split('\0') if kv)
  return argv, environ


def wait_for(path, timeout=10):
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < deadline, f'{path} never appeared'
    time.sleep(0.02)


# --- Static checks --------------------------------------------------------------------------------

@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_are_strict(script):
  assert subprocess.run(['bash', '-n', str(LAUNCH / script)]).returncode == 0
  if script != 'lib.sh':
    assert 'set -euo pipefail' in (LAUNCH / script).read_text()


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck not installed')
def test_shellcheck_clean():
  proc = subprocess.run(['shellcheck', '-x', *(f'launch/{s}' for s in SCRIPTS)], cwd=REPO_ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize('script', ['tpu_vm.sh', 'gpu_host.sh', 'slurm_submit.sh',
                                    'gpu_benchmark.sh'])
def test_help(script, env):
  proc = ok(script, '--help', env=env)
  assert proc.stdout.startswith('Usage: launch/') and '--dry_run' in proc.stdout
  assert not calls(env)


# --- TPU VM ---------------------------------------------------------------------------------------

def test_tpu_create_dry_run(env):
  proc = ok('tpu_vm.sh', 'create', *TPU, '--spot', '--project', 'my-proj', '--dry_run', env=env)
  assert commands(proc.stdout) == [[
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'ssen-test', '--zone=us-central2-b',
      '--project=my-proj', '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base', '--spot']]
  assert not calls(env)  # A dry run runs nothing.


@pytest.mark.parametrize('accelerator,version', [
    ('v4-8', 'tpu-ubuntu2204-base'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v5p-32', 'v2-alpha-tpuv5'), ('v6e-8', 'v2-alpha-tpuv6e')])
def test_tpu_default_version_and_preemptible(accelerator, version, env):
  proc = ok('tpu_vm.sh', 'create', *TPU, '--accelerator', accelerator, '--preemptible',
            '--dry_run', env=env)
  (argv,) = commands(proc.stdout)
  assert argv[-3:] == [f'--accelerator-type={accelerator}', f'--version={version}', '--preemptible']
  proc = ok('tpu_vm.sh', 'create', *TPU, '--version', 'my-image', '--dry_run', env=env)
  assert '--version=my-image' in commands(proc.stdout)[0]


@pytest.mark.parametrize('accelerator,multihost', [('v4-32', 'on'), ('v4-8', 'off')])
def test_tpu_run_dry_run_passes_config_workdir_and_overrides(accelerator, multihost, env):
  proc = ok('tpu_vm.sh', 'run', *TPU, '--accelerator', accelerator, '--workdir', 'gs://bkt/runs/a',
            '--config', 'configs/refsr.py:dcn2', '--extra', '--config.batch_size=64',
            f'--extra={SPACED}', '--env', 'LIBTPU_INIT_ARGS=--xla_tpu_x=1 --y', '--dry_run', '--',
            QUOTED, env=env)
  (argv,) = commands(proc.stdout)
  assert argv[5:9] == ['ssen-test', '--zone=us-central2-b', '--worker=all', '--quiet']
  remote = remote_command(argv)
  assert trainer_flags(remote) == [
      '-m', 'ssen_jax.main', '--config=configs/refsr.py:dcn2', '--workdir=gs://bkt/runs/a',
      f'--multihost={multihost}', '--config.batch_size=64', SPACED, QUOTED]
  assert "PYTHONUNBUFFERED=1 LIBTPU_INIT_ARGS='--xla_tpu_x=1 --y' nohup " in remote
  # The trainer runs under a shell that writes its pid file and, when it ends, its exit status.
  assert ("nohup sh -c '\"$@\" & echo $! > logs/train.pid; wait $!; echo $? > logs/train.exit' "
          'trainer .venv/bin/python -m ssen_jax.main ') in remote
  assert '>> logs/train.log 2>&1 < /dev/null &' in remote
  assert not calls(env)


@pytest.mark.parametrize('command',
                         ['create', 'install', 'run', 'status', 'logs', 'stop', 'delete'])
def test_tpu_dry_run_is_what_runs(command, env, tmp_path, small_repo):
  """The printed plan, run as a script, makes exactly the calls of the real command."""
  args = [command, *TPU, '--workdir', 'gs://b/r', '--repo', small_repo, '--extra', SPACED]
  planned = replay(ok('tpu_vm.sh', *args, '--dry_run', env=env).stdout, env, tmp_path)
  ok('tpu_vm.sh', *args, env=env)
  # The tarball lies in a fresh mktemp -d folder, another one each run.
  private = lambda made: [[re.sub(r'^.*/ssen_jax\.tar\.gz$', 'TARBALL', a) for a in c]
                          for c in made]
  assert planned and private(calls(env)) == private(planned)
  ssh = [c for c in planned if c[4] == 'ssh']
  assert all('--worker=all' in c for c in ssh) or command == 'logs'


def _fake_worker(tmp_path, fake_python):
  home = tmp_path / 'worker'
  (home / 'ssen_jax' / '.venv' / 'bin').mkdir(parents=True)
  shutil.copy(fake_python, home / 'ssen_jax' / '.venv' / 'bin' / 'python')
  return home


def test_tpu_run_on_a_worker_then_stop(env, tmp_path, fake_python):
  home = _fake_worker(tmp_path, fake_python)
  env = {**env, 'FAKE_REMOTE_HOME': str(home), 'FAKE_SLEEP': '20'}
  args = ['run', *TPU, '--workdir', 'gs://b/r', '--extra', SPACED, '--env', 'A_VAR=x y', '--',
          QUOTED]
  proc = ok('tpu_vm.sh', *args, env=env)
  assert 'training started' in proc.stdout
  wait_for(tmp_path / 'out' / 'pid')
  pid = int((home / 'ssen_jax' / 'logs' / 'train.pid').read_text())
  try:
    argv, environ = recorded(tmp_path)
    assert argv == ['-m', 'ssen_jax.main', '--config=configs/refsr.py', '--workdir=gs://b/r',
                    '--multihost=on', SPACED, QUOTED]
    assert environ['PYTHONUNBUFFERED'] == '1' and environ['A_VAR'] == 'x y'
    assert (tmp_path / 'out' / 'cwd').read_text().strip() == str(home / 'ssen_jax')
    again = run('tpu_vm.sh', *args, env=env)  # The pid file guards against a second trainer.
    assert again.returncode != 0 and 'already runs' in again.stderr
    stop = ok('tpu_vm.sh', 'stop', *TPU, env=env)
    assert 'sent SIGTERM' in stop.stdout
    wait_for(tmp_path / 'out' / 'term')
    # The trainer's exit status is written when it ends; `stop` leaves its mark for a watch.
    wait_for(home / 'ssen_jax' / 'logs' / 'train.exit')
    assert (home / 'ssen_jax' / 'logs' / 'train.exit').read_text() == '0\n'
    assert (home / 'ssen_jax' / 'logs' / 'stopped').exists()
  finally:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def test_tpu_run_on_a_worker_without_the_repository_fails(env, tmp_path):
  """A worker whose disk lost the repository (or never had it): run fails there and writes
  nothing into its home."""
  home = tmp_path / 'worker'
  home.mkdir()
  proc = run('tpu_vm.sh', 'run', *TPU, '--workdir', 'gs://b/r',
             env={**env, 'FAKE_REMOTE_HOME': str(home)})
  assert proc.returncode != 0 and "can't cd to ssen_jax" in proc.stderr
  assert list(home.iterdir()) == []


def test_tpu_install_copies_repo_and_makes_venv(env, tmp_path, small_repo):
  home = tmp_path / 'worker'
  (home / '.local' / 'bin').mkdir(parents=True)
  uv = home / '.local' / 'bin' / 'uv'
  uv.write_text('#!/bin/bash\necho "$PWD $*" >> "$FAKE_OUT/uv"\n'
                '[[ $1 != venv ]] || mkdir -p .venv/bin\n')
  uv.chmod(0o755)
  repo = small_repo
  (repo / '.venv').mkdir()  # Never shipped.
  (repo / '.venv' / 'big').write_text('x')
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  env = {**env, 'FAKE_REMOTE_HOME': str(home), 'TMPDIR': str(tmp)}
  proc = ok('tpu_vm.sh', 'install', *TPU, '--repo', repo, '--stage', 'gs://b/CUFED5=data/CUFED5',
            env=env)
  assert 'installed' in proc.stdout
  assert (home / 'ssen_jax' / 'ssen_jax' / 'main.py').read_text() == '# trainer\n'
  assert not (home / 'ssen_jax' / '.venv' / 'big').exists()
  assert not (home / 'ssen_jax.tar.gz').exists()
  d = home / 'ssen_jax'
  assert (tmp_path / 'out' / 'uv').read_text().splitlines() == [
      f'{d} venv --quiet --python 3.11 .venv',
      f'{d} pip install --quiet --python .venv/bin/python -e .[train] jax[tpu]']
  made = calls(env)
  assert [c[4] for c in made[:2]] == ['scp', 'ssh']
  assert made[0][6:] == ['ssen-test:ssen_jax.tar.gz', '--zone=us-central2-b', '--worker=all',
                         '--quiet']
  # Packed in a private mktemp -d folder (not a predictable /tmp name), removed after the copy.
  folder = pathlib.Path(made[0][5]).parent
  assert made[0][5].endswith('/ssen_jax.tar.gz') and folder.parent == tmp
  assert re.fullmatch(r'tmp\.\w+', folder.name) and list(tmp.iterdir()) == []
  assert made[2] == ['gcloud', 'storage', 'rsync', '--recursive', 'gs://b/CUFED5', 'data/CUFED5']
  assert (d / 'data' / 'CUFED5').is_dir()


def test_tpu_install_from_git(env):
  proc = ok('tpu_vm.sh', 'install', *TPU, '--repo', 'https://github.com/me/ssen_jax.git',
            '--ref', 'v1.0', '--dry_run', env=env)
  (argv,) = commands(proc.stdout)
  remote = remote_command(argv)
  assert 'git clone --quiet https://github.com/me/ssen_jax.git ssen_jax' in remote
  assert 'fetch --quiet origin v1.0' in remote and "-e '.[train]' 'jax[tpu]'" in remote


def _subcommands(made):
  return [c[4] for c in made if c[0] == 'gcloud' and c[1] == 'compute']


@pytest.mark.parametrize('state,expected,flags', [
    ('PREEMPTED', ['describe', 'delete', 'create', 'scp', 'ssh', 'ssh'], []),
    ('TERMINATED', ['describe', 'delete', 'create', 'scp', 'ssh', 'ssh'], ['--recreate']),
    ('STOPPED', ['describe', 'delete', 'create', 'scp', 'ssh', 'ssh'], ['--recreate']),
    ('MISSING', ['describe', 'create', 'scp', 'ssh', 'ssh'], []),
])
def test_tpu_resume_recreates_after_preemption(state, expected, flags, env, tmp_path, small_repo):
  pathlib.Path(env['FAKE_STATES']).write_text(state)
  args = ['resume', *TPU, '--spot', '--workdir', 'gs://b/r', '--repo', small_repo, '--extra',
          SPACED, *flags]
  ok('tpu_vm.sh', *args, env=env)
  made = calls(env)
  assert _subcommands(made) == expected
  if 'delete' in expected:
    assert made[1][-1] == '--quiet'
  assert made[-4][4] == 'create' and made[-4][-1] == '--spot'
  assert trainer_flags(remote_command(made[-1]))[-1] == SPACED  # The same command again.
  # The dry run shows the same recovery.
  proc = ok('tpu_vm.sh', *args, '--dry_run', '--dry_run_state', state, env=env)
  assert [a[4] for a in commands(proc.stdout) if a[0] == 'gcloud'] == expected
  assert not calls(env)


@pytest.mark.parametrize('command', ['resume', 'watch'])
@pytest.mark.parametrize('state', ['STOPPED', 'TERMINATED'])
def test_tpu_stopped_is_never_deleted_without_asking(command, state, env, small_repo):
  """A stopped TPU may have been stopped on purpose: without --recreate (and no terminal to ask
  at) resume and watch delete nothing, say so in one line and exit 1; dry runs plan no delete."""
  pathlib.Path(env['FAKE_STATES']).write_text(f'{state} {state}')
  args = [command, *TPU, '--workdir', 'gs://b/r', '--interval', '0', '--repo', small_repo]
  proc = run('tpu_vm.sh', *args, env=env, input='yes\n')  # Not a terminal: never read.
  assert proc.returncode == 1, proc.stderr
  assert _subcommands(calls(env)) == ['describe']
  assert proc.stderr.strip().splitlines()[-1] == (
      f'tpu_vm.sh: nothing done: ssen-test is {state}; start it (gcloud compute tpus tpu-vm '
      'start ssen-test) or pass --recreate to delete and recreate it')
  proc = run('tpu_vm.sh', *args, '--dry_run', '--dry_run_state', state, env=env)
  assert proc.returncode == 1
  assert [a[4] for a in commands(proc.stdout) if a[0] == 'gcloud'] == ['describe']


@pytest.mark.parametrize('running_rc,expected,rc', [
    ('3', ['describe', 'ssh', 'ssh'], 0),  # READY, trainer gone: rerun it.
    ('0', ['describe', 'ssh'], 0),  # READY, trainer alive: nothing to do.
    ('255', ['describe', 'ssh'], 1),  # Worker 0 unreachable: try later.
])
def test_tpu_resume_when_ready(running_rc, expected, rc, env):
  pathlib.Path(env['FAKE_STATES']).write_text('READY')
  pathlib.Path(env['FAKE_RUNNING']).write_text(running_rc)
  proc = run('tpu_vm.sh', 'resume', *TPU, '--workdir', 'gs://b/r', env=env)
  assert proc.returncode == rc, proc.stderr
  assert _subcommands(calls(env)) == expected


def test_tpu_resume_while_creating_fails_cleanly(env):
  pathlib.Path(env['FAKE_STATES']).write_text('CREATING')
  proc = run('tpu_vm.sh', 'resume', *TPU, '--workdir', 'gs://b/r', env=env)
  assert proc.returncode == 1 and 'nothing done: ssen-test is CREATING' in proc.stderr


def test_tpu_watch_recovers_until_training_ends(env, small_repo):
  pathlib.Path(env['FAKE_STATES']).write_text('PREEMPTED PREEMPTED CREATING READY')
  proc = run('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--interval', '0', '--repo',
             small_repo, env=env)
  assert proc.returncode == 0, proc.stderr
  recover = ['delete', 'create', 'scp', 'ssh', 'ssh']
  assert _subcommands(calls(env)) == (
      ['describe', *recover, 'describe', *recover, 'describe', 'describe', 'ssh'])
  assert 'recovery 1 of at most 20' in proc.stderr and 'training has ended' in proc.stderr


def test_tpu_watch_starts_on_a_busy_or_idle_tpu(env, small_repo):
  """A watch begun while the TPU is being created waits for it, then starts training."""
  pathlib.Path(env['FAKE_STATES']).write_text('CREATING READY READY')
  proc = run('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--interval', '0', '--repo',
             small_repo, env=env)
  assert proc.returncode == 0, proc.stderr
  assert _subcommands(calls(env)) == ['describe', 'describe', 'ssh', 'ssh', 'describe', 'ssh']
  pathlib.Path(env['FAKE_STATES']).write_text('READY READY')
  proc = run('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--interval', '0', env=env)
  made = calls(env)
  assert _subcommands(made) == ['describe', 'ssh', 'ssh', 'describe', 'ssh']
  assert 'nohup' in remote_command(made[2])  # Started, then (fake trainer gone) ended.


_ENDINGS = {  # A worker-0 check result (exit status:printed line) and what the watch says.
    'finished': ('3', 'training has ended: the trainer finished (exit status 0)'),
    'stopped': ('4', 'training has ended: the trainer was stopped with tpu_vm.sh stop'),
    'saved': ('5:newest checkpoint: step 9, complete',
              'the trainer was stopped by SIGTERM (exit status 143) and saved (newest checkpoint: '
              'step 9, complete)'),
    'unsaved': ('8:newest checkpoint: step 12, NOT complete (an interrupted save); latest '
                'complete: step 10', 'the trainer ended with status 143 without a complete save'),
    'failed': ('7:137', 'training has ended: the trainer failed (exit status 137: killed by '
                        'signal 9)'),
}


@pytest.mark.parametrize('ending', list(_ENDINGS))
def test_tpu_watch_reruns_a_trainer_ended_by_sigterm_and_ends_otherwise(ending, env):
  """A trainer that exited 143 (SIGTERM from a maintenance event, the TPU itself still READY) is
  rerun, whether or not its save completed, and the watch says which; a finished or stopped one
  ends the watch (exit 0), a failed one too, with exit 1."""
  check, words = _ENDINGS[ending]
  pathlib.Path(env['FAKE_STATES']).write_text('READY\n' * 4)
  pathlib.Path(env['FAKE_RUNNING']).write_text(f'3\n0\n{check}\n3\n')
  proc = run('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--interval', '0', env=env)
  assert words in proc.stderr
  made = _subcommands(calls(env))
  start, look = ['ssh'], ['describe', 'ssh']
  if ending in ('saved', 'unsaved'):
    assert proc.returncode == 0, proc.stderr
    assert made == [*look, *start, *look, *look, *start, *look]
    assert 'recovery 1 of at most 20: rerunning the training command' in proc.stderr
    assert 'training has ended: the trainer finished' in proc.stderr
  else:
    assert proc.returncode == (1 if ending == 'failed' else 0), proc.stderr
    assert made == [*look, *start, *look, *look]
    assert 'rerunning' not in proc.stderr.split('READY, training runs')[-1]


def test_tpu_watch_reruns_only_when_every_worker_has_ended(env):
  """A pod slice's trainers end one by one: while one still runs (saving, shutting down), the
  watch waits; a rerun started then would not find that worker's new trainer."""
  saved = '5:newest checkpoint: step 9, complete'
  pathlib.Path(env['FAKE_STATES']).write_text('READY\n' * 5)
  pathlib.Path(env['FAKE_RUNNING']).write_text(f'3|3\n0|0\n{saved}|0\n{saved}|{saved}\n3|3\n')
  proc = run('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--interval', '0', env=env)
  assert proc.returncode == 0, proc.stderr
  look, start = ['describe', 'ssh'], ['ssh']
  assert _subcommands(calls(env)) == [*look, *start, *look, *look, *look, *start, *look]
  assert proc.stderr.count('READY, training runs') == 2


def test_tpu_worker_check_reads_the_exit_status_and_the_workdir(env, tmp_path, fake_python):
  """On a worker: exit status 143 alone is not taken as a save; the workdir's newest checkpoint
  decides (orbax's own rule, through launch/checkpoint_state.py and the worker's .venv)."""
  home = _fake_worker(tmp_path, fake_python)
  d = home / 'ssen_jax'
  (d / 'launch').mkdir()
  shutil.copy(LAUNCH / 'checkpoint_state.py', d / 'launch')
  venv_python = d / '.venv' / 'bin' / 'python'
  venv_python.write_text(f'#!/bin/bash\n[[ $1 != */checkpoint_state.py ]] || exec {sys.executable}'
                         f' "$@"\nexec {fake_python} "$@"\n')
  (d / 'logs').mkdir()
  workdir = tmp_path / 'bucket'
  (workdir / 'checkpoints' / '4').mkdir(parents=True)
  (workdir / 'checkpoints' / '6.orbax-checkpoint-tmp-1733').mkdir()
  env = {**env, 'FAKE_REMOTE_HOME': str(home), 'FAKE_BUCKET': str(workdir)}
  pathlib.Path(env['FAKE_STATES']).write_text('READY\nREADY\n')
  for expected in ['the trainer ended with status 143 without a complete save, killed by SIGTERM '
                   'during it? (newest checkpoint: step 6, NOT complete (an interrupted save); '
                   'latest complete: step 4)',
                   'the trainer was stopped by SIGTERM (exit status 143) and saved (newest '
                   'checkpoint: step 4, complete)']:
    (d / 'logs' / 'train.exit').write_text('143\n')
    proc = ok('tpu_vm.sh', 'resume', *TPU, '--workdir', 'gs://fake-bucket', env=env)
    assert f'READY, training does not run: {expected}' in proc.stderr
    assert 'training started' in proc.stdout  # Rerun: it resumes from the latest complete step.
    wait_for(d / 'logs' / 'train.exit')  # The fake trainer has ended.
    # Then the same without the interrupted save.
    shutil.rmtree(workdir / 'checkpoints' / '6.orbax-checkpoint-tmp-1733', ignore_errors=True)


def test_checkpoint_state_reports_the_newest_step(tmp_path):
  script = [sys.executable, str(LAUNCH / 'checkpoint_state.py')]
  proc = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert (proc.returncode, proc.stdout) == (1, f'no checkpoint in {tmp_path}\n')
  for name in ['2', '5', '7.orbax-checkpoint-tmp-99', 'best', '3.corrupt']:
    (tmp_path / 'checkpoints' / name).mkdir(parents=True)
  proc = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert (proc.returncode, proc.stdout) == (1, 'newest checkpoint: step 7, NOT complete (an '
                                            'interrupted save); latest complete: step 5\n')
  (tmp_path / 'checkpoints' / '7.orbax-checkpoint-tmp-99').rename(tmp_path / 'checkpoints' / '7')
  proc = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert (proc.returncode, proc.stdout) == (0, 'newest checkpoint: step 7, complete\n')
  proc = subprocess.run(script, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.startswith('usage:')


def test_tpu_watch_gives_up_after_max_restarts(env, small_repo):
  pathlib.Path(env['FAKE_STATES']).write_text('PREEMPTED PREEMPTED PREEMPTED PREEMPTED')
  proc = run('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--interval', '0',
             '--max_restarts', '2', '--repo', small_repo, env=env)
  assert proc.returncode == 1 and 'after 2 recoveries' in proc.stderr
  assert _subcommands(calls(env)).count('create') == 3  # The first resume, then two more.


def test_tpu_watch_dry_run_checks_once(env):
  proc = ok('tpu_vm.sh', 'watch', *TPU, '--workdir', 'gs://b/r', '--dry_run', env=env)
  assert [a[4] for a in commands(proc.stdout) if a[0] == 'gcloud'] == [
      'describe', 'delete', 'create', 'scp', 'ssh', 'ssh']
  assert 'every 300s' in proc.stdout and not calls(env)


# --- One GPU host ---------------------------------------------------------------------------------

def test_gpu_host_dry_run(env, tmp_path):
  proc = ok('gpu_host.sh', '--workdir', 'runs/a', '--config', 'configs/refsr.py:demo', '--gpus',
            '0,1', '--extra', SPACED, '--dry_run', '--', QUOTED, env=env, cwd=tmp_path)
  assert commands(proc.stdout) == [
      ['cd', str(REPO_ROOT)],
      ['exec', 'env', 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.9', 'CUDA_VISIBLE_DEVICES=0,1',
       str(REPO_ROOT / '.venv' / 'bin' / 'python'), '-m', 'ssen_jax.main',
       '--config=configs/refsr.py:demo', f'--workdir={tmp_path}/runs/a', '--multihost=off',
       SPACED, QUOTED]]
  assert not calls(env)


def test_gpu_host_runs_the_trainer(env, tmp_path, fake_python):
  args = ['--workdir', '/ckpt/x y', '--python', fake_python, '--mem_fraction', '.8', '--env',
          'TF_CPP_MIN_LOG_LEVEL=2', '--extra', SPACED]
  ok('gpu_host.sh', *args, env=env)
  argv, environ = recorded(tmp_path)
  assert argv == ['-m', 'ssen_jax.main', '--config=configs/refsr.py', '--workdir=/ckpt/x y',
                  '--multihost=off', SPACED]
  assert environ['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '.8'
  assert environ['TF_CPP_MIN_LOG_LEVEL'] == '2'
  assert environ.get('CUDA_VISIBLE_DEVICES') == os.environ.get('CUDA_VISIBLE_DEVICES')  # Untouched.
  assert (tmp_path / 'out' / 'cwd').read_text().strip() == str(REPO_ROOT)
  # The dry run, run as a script, starts the trainer the same way.
  (tmp_path / 'out' / 'argv').unlink()
  replay(ok('gpu_host.sh', *args, '--dry_run', env=env).stdout, env, tmp_path)
  assert recorded(tmp_path)[0] == argv


def test_gpu_host_background_log(env, tmp_path, fake_python):
  """--log: the printed pid is the trainer's, and its exit status, when it ends, goes to LOG.exit,
  the log's last line and the background shell's own status."""
  log = tmp_path / 'logs dir' / 'train.log'
  proc = ok('gpu_host.sh', '--workdir', '/ckpt', '--python', fake_python, '--log', log,
            env={**env, 'FAKE_EXIT': '3'})
  pid = re.search(r'training started \(pid (\d+)\)', proc.stdout).group(1)
  wait_for(pathlib.Path(f'{log}.exit'))
  assert (tmp_path / 'out' / 'pid').read_text().strip() == pid  # The trainer itself.
  assert pathlib.Path(f'{log}.exit').read_text() == '3\n'
  assert re.search(rf'the trainer \(pid {pid}\) ended with exit status 3,', log.read_text())
  # `kill PID` reaches the trainer (which saves: the fake writes `term`), and 0 is recorded.
  proc = ok('gpu_host.sh', '--workdir', '/ckpt', '--python', fake_python, '--log', log,
            env={**env, 'FAKE_SLEEP': '10'})
  assert not pathlib.Path(f'{log}.exit').exists()  # The previous run's status is gone.
  pid = int(re.search(r'training started \(pid (\d+)\)', proc.stdout).group(1))
  wait_for(tmp_path / 'out' / 'pid')
  os.kill(pid, signal.SIGTERM)
  wait_for(pathlib.Path(f'{log}.exit'))
  assert (tmp_path / 'out' / 'term').exists() and pathlib.Path(f'{log}.exit').read_text() == '0\n'
  dry = ok('gpu_host.sh', '--workdir', '/ckpt', '--log', log, '--dry_run', env=env).stdout
  assert commands(dry)[0] == ['mkdir', '-p', str(log.parent)]
  assert commands(dry)[2] == ['rm', '-f', f'{log}.pid', f'{log}.exit']
  assert f">> '{log}' 2>&1 < /dev/null &" in dry and dry.splitlines()[3].startswith('nohup sh -c ')
  # The dry run, run as the script it is, starts the trainer the same way and records its status.
  pathlib.Path(f'{log}.exit').unlink()
  replay(ok('gpu_host.sh', '--workdir', '/ckpt', '--python', fake_python, '--log', log,
            '--dry_run', env=env).stdout, {**env, 'FAKE_EXIT': '5'}, tmp_path)
  wait_for(pathlib.Path(f'{log}.exit'))
  assert pathlib.Path(f'{log}.exit').read_text() == '5\n'


# --- SLURM ----------------------------------------------------------------------------------------

def _generated(stdout):
  lines = stdout.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith('# ----- generated script'))
  end = lines.index('# ----- end of generated script -----')
  return '\n'.join(lines[start + 1:end]) + '\n', lines[start], lines[end + 1:]


SLURM = ['--nodes', '4', '--gpus_per_node', '8', '--time', '12:00:00', '--partition', 'gpu',
         '--account', 'proj', '--cpus_per_task', '12', '--sbatch_arg=--constraint=a100',
         '--workdir', '/shared/ckpt/ssen', '--config', 'configs/refsr.py:dcn4']


def test_slurm_dry_run_prints_script_and_sbatch(env, tmp_path):
  proc = ok('slurm_submit.sh', *SLURM, '--log_dir', tmp_path / 'logs', '--extra', SPACED,
            '--dry_run', '--', QUOTED, env=env)
  script, header, tail = _generated(proc.stdout)
  path = re.fullmatch(r'# ----- generated script \(written to (.*)\) -----', header).group(1)
  assert re.fullmatch(rf'{tmp_path}/logs/ssen-\d{{8}}-\d{{6}}\.sbatch', path)
  assert commands('\n'.join(tail)) == [['sbatch', path]]
  assert not calls(env) and not (tmp_path / 'logs').exists()  # Nothing submitted or written.
  sbatch = [l[len('#SBATCH '):] for l in script.splitlines() if l.startswith('#SBATCH ')]
  assert sbatch == [
      '--job-name=ssen', '--nodes=4', '--ntasks-per-node=8', '--gpus-per-node=8',
      '--cpus-per-task=12', '--time=12:00:00', '--partition=gpu', '--account=proj', '--requeue',
      '--signal=B:TERM@120', '--open-mode=append', f'--output={tmp_path}/logs/%x-%j.out',
      f'--chdir={REPO_ROOT}', '--constraint=a100']
  # No command before the last #SBATCH line (sbatch stops reading them at the first one).
  head, body = script.split('#SBATCH --constraint=a100\n', 1)
  assert all(l.startswith('#') for l in head.splitlines()) and '#SBATCH' not in body
  assert subprocess.run(['bash', '-n'], input=script, text=True).returncode == 0
  assert ('srun --kill-on-bad-exit=1 --gpu-bind=none "$python" -m ssen_jax.main --multihost=on '
          '"$@"') in body
  (set_line,) = [l for l in script.splitlines() if l.startswith('set -- ')]
  assert shlex.split(set_line)[2:] == [
      '--config=configs/refsr.py:dcn4', '--workdir=/shared/ckpt/ssen', SPACED, QUOTED]


def test_slurm_submit_writes_and_submits(env, tmp_path):
  args = [*SLURM, '--log_dir', tmp_path / 'logs', '--extra', SPACED]
  proc = ok('slurm_submit.sh', *args, env=env)
  ((name, path),) = calls(env)
  assert name == 'sbatch' and 'Submitted batch job 4242' in proc.stdout
  dry_script = _generated(ok('slurm_submit.sh', *args, '--dry_run', env=env).stdout)[0]
  assert pathlib.Path(path).read_text() == dry_script


def _job_env(env, tmp_path, **extra):
  return {**env, 'SLURM_JOB_ID': '777', 'SLURM_NTASKS': '16', 'SLURM_JOB_NUM_NODES': '2', **extra}


def _write_job(env, tmp_path, fake_python, *args):
  proc = ok('slurm_submit.sh', '--workdir', '/shared/w', '--python', fake_python, '--log_dir',
            tmp_path / 'logs', '--setup', f'touch {tmp_path}/out/setup_ran', '--env', 'B_VAR=p q',
            '--mem_fraction', '0.85', '--dry_run', *args, env=env)
  job = tmp_path / 'job.sbatch'
  job.write_text(_generated(proc.stdout)[0])
  return job


def test_slurm_job_runs_trainer_on_every_task(env, tmp_path, fake_python):
  job = _write_job(env, tmp_path, fake_python, '--extra', SPACED, '--', QUOTED)
  proc = subprocess.run(['bash', str(job)], env=_job_env(env, tmp_path), cwd=tmp_path,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  argv, environ = recorded(tmp_path)
  assert argv == ['-m', 'ssen_jax.main', '--multihost=on', '--config=configs/refsr.py',
                  '--workdir=/shared/w', SPACED, QUOTED]
  assert environ['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.85' and environ['B_VAR'] == 'p q'
  assert (tmp_path / 'out' / 'setup_ran').exists()
  assert (tmp_path / 'out' / 'cwd').read_text().strip() == str(REPO_ROOT)
  (srun,) = calls(env)
  assert srun[:3] == ['srun', '--kill-on-bad-exit=1', '--gpu-bind=none']
  assert 'training finished' in proc.stdout


def test_slurm_sigterm_saves_then_requeues(env, tmp_path, fake_python):
  """--signal=B:TERM reaches the batch shell; the trainers get SIGTERM (via scancel, as srun would
  SIGKILL them), save, exit, and then the job is requeued."""
  job = _write_job(env, tmp_path, fake_python)
  shell = subprocess.Popen(['bash', str(job)], env=_job_env(env, tmp_path, FAKE_SLEEP='20'),
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_for(tmp_path / 'out' / 'pid')
    shell.send_signal(signal.SIGTERM)
    stdout, stderr = shell.communicate(timeout=15)
  finally:
    shell.kill()
  assert shell.returncode == 0, stderr
  assert (tmp_path / 'out' / 'term').read_text() == 'saved\n'
  assert [c[0] for c in calls(env)] == ['srun', 'scancel', 'scontrol']
  assert (tmp_path / 'out' / 'scontrol_saw_term').read_text() == 'True'  # Saved before requeue.
  assert 'then the job is requeued' in stdout and 'training finished' not in stdout
  # What the trainers left is reported from the workdir, not assumed from their exit status.
  assert re.search(r'trainers ended \(srun exit status \d+\); newest checkpoint: step 7, '
                   r'complete \(asked about /shared/w\)', stdout), stdout


def test_slurm_sbatch_template_alone_needs_trainer_flags(env):
  proc = subprocess.run(['bash', str(LAUNCH / 'slurm.sbatch')], env=env, capture_output=True,
                        text=True, timeout=30)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and 'no trainer flags' in proc.stderr
  template = (LAUNCH / 'slurm.sbatch').read_text().splitlines()
  sbatch = [l for l in template if l.startswith('#SBATCH')]
  assert {'#SBATCH --requeue', '#SBATCH --signal=B:TERM@120'} <= set(sbatch)


# --- Bad flags: one line on stderr, exit 2 --------------------------------------------------------

@pytest.mark.parametrize('script,args,message', [
    ('tpu_vm.sh', [], 'missing COMMAND'),
    ('tpu_vm.sh', ['launch', *TPU], "unknown command 'launch'"),
    ('tpu_vm.sh', ['create', '--zone', 'z'], '--name is required'),
    ('tpu_vm.sh', ['create', '--name', 'a'], '--zone is required'),
    ('tpu_vm.sh', ['run', *TPU], '--workdir is required'),
    ('tpu_vm.sh', ['watch', *TPU], '--workdir is required'),
    ('tpu_vm.sh', ['run', *TPU, '--workdir', '/local/dir'], 'must be a gs:// path'),
    ('tpu_vm.sh', ['create', *TPU, '--bogus'], 'unknown flag --bogus'),
    ('tpu_vm.sh', ['create', *TPU, '--accelerator', 'tpu32'], '--accelerator must look like'),
    ('tpu_vm.sh', ['create', *TPU, '--spot', '--preemptible'], 'exclude each other'),
    ('tpu_vm.sh', ['create', '--name', 'My_TPU', '--zone', 'z'], '--name must be lower-case'),
    ('tpu_vm.sh', ['create', *TPU, '--name'], '--name needs a value'),
    ('tpu_vm.sh', ['create', '--name', '--zone', 'z'], '--name needs a value, got the flag --zone'),
    ('tpu_vm.sh', ['create', *TPU, '--dry_run=yes'], '--dry_run takes no value'),
    ('tpu_vm.sh', ['create', *TPU, 'extra'], "unexpected argument 'extra'"),
    ('tpu_vm.sh', ['run', *TPU, '--workdir', 'gs://b', '--extra', 'batch_size=3'], 'trainer flag'),
    ('tpu_vm.sh', ['run', *TPU, '--workdir', 'gs://b', '--', '--workdir=gs://c'], 'own flag'),
    ('tpu_vm.sh', ['run', *TPU, '--workdir', 'gs://b', '--extra=--multihost=on'], 'set by the'),
    ('tpu_vm.sh', ['install', *TPU, '--repo', '/no/such/dir'], 'no such directory'),
    ('tpu_vm.sh', ['install', *TPU, '--stage', '/local=x'], '--stage takes gs://'),
    ('tpu_vm.sh', ['watch', *TPU, '--workdir', 'gs://b', '--interval', 'soon'], '--interval must'),
    ('tpu_vm.sh', ['logs', *TPU, '--worker', 'first'], '--worker must'),
    ('gpu_host.sh', [], '--workdir is required'),
    ('gpu_host.sh', ['--workdir', 'w', '--gpus', '0;1'], '--gpus takes'),
    ('gpu_host.sh', ['--workdir', 'w', '--mem_fraction', '1.5'], '--mem_fraction must'),
    ('gpu_host.sh', ['--workdir', 'w', '--env', 'not an assignment'], '--env takes NAME=VALUE'),
    ('gpu_host.sh', ['--workdir', 'w', '--nodes', '2'], 'unknown flag --nodes'),
    ('gpu_host.sh', ['--workdir', 'w', '--python', '/no/python'], 'no Python at /no/python'),
    ('slurm_submit.sh', ['--nodes', '2'], '--workdir is required'),
    ('slurm_submit.sh', ['--workdir', 'w', '--nodes', '0'], '--nodes must be a positive'),
    ('slurm_submit.sh', ['--workdir', 'w', '--time', 'tomorrow'], '--time must look like'),
    ('slurm_submit.sh', ['--workdir', 'w', '--partition', 'gpu large'], 'must not contain spaces'),
    ('slurm_submit.sh', ['--workdir', 'w', '--sbatch_arg', 'exclusive'], '--sbatch_arg takes'),
    ('slurm_submit.sh', ['--workdir', 'w', '--zone', 'z'], 'unknown flag --zone'),
])
def test_bad_flags_give_one_error_line(script, args, message, env):
  proc = run(script, *args, env=env)
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  assert proc.stdout == ''
  assert proc.stderr.count('\n') == 1 and proc.stderr.startswith(f'{script}: error: '), proc.stderr
  assert message in proc.stderr
  assert not calls(env)


# --- The README's commands ------------------------------------------------------------------------

def _readme_commands():
  text = (LAUNCH / 'README.md').read_text()
  for block in re.findall(r'```(?:bash|sh)\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.strip()
      if re.match(r'launch/(tpu_vm|gpu_host|slurm_submit)\.sh\b', line) and '--help' not in line:
        yield line


def test_readme_commands_are_valid(env):
  """Every documented command, with --dry_run added, passes the scripts' checks."""
  lines = list(_readme_commands())
  assert {l.split()[0] for l in lines} == {
      'launch/tpu_vm.sh', 'launch/gpu_host.sh', 'launch/slurm_submit.sh'}
  for line in lines:
    words = shlex.split(line)
    proc = subprocess.run(['bash', words[0], '--dry_run', *words[1:]] if 'tpu_vm' not in words[0]
                          else ['bash', words[0], words[1], '--dry_run', *words[2:]],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, (line, proc.stderr)
  assert not calls(env)


# --- The GPU benchmark table ---------------------------------------------------------------------

FIGURES = ['op_parity', 'model_parity', 'latency', 'train', 'train_bf16', 'compile', 'op']


def test_gpu_benchmark_runs_every_figure(env, tmp_path, fake_python):
  out = tmp_path / 'tables'
  proc = ok('gpu_benchmark.sh', '--python', fake_python, '--out_dir', out, '--batch', '16', env=env)
  assert sorted(f.name for f in out.iterdir()) == sorted(
      [f'{name}.md' for name in FIGURES] + ['summary.md', 'run.tsv'])
  assert recorded(tmp_path)[0] == [  # The last call: the summary of the figures.
      '-m', 'ssen_jax.benchmark', '--what', 'summary', '--out', f'{out}/summary.json',
      '--overwrite']
  run_tsv = [line.split('\t') for line in (out / 'run.tsv').read_text().splitlines()]
  assert [r[0] for r in run_tsv] == FIGURES + ['total'] and all(r[1] == '0' for r in run_tsv[:-1])
  assert run_tsv[-1][1] == '-' and run_tsv[-1][3] == '460'
  assert 'figure latency (limit 50 s)' in proc.stderr and 'total: ' in proc.stderr
  dry = commands(ok('gpu_benchmark.sh', '--out_dir', 'rel', '--dry_run', env=env,
                    cwd=tmp_path).stdout)
  assert dry[:2] == [['cd', str(REPO_ROOT)], ['mkdir', '-p', f'{tmp_path}/rel']]
  assert dry[2][0] == 'nvidia-smi'
  limits = [c[1] for c in dry[3:-1]]
  assert limits == ['40', '70', '50', '110', '80', '70', '40']
  assert sum(map(int, limits)) <= 460  # Each figure in its limit: all within the budget.
  assert all(c[2:5] == ['env', 'PYTHONUNBUFFERED=1', 'XLA_PYTHON_CLIENT_PREALLOCATE=false']
             for c in dry[3:-1])
  bench = ['python3', '-m', 'ssen_jax.benchmark']
  json_out = lambda name: ['--out', f'{tmp_path}/rel/{name}.json', '--overwrite']
  assert [c[5:] for c in dry[3:-1]] == [
      bench + ['--what', 'op_parity'] + json_out('op_parity'),
      bench + ['--what', 'model_parity'] + json_out('model_parity'),
      bench + ['--what', 'latency', '--compare', 'torch'] + json_out('latency'),
      bench + ['--what', 'train', '--train_batch', '32', '--compare', 'torch'] + json_out('train'),
      bench + ['--what', 'train', '--train_batch', '32', '--config', 'configs/refsr.py:bf16']
      + json_out('train_bf16'),
      bench + ['--what', 'compile', '--train_batch', '32', '--repeats', '2'] + json_out('compile'),
      bench + ['--what', 'op', '--compare', 'torch'] + json_out('op')]
  assert dry[-1] == ['timeout', '15', 'python3', '-m', 'ssen_jax.benchmark', '--what', 'summary',
                     '--out', f'{tmp_path}/rel/summary.json', '--overwrite']
  tiny = commands(ok('gpu_benchmark.sh', '--out_dir', 'rel', '--dry_run', '--tiny', env=env,
                     cwd=tmp_path).stdout)
  assert all('--tiny' in c and c[1] == '600' for c in tiny[3:-1]) and len(tiny) == len(dry)
  # --out, the old spelling of --out_dir, does the same for one release, with one warning line.
  old = ok('gpu_benchmark.sh', '--out', 'rel', '--dry_run', env=env, cwd=tmp_path)
  assert commands(old.stdout) == dry
  assert "gpu_benchmark.sh: warning: --out is deprecated; use --out_dir=rel" in old.stderr


def test_gpu_benchmark_budget_cuts_the_last_figures(env, tmp_path):
  """Each figure gets at most what is left of --budget; with less than 5 s left it is skipped."""
  slow = tmp_path / 'slow_python'
  slow.write_text('#!/bin/bash\n[[ $* == *summary* ]] || sleep 1\necho "$@"\n')
  slow.chmod(0o755)
  out = tmp_path / 'tables'
  proc = run('gpu_benchmark.sh', '--python', slow, '--out_dir', out, '--budget', '7', env=env)
  assert proc.returncode == 1
  rows = [line.split('\t') for line in (out / 'run.tsv').read_text().splitlines()]
  assert [r[0] for r in rows] == FIGURES + ['total']
  assert rows[0][1] == '0' and rows[0][3] == '7'  # The first figure gets the whole budget.
  assert rows[-2][1:3] == ['skipped', '0'] and 'skipped: the budget of 7 s is spent' in proc.stderr
  assert '--what summary' in (out / 'summary.md').read_text()


def test_gpu_benchmark_keeps_going_after_a_failed_figure(env, tmp_path):
  failing = tmp_path / 'failing_python'
  failing.write_text('#!/bin/bash\necho "$@"\n[[ $* != *latency* ]]\n')
  failing.chmod(0o755)
  out = tmp_path / 'tables'
  proc = run('gpu_benchmark.sh', '--python', failing, '--out_dir', out, env=env)
  assert proc.returncode == 1
  assert 'figure latency failed (exit 1); the others still run' in proc.stderr
  assert '--what train' in (out / 'train.md').read_text()
  assert 'latency\t1\t' in (out / 'run.tsv').read_text()


@pytest.mark.parametrize('args, message', [
    (['--budget', '8m'], "--budget must be a whole number of seconds, got '8m'"),
    (['--batch', 'x'], "--batch must be a positive integer, got 'x'"),
    (['--limit', '1m'], "--limit must be a whole number of seconds, got '1m'"),
    (['--bogus'], 'unknown flag --bogus'),
])
def test_gpu_benchmark_bad_flags(args, message, env):
  proc = run('gpu_benchmark.sh', *args, env=env)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and message in proc.stderr
