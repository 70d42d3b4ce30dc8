"""Rehearses the launchers on this machine: from an empty folder to a trained, stopped, resumed and
evaluated run, with each launcher's own commands.

    python launch/rehearse.py                      # tpu_vm.sh, gpu_host.sh and SLURM, ~10 min
    python launch/rehearse.py --only tpu --ref b78d1e6   # the TPU path of an older commit

Only what needs a cloud or a cluster is stood in for, by programs put first on PATH:
  gcloud   a TPU VM is folders on this machine, one fresh home per worker (v4-16: two workers);
           `ssh --command` runs the command in each worker's home with `sh`, `scp` copies there,
           `storage rsync` copies a folder; gs://BUCKET is the folder ROOT/bucket (the stand-in
           rewrites gs://rehearsal-bucket in the commands it runs), and 'jax[tpu]' in a worker's
           command becomes plain jax (this machine has no TPU). A TPU VM's workers learn their
           peers from its metadata server, which only exists on a TPU VM: here each worker's
           environment carries them instead (JAX_COORDINATOR_ADDRESS, and the process count and
           index in Open MPI's variables, which JAX's distributed runtime reads).
  sbatch, srun, scancel, scontrol
           a job runs its batch script with bash in the background, srun starts SLURM_NTASKS
           tasks on this machine (two, each in a fresh home) with SLURM's variables, from which
           JAX's runtime finds its peers; scancel --signal passes a signal to the tasks, scontrol
           requeue makes the job run again when its script ends.
The workers' environments are made by the launchers' own install commands in fresh virtual
environments (`tpu_vm.sh install`, `gpu_host.sh --install`, `slurm_submit.sh --install`); on the
GPU launchers SSEN_JAX_REQUIREMENT=jax replaces 'jax[cuda12]' (no GPU here). uv's and pip's caches
(UV_CACHE_DIR, PIP_CACHE_DIR; default under ~/.cache) make a repeated rehearsal install in seconds.
The repository is `git clone`d at --ref (committed files only). The data is the embedded demo set
as a TFDS dataset, prepared by `python -m ssen_jax.data_prep.tfds_build` with the Python that runs
this script (it needs the train extra; the project's .venv has it), put in the bucket (TPU) or a
shared folder (GPU, SLURM). The trainer is the real one: configs/refsr.py:tiny for --steps steps.

Each launcher's run is stopped and resumed the way its README says: TPU: `stop`, then `watch`,
which resumes it, reruns it after a SIGTERM sent to the trainers alone (exit status 143, as after a
maintenance event), recreates the TPU after a preemption (its processes killed, its disks wiped)
and ends when the trainer has finished; GPU host: `kill PID`, then the same command again; SLURM:
SIGTERM to the batch script (the time limit's signal), whose trap has the trainers save and
requeues the job, which resumes. Each run must end at step --steps with its final evaluation.

Prints one line per step with the elapsed time; the commands' output goes to ROOT/rehearsal.log.
Exit status 0 when every rehearsed launcher passed, 1 with one line `rehearse: FAILED: ...`.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
BUCKET = 'rehearsal-bucket'
TPU_NAME, ZONE = 'rehearsal', 'local-a'
STANDINS = ('gcloud', 'sbatch', 'srun', 'scancel', 'scontrol')


class Failed(Exception):
  """The rehearsal failed; the message is its one line."""


# --- The stand-ins (this file, run as `rehearse.py standin NAME ARGS...`) ------------------------

def _cloud() -> pathlib.Path:
  return pathlib.Path(os.environ['REHEARSAL_CLOUD'])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(('127.0.0.1', port))
    except OSError:
      return False
  return True


def _clean_path() -> str:
  """PATH without virtual environments: a worker starts from the system's Python."""
  keep = [p for p in os.environ.get('PATH', '').split(os.pathsep)
          if p and not (pathlib.Path(p).parent / 'pyvenv.cfg').exists()]
  return os.pathsep.join([str(_cloud() / 'bin'), *keep])


def _base_env(home: pathlib.Path) -> dict[str, str]:
  """A fresh login's environment: its own home, the system PATH, the package caches."""
  env = {'HOME': str(home), 'PATH': _clean_path(), 'LANG': 'C.UTF-8',
         'REHEARSAL_CLOUD': str(_cloud()), 'REHEARSAL_OWNER': str(home)}
  # This machine's network settings (its proxy, its certificate authorities) and package
  # indexes and caches, which a real worker would have from its image.
  for name, value in os.environ.items():
    if name in ('USER', 'LOGNAME', 'TMPDIR', 'TERM') or re.search(
        r'^(PIP|UV)_|_proxy$|_PROXY$|^SSL_CERT|CA_BUNDLE$', name):
      env[name] = value
  return env


def _to_local(text: str) -> str:
  return text.replace(f'gs://{BUCKET}', str(_cloud() / 'bucket'))


def _owned(owner: str, variable: str) -> list[int]:
  """Pids of the processes whose environment holds variable=owner (this one excepted)."""
  me, pids = os.getpid(), []
  for proc in pathlib.Path('/proc').iterdir():
    if not proc.name.isdigit() or int(proc.name) == me:
      continue
    try:
      environ = (proc / 'environ').read_bytes().split(b'\0')
    except OSError:
      continue
    if f'{variable}={owner}'.encode() in environ and _alive(int(proc.name)):
      pids.append(int(proc.name))
  return pids


def _kill_owned(owner: str, variable: str = 'REHEARSAL_OWNER') -> None:
  """SIGKILLs the processes started for `owner` (a worker's home; with REHEARSAL_CLOUD, every
  process of one rehearsal), found by the variable their environment holds, until none is left."""
  deadline = time.monotonic() + 30
  while (pids := _owned(owner, variable)) and time.monotonic() < deadline:
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    time.sleep(0.2)


def _remove(folder: str | os.PathLike) -> None:
  """Removes a killed worker's folder, retrying while its processes' last writes land."""
  for _ in range(20):
    shutil.rmtree(folder, ignore_errors=True)
    if not os.path.exists(folder):
      return
    time.sleep(0.5)
  raise OSError(f'cannot remove {folder}')


def _tpu_file(name: str) -> pathlib.Path:
  return _cloud() / 'tpu' / f'{name}.json'


def _flag(args: list[str], name: str) -> str | None:
  for a in args:
    if a.startswith(f'{name}='):
      return a.split('=', 1)[1]
  return None


def _workers(accelerator: str) -> int:
  """Hosts of a slice: v4-N has N/2 chips, 4 per host; v5e/v6e-N has N chips, 8 per host (v5e/v6e
  slices of 8 or fewer have one host)."""
  kind, size = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator).groups()
  chips = int(size) // 2 if kind in ('v2', 'v3', 'v4', 'v5p') else int(size)
  return max(1, chips // (4 if kind in ('v2', 'v3', 'v4', 'v5p') else 8))


def gcloud(args: list[str]) -> int:
  if args[:1] == ['storage'] and args[1:2] == ['rsync']:
    src, dest = [pathlib.Path(_to_local(a)) for a in args if not a.startswith('-')][-2:]
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return 0
  if args[:3] != ['compute', 'tpus', 'tpu-vm']:
    print(f'gcloud (rehearsal stand-in): not stood in for: {" ".join(args)}', file=sys.stderr)
    return 2
  command, rest = args[3], args[4:]
  name = next(a for a in rest if not a.startswith('-') and ':' not in a) if command != 'scp' \
      else rest[1].split(':', 1)[0]
  path = _tpu_file(name)
  tpu = json.loads(path.read_text()) if path.exists() else None
  if command == 'create':
    if tpu:
      print(f'ERROR: {name} already exists', file=sys.stderr)
      return 1
    workers = _workers(_flag(rest, '--accelerator-type'))
    homes = [_cloud() / 'tpu' / name / f'worker{i}' for i in range(workers)]
    for home in homes:
      home.mkdir(parents=True)
    path.write_text(json.dumps({'state': 'READY', 'homes': [str(h) for h in homes],
                                'port': _free_port(), 'accelerator': _flag(rest,
                                                                           '--accelerator-type')}))
    return 0
  if tpu is None:
    print(f'ERROR: (gcloud.compute.tpus.tpu-vm.{command}) NOT_FOUND: {name}', file=sys.stderr)
    return 1
  if command == 'describe':
    fields = {'state': tpu['state'], 'acceleratorType': tpu['accelerator'], 'health': 'HEALTHY'}
    wanted = re.fullmatch(r'value\((.*)\)', _flag(rest, '--format') or 'value(state)').group(1)
    print('\t'.join(fields[f] for f in wanted.split(',')))
    return 0
  if command == 'delete':
    for home in tpu['homes']:
      _kill_owned(home)
    _remove(_cloud() / 'tpu' / name)
    path.unlink()
    return 0
  if tpu['state'] != 'READY':
    print(f'ERROR: {name} is {tpu["state"]}', file=sys.stderr)
    return 255
  worker = _flag(rest, '--worker') or '0'
  indices = range(len(tpu['homes'])) if worker == 'all' else [int(worker)]
  if command == 'scp':
    src, dest = rest[0], rest[1].split(':', 1)[1]
    for i in indices:
      shutil.copy(src, pathlib.Path(tpu['homes'][i]) / dest)
    return 0
  if command == 'ssh':
    remote = _to_local(_flag(rest, '--command')).replace("'jax[tpu]'", 'jax')
    status = 0
    for i in indices:
      home = pathlib.Path(tpu['homes'][i])
      env = {**_base_env(home), 'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{tpu["port"]}',
             'OMPI_MCA_orte_hnp_uri': f'0.0;tcp://127.0.0.1:{tpu["port"]}',
             'OMPI_COMM_WORLD_SIZE': str(len(tpu['homes'])), 'OMPI_COMM_WORLD_RANK': str(i),
             'OMPI_COMM_WORLD_LOCAL_RANK': '0'}
      rc = subprocess.run(['sh', '-c', remote], cwd=home, env=env).returncode
      status = status or rc
    return status
  print(f'gcloud (rehearsal stand-in): not stood in for: tpu-vm {command}', file=sys.stderr)
  return 2


def _job_dir(job: str) -> pathlib.Path:
  return _cloud() / 'slurm' / job


def sbatch(args: list[str]) -> int:
  script = pathlib.Path(args[-1])
  options = dict(re.findall(r'^#SBATCH (--[a-z-]+)=(\S+)', script.read_text(), re.M))
  while True:  # JAX's SLURM support derives the coordinator's port from the job id.
    job = str(int.from_bytes(os.urandom(2), 'big') + 100_000)
    if _port_is_free(int(job) % 4096 + 65536 - 4096) and not _job_dir(job).exists():
      break
  folder = _job_dir(job)
  folder.mkdir(parents=True)
  tasks = int(options.get('--nodes', 1)) * int(options.get('--ntasks-per-node', 1))
  (folder / 'job.json').write_text(json.dumps({
      'script': str(script), 'tasks': tasks, 'name': options.get('--job-name', 'job'),
      'output': options.get('--output', 'slurm-%j.out'), 'chdir': options.get('--chdir',
                                                                               os.getcwd()),
      'nodes': options.get('--nodes', '1'), 'submit_dir': os.getcwd()}))
  subprocess.Popen([sys.executable, __file__, 'standin', 'slurm-job', job], start_new_session=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=os.environ)
  print(f'Submitted batch job {job}')
  return 0


def slurm_job(job: str) -> int:
  """Runs a job's batch script until it ends without a requeue; records its exit status."""
  folder = _job_dir(job)
  spec = json.loads((folder / 'job.json').read_text())
  output = pathlib.Path(spec['chdir'], spec['output'].replace('%x', spec['name']).replace(
      '%j', job))
  restarts = 0
  while True:
    (folder / 'requeue').unlink(missing_ok=True)
    home = folder / f'batch-home-{restarts}'
    home.mkdir()
    env = {**_base_env(home), 'SLURM_JOB_ID': job, 'SLURM_JOB_NAME': spec['name'],
           'SLURM_NTASKS': str(spec['tasks']), 'SLURM_JOB_NUM_NODES': spec['nodes'],
           'SLURM_NNODES': spec['nodes'], 'SLURM_SUBMIT_DIR': spec['submit_dir'],
           'SLURM_RESTART_COUNT': str(restarts), 'SLURM_JOB_NODELIST': 'localhost'}
    with open(output, 'a') as out:
      batch = subprocess.Popen(['bash', spec['script']], cwd=spec['chdir'], env=env, stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
      (folder / 'batch.pid').write_text(str(batch.pid))
      status = batch.wait()
    if not (folder / 'requeue').exists():
      (folder / 'exit').write_text(str(status if status >= 0 else 128 - status))
      return 0
    restarts += 1


def srun(args: list[str]) -> int:
  i = next(i for i, a in enumerate(args) if not a.startswith('-'))
  command = args[i:]
  job = os.environ['SLURM_JOB_ID']
  folder = _job_dir(job)
  ntasks = int(os.environ['SLURM_NTASKS'])
  procs = []
  for rank in range(ntasks):
    home = folder / f'task-home-{os.environ["SLURM_RESTART_COUNT"]}-{rank}'
    home.mkdir()
    env = {**os.environ, 'HOME': str(home), 'REHEARSAL_OWNER': str(home),
           'SLURM_PROCID': str(rank), 'SLURM_LOCALID': str(rank), 'SLURM_NODEID': '0',
           'SLURM_STEP_ID': '0', 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_STEP_NUM_NODES': '1',
           'SLURM_STEP_NUM_TASKS': str(ntasks)}
    procs.append(subprocess.Popen(command, env=env))
  (folder / 'tasks').write_text(' '.join(str(p.pid) for p in procs))
  kill_on_bad_exit = '--kill-on-bad-exit=1' in args
  statuses = {}
  while len(statuses) < len(procs):
    for p in procs:
      if p.pid not in statuses and p.poll() is not None:
        statuses[p.pid] = p.returncode if p.returncode >= 0 else 128 - p.returncode
        if statuses[p.pid] and kill_on_bad_exit:
          for q in procs:
            if q.poll() is None:
              q.kill()
    time.sleep(0.1)
  return max(statuses.values())


def scancel(args: list[str]) -> int:
  sig = _flag(args, '--signal') or 'KILL'
  job = [a for a in args if not a.startswith('-')][-1]
  tasks = _job_dir(job) / 'tasks'
  for pid in (tasks.read_text().split() if tasks.exists() else []):
    try:
      os.kill(int(pid), getattr(signal, f'SIG{sig}'))
    except ProcessLookupError:
      pass
  return 0


def scontrol(args: list[str]) -> int:
  if args[:1] == ['requeue']:
    (_job_dir(args[1]) / 'requeue').write_text('')
    return 0
  print(f'scontrol (rehearsal stand-in): not stood in for: {" ".join(args)}', file=sys.stderr)
  return 2


def standin(argv: list[str]) -> int:
  name, args = argv[0], argv[1:]
  if name == 'slurm-job':
    return slurm_job(args[0])
  return {'gcloud': gcloud, 'sbatch': sbatch, 'srun': srun, 'scancel': scancel,
          'scontrol': scontrol}[name](args)


# --- The rehearsal ---------------------------------------------------------------------------------

class Rehearsal:
  """One rehearsal under `root`; each launcher's part is a method."""

  def __init__(self, root: pathlib.Path, repo: pathlib.Path, ref: str, steps: int):
    self.root, self.steps, self.start = root, steps, time.monotonic()
    self.cloud = root / 'cloud'
    self.log = open(root / 'rehearsal.log', 'a')
    (self.cloud / 'bin').mkdir(parents=True)
    (self.cloud / 'bucket').mkdir()
    for name in STANDINS:
      stub = self.cloud / 'bin' / name
      stub.write_text(f'#!/bin/sh\nexec {sys.executable} {pathlib.Path(__file__).resolve()} '
                      f'standin {name} "$@"\n')
      stub.chmod(0o755)
    self.checkout = root / 'laptop' / 'ssen_jax'  # The user's clone, from which launchers run.
    self.git(['clone', '--quiet', str(repo), str(self.checkout)])
    self.git(['-C', str(self.checkout), 'checkout', '--quiet', ref])
    self.say(f'cloned {repo} at {ref} '
             f'({self.git(["-C", str(self.checkout), "rev-parse", "--short", "HEAD"]).strip()})')
    cache = pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache'))
    self.env = {**os.environ, 'REHEARSAL_CLOUD': str(self.cloud),
                'PATH': f'{self.cloud / "bin"}{os.pathsep}{os.environ["PATH"]}',
                'UV_CACHE_DIR': os.environ.get('UV_CACHE_DIR', str(cache / 'uv')),
                'PIP_CACHE_DIR': os.environ.get('PIP_CACHE_DIR', str(cache / 'pip'))}
    self.env.pop('VIRTUAL_ENV', None)
    self.compile_cache = root / 'jax_cache'  # Passed with each launcher's --env.

  def git(self, args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout

  def say(self, text: str) -> None:
    line = f'[{time.monotonic() - self.start:6.0f}s] {text}'
    print(line, flush=True)
    self.log.write(line + '\n')
    self.log.flush()

  def launch(self, part: str, script: str, *args: str, cwd=None, env=None, ok=(0,),
             timeout=900) -> subprocess.CompletedProcess:
    """Runs one launcher command of `part`'s checkout, logs it, checks its exit status."""
    cwd = cwd or self.checkout
    self.say(f'{part}: launch/{script} {" ".join(args)}'[:160])
    self.log.write(f'$ (cd {cwd}) launch/{script} {" ".join(args)}\n')
    self.log.flush()
    proc = subprocess.run(['bash', f'launch/{script}', *args], cwd=cwd, env=env or self.env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    self.log.write(proc.stdout)
    self.log.flush()
    if proc.returncode not in ok:
      last = proc.stdout.strip().splitlines()[-1:] or ['(no output)']
      raise Failed(f'{part}: launch/{script} {args[0] if args else ""} exited {proc.returncode}: '
                   f'{last[0]}')
    return proc

  def trainer_flags(self, data_dir: str) -> list[str]:
    overrides = {
        'data.tfds_name': 'ssen_demo', 'data.tfds_data_dir': data_dir,
        'data.eval_dir': f'{data_dir}/manual/ssen_demo_v3/eval', 'data.eval_max_images': 2,
        'num_train_steps': self.steps, 'eval_every_steps': self.steps,
        'checkpoint_every_steps': 5, 'log_every_steps': 1, 'num_image_summaries': 0}
    return ['--config', 'configs/refsr.py:tiny',
            *(f'--extra=--config.{k}={v}' for k, v in overrides.items()),
            '--env', f'JAX_COMPILATION_CACHE_DIR={self.compile_cache}']

  def prepare_data(self) -> pathlib.Path:
    """The demo data as a TFDS dataset, built once, in the bucket."""
    data = self.cloud / 'bucket' / 'tfds'
    if not data.exists():
      self.say('data: python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_demo '
               '(into the bucket)')
      proc = subprocess.run(
          [sys.executable, '-m', 'ssen_jax.data_prep.tfds_build', '--tfds_name', 'ssen_demo',
           '--tfds_data_dir', str(data)], cwd=self.checkout, capture_output=True, text=True,
          env={**os.environ, 'PYTHONPATH': str(self.checkout)})
      self.log.write(proc.stdout + proc.stderr)
      if proc.returncode:
        raise Failed(f'data: tfds_build exited {proc.returncode}: '
                     f'{(proc.stderr.strip().splitlines() or ["?"])[-1]}')
    return data

  # Waiting on logs ---------------------------------------------------------------------------

  def wait_for(self, part: str, log: pathlib.Path, pattern: str, alive, what: str,
               timeout: float = 900, since: int = 0, accept=lambda m: True) -> re.Match:
    """Waits for a match of `pattern` that `accept`s in `log` (after byte `since`) while
    `alive()` holds."""
    def find():
      text = log.read_text(errors='replace')[since:] if log.exists() else ''
      return next((m for m in re.finditer(pattern, text, re.M) if accept(m)), None), text

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      m, text = find()
      if m:
        return m
      if not alive():
        time.sleep(1)  # The log's last lines may still be on their way.
        m, text = find()
        if m:
          return m
        raise Failed(f'{part}: the trainer ended before {what}: {_last_error(text)}')
      time.sleep(0.5)
    raise Failed(f'{part}: no {what} within {timeout:.0f} s (log {log})')

  def wait_replaced(self, part: str, log: pathlib.Path, size: int, alive,
                    timeout: float = 600) -> None:
    """Waits until `log` (`size` bytes now) is deleted or replaced by a shorter file while
    `alive()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if not log.exists() or log.stat().st_size < size:
        return
      if not alive():
        raise Failed(f'{part}: the watch ended before the preempted TPU was deleted')
      time.sleep(0.2)
    raise Failed(f'{part}: the preempted TPU was not deleted within {timeout:.0f} s (log {log})')

  def check_finished(self, part: str, workdir: pathlib.Path, log_text: str) -> None:
    """The run ended at --steps with a complete checkpoint and its final evaluation."""
    ckpt = workdir / 'checkpoints'
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() \
        else []
    if not steps or steps[-1] != self.steps:
      raise Failed(f'{part}: the workdir\'s newest checkpoint is {steps[-1:] or "none"}, not '
                   f'step {self.steps}')
    if not re.search(rf'Step {self.steps} eval: ', log_text):
      raise Failed(f'{part}: no final evaluation (Step {self.steps} eval:) in the log')
    self.say(f'{part}: PASSED: trained to step {self.steps}, checkpoint complete, evaluated')

  # TPU VM ------------------------------------------------------------------------------------

  def tpu(self) -> None:
    part = 'tpu'
    tpu = ['--name', TPU_NAME, '--zone', ZONE]
    acc = ['--accelerator', 'v4-16', '--spot']
    data = self.prepare_data()
    stage = ['--stage', f'gs://{BUCKET}/tfds=data/tfds']
    workdir = f'gs://{BUCKET}/runs/tpu'
    local_workdir = self.cloud / 'bucket' / 'runs' / 'tpu'
    run = ['--workdir', workdir, *self.trainer_flags('data/tfds')]
    assert data.exists()
    self.launch(part, 'tpu_vm.sh', 'create', *tpu, *acc)
    self.launch(part, 'tpu_vm.sh', 'install', *tpu, *stage)
    self.launch(part, 'tpu_vm.sh', 'run', *tpu, *acc, *run)
    home = lambda i: self.cloud / 'tpu' / TPU_NAME / f'worker{i}' / 'ssen_jax'
    logs = [home(i) / 'logs' / 'train.log' for i in range(2)]
    pids = lambda: [_read_pid(home(i) / 'logs' / 'train.pid') for i in range(2)]
    alive = lambda: all(_alive(p) for p in pids())
    self.wait_for(part, logs[0], r'^.*\[3\] train/', alive, 'training step 3')
    self.say(f'{part}: both workers train ({_grep(logs[0], "JAX process")})')
    status = self.launch(part, 'tpu_vm.sh', 'status', *tpu).stdout
    if len(re.findall(r'^\S+: training runs', status, re.M)) != 2:
      raise Failed(f'{part}: status does not show training on both workers')
    self.launch(part, 'tpu_vm.sh', 'stop', *tpu)
    self.wait_until_dead(part, pids())
    saved = [self.wait_for(part, log, r'Preemption: step (\d+) saved', lambda: True,
                           'the save after stop', timeout=30).group(1) for log in logs]
    self.say(f'{part}: stopped; both workers saved step {saved}')

    sizes = [log.stat().st_size for log in logs]
    watch_cmd = ['bash', 'launch/tpu_vm.sh', 'watch', *tpu, *acc, *stage, *run, '--interval', '2']
    self.say(f'{part}: launch/tpu_vm.sh watch ... (in the background)')
    with open(self.root / 'tpu_watch.log', 'w') as watch_log:
      watch = subprocess.Popen(watch_cmd, cwd=self.checkout, env=self.env, stdout=watch_log,
                               stderr=subprocess.STDOUT)
    try:
      watching = lambda: watch.poll() is None
      m = self.wait_for(part, logs[0], r'Resumed from step (\d+)', watching,
                        'the watch\'s rerun resuming', since=sizes[0])
      if m.group(1) != saved[0]:
        raise Failed(f'{part}: resumed from step {m.group(1)}, not {saved[0]}')
      start = int(m.group(1))
      self.wait_for(part, logs[0], rf'^.*\[{start + 3}\] train/', watching,
                    f'training step {start + 3}', since=sizes[0])
      self.say(f'{part}: resumed from step {start}; SIGTERM to the trainers alone (a maintenance '
               'event): they save and exit 143, the watch must rerun them')
      sizes = [log.stat().st_size for log in logs]
      for pid in pids():
        os.kill(pid, signal.SIGTERM)
      m = self.wait_for(part, logs[0], r'Resumed from step (\d+)', watching,
                        'the watch\'s rerun after exit 143', since=sizes[0])
      start = int(m.group(1))
      self.wait_for(part, logs[0], rf'^.*\[{start + 3}\] train/', watching,
                    f'training step {start + 3}', since=sizes[0])
      self.say(f'{part}: rerun resumed from step {start}; preempting the TPU (state PREEMPTED, '
               'processes killed): the watch must recreate it (new, empty disks), reinstall and '
               'resume')
      state = _tpu_file(TPU_NAME)
      tpu_json = json.loads(state.read_text())
      # As a preemption: no more ssh, every process gone; the watch's delete and create then give
      # the workers new, empty homes (the stand-in's create makes them).
      state.write_text(json.dumps({**tpu_json, 'state': 'PREEMPTED'}))
      for h in tpu_json['homes']:
        _kill_owned(h)
      # The old log lasts until the watch deletes the TPU (it already says 'Resumed from step
      # START'): wait for it to go (or be replaced by a shorter one), then for the new trainer's
      # resume from `start` (the killed trainers saved nothing).
      self.wait_replaced(part, logs[0], logs[0].stat().st_size, watching)
      m = self.wait_for(part, logs[0], r'Resumed from step (\d+)', watching,
                        'the recreated TPU resuming')
      if int(m.group(1)) != start:
        raise Failed(f'{part}: the recreated TPU resumed from step {m.group(1)}, not {start}')
      self.say(f'{part}: recreated TPU resumed from step {m.group(1)}; waiting for the end')
      rc = watch.wait(timeout=900)
    finally:
      if watch.poll() is None:
        watch.kill()
    watch_text = (self.root / 'tpu_watch.log').read_text()
    self.log.write(watch_text)
    if rc != 0 or 'training has ended' not in watch_text:
      raise Failed(f'{part}: watch exited {rc}: {watch_text.strip().splitlines()[-1]}')
    if 'stopped by SIGTERM (exit status 143) and saved' not in watch_text:
      raise Failed(f'{part}: the watch did not report the trainers\' exit 143 and their save')
    self.say(f'{part}: watch: {watch_text.strip().splitlines()[-1]}')
    tail = self.launch(part, 'tpu_vm.sh', 'logs', *tpu, '--lines', '400').stdout
    self.check_finished(part, local_workdir, tail)
    self.launch(part, 'tpu_vm.sh', 'delete', *tpu)

  def wait_until_dead(self, part: str, pids: list[int], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
      if time.monotonic() > deadline:
        raise Failed(f'{part}: the trainers still run {timeout:.0f} s after SIGTERM')
      time.sleep(0.5)

  # One GPU host ------------------------------------------------------------------------------

  def gpu(self) -> None:
    part = 'gpu'
    host = self.root / 'gpu_host'
    checkout = host / 'ssen_jax'
    self.git(['clone', '--quiet', str(self.checkout), str(checkout)])
    (host / 'home').mkdir()
    env = {**self.env, 'HOME': str(host / 'home'), 'SSEN_JAX_REQUIREMENT': 'jax'}
    data = self.prepare_data()
    self.launch(part, 'gpu_host.sh', '--install', cwd=checkout, env=env)
    workdir, log = host / 'runs' / 'tiny', host / 'train.log'
    run = ['--workdir', str(workdir), *self.trainer_flags(str(data))]
    out = self.launch(part, 'gpu_host.sh', *run, '--log', str(log), cwd=checkout, env=env).stdout
    pid = int(re.search(r'training started \(pid (\d+)\)', out).group(1))
    self.wait_for(part, log, r'^.*\[3\] train/', lambda: _alive(pid), 'training step 3')
    self.say(f'{part}: kill {pid} (as launch/README.md says)')
    os.kill(pid, signal.SIGTERM)
    self.wait_until_dead(part, [pid])
    saved = self.wait_for(part, log, r'Preemption: step (\d+) saved', lambda: True,
                          'the save after kill', timeout=30).group(1)
    self.say(f'{part}: stopped after saving step {saved}; the same command again, in the '
             'foreground')
    proc = self.launch(part, 'gpu_host.sh', *run, cwd=checkout, env=env)
    m = re.search(r'Resumed from step (\d+)', proc.stdout)
    if not m or m.group(1) != saved:
      raise Failed(f'{part}: the rerun did not resume from step {saved}')
    self.check_finished(part, workdir, proc.stdout)

  # SLURM -------------------------------------------------------------------------------------

  def slurm(self) -> None:
    part = 'slurm'
    cluster = self.root / 'slurm_cluster'
    checkout = cluster / 'shared' / 'ssen_jax'  # On the filesystem every node sees.
    self.git(['clone', '--quiet', str(self.checkout), str(checkout)])
    (cluster / 'login_home').mkdir()
    env = {**self.env, 'HOME': str(cluster / 'login_home'), 'SSEN_JAX_REQUIREMENT': 'jax'}
    data = self.prepare_data()
    self.launch(part, 'slurm_submit.sh', '--install', cwd=checkout, env=env)
    workdir = cluster / 'shared' / 'runs' / 'tiny'
    out = self.launch(part, 'slurm_submit.sh', '--nodes', '1', '--gpus_per_node', '2', '--time',
                      '30', '--workdir', str(workdir), *self.trainer_flags(str(data)),
                      cwd=checkout, env=env).stdout
    job = re.search(r'Submitted batch job (\d+)', out).group(1)
    folder = self.cloud / 'slurm' / job
    log = checkout / 'launch' / 'logs' / f'ssen-{job}.out'
    running = lambda: not (folder / 'exit').exists()
    self.wait_for(part, log, r'^.*\[3\] train/', running, 'training step 3')
    batch = int((folder / 'batch.pid').read_text())
    self.say(f'{part}: job {job} trains with 2 tasks; SIGTERM to its batch script (the time '
             'limit\'s --signal=B:TERM)')
    os.kill(batch, signal.SIGTERM)
    m = self.wait_for(part, log, r'trainers ended \(srun exit status (\d+)\); (.*)$', running,
                      'the trap\'s report')
    self.say(f'{part}: trap: srun exit status {m.group(1)}; {m.group(2)}')
    if 'complete' not in m.group(2) or 'NOT' in m.group(2):
      raise Failed(f'{part}: the save after SIGTERM is not complete: {m.group(2)}')
    m = self.wait_for(part, log, r'Resumed from step (\d+)', running, 'the requeued job resuming')
    self.say(f'{part}: requeued job resumed from step {m.group(1)}; waiting for the end')
    deadline = time.monotonic() + 900
    while running():
      if time.monotonic() > deadline:
        raise Failed(f'{part}: job {job} still runs after 900 s')
      time.sleep(1)
    status = int((folder / 'exit').read_text())
    text = log.read_text(errors='replace')
    self.log.write(text)
    if status != 0 or 'training finished' not in text:
      raise Failed(f'{part}: job {job} ended with status {status}: {_last_error(text)}')
    self.check_finished(part, workdir, text)


def _read_pid(path: pathlib.Path) -> int:
  try:
    return int(path.read_text().strip())
  except (OSError, ValueError):
    return -1


def _alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    state = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
  except OSError:
    return False
  return state != 'Z'


def _grep(log: pathlib.Path, word: str) -> str:
  return next((l.split('] ', 1)[-1] for l in log.read_text().splitlines() if word in l), '?')


def _last_error(text: str) -> str:
  """The line that says why a trainer stopped: an exception, an error line, else the last line."""
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  for line in reversed(lines):
    if re.match(r'(\w+\.)*\w*(Error|Exception)\b|error:', line):
      return line
  return lines[-1] if lines else '(empty log)'


def main() -> int:
  if sys.argv[1:2] == ['standin']:
    return standin(sys.argv[2:])
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--only', default='tpu,gpu,slurm',
                      help='comma-separated launchers to rehearse: tpu, gpu, slurm (default all)')
  parser.add_argument('--ref', default='HEAD', help='git ref of the repository to rehearse')
  parser.add_argument('--repo', default=str(HERE.parent), help='repository to clone')
  parser.add_argument('--root', help='empty folder for the rehearsal (default: a new temporary '
                      'one, removed after a pass)')
  parser.add_argument('--steps', type=int, default=40, help='training steps of each run')
  args = parser.parse_args()
  parts = args.only.split(',')
  for p in parts:
    if p not in ('tpu', 'gpu', 'slurm'):
      print(f'rehearse: error: --only takes tpu, gpu, slurm; got {p!r}', file=sys.stderr)
      return 2
  if args.root:
    root = pathlib.Path(args.root).resolve()
    if root.exists() and any(root.iterdir()):
      print(f'rehearse: error: --root {root} is not empty', file=sys.stderr)
      return 2
    root.mkdir(parents=True, exist_ok=True)
  else:
    root = pathlib.Path(tempfile.mkdtemp(prefix='ssen_rehearsal-'))
  os.environ['REHEARSAL_CLOUD'] = str(root / 'cloud')
  rehearsal = None
  try:
    rehearsal = Rehearsal(root, pathlib.Path(args.repo), args.ref, args.steps)
    for part in parts:
      getattr(rehearsal, part)()
  except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
    line = str(e) if isinstance(e, Failed) else f'{e}'
    if rehearsal:
      rehearsal.say(f'FAILED: {line}')
    print(f'rehearse: FAILED: {line} (log: {root / "rehearsal.log"})', file=sys.stderr)
    return 1
  finally:  # Whatever still runs (after a failure): trainers, jobs, a watch.
    _kill_owned(str(root / 'cloud'), 'REHEARSAL_CLOUD')
  rehearsal.say(f'PASSED: {", ".join(parts)} in {time.monotonic() - rehearsal.start:.0f} s')
  if not args.root:
    shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
