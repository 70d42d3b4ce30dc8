"""The commands' shared command line (`ssen_jax.core.cli`): a --help that fits a screen and names
the exit statuses, for every command, and old flag spellings that keep working with one warning
line each (docs/usage.md, "Flag names").

The helper is tested on a small program of its own (`python -c`); the commands' old spellings are
tested beside each command (test_evaluate, test_tfds, test_convert_torch, test_infer_api).
"""
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib

import pytest
from PIL import Image

from conftest import REPO_ROOT
from test_signals import _documented_statuses

MAX_HELP_LINES = 40
SCRIPTS = tomllib.loads((pathlib.Path(REPO_ROOT) / 'pyproject.toml').read_text())[
    'project']['scripts']
MODULE_TO_SCRIPT = {value.split(':')[0]: name for name, value in SCRIPTS.items()}
# Commands whose modules belong to work in progress elsewhere and do not run through `cli.run`
# yet: their --help is absl's (exit status 1, the whole docstring). Remove them once they do.
PENDING = {}

PROGRAM = textwrap.dedent("""\
    from absl import flags
    from ssen_jax.core import cli
    flags.DEFINE_string('out', None, 'Output file.')
    flags.DEFINE_enum('layout', 'folder', ['folder', 'cufed5'], 'How the folder is arranged.')
    cli.define_checkpoint_flag()
    cli.deprecated_alias('output_json', 'out')
    cli.deprecated_alias('dataset', 'layout')
    cli.deprecated_alias('checkpoint_step', 'checkpoint', parser=flags.IntegerParser())
    flags.mark_flag_as_required('out')

    def main(argv):
      f = flags.FLAGS
      print(f.out, f.layout, f.checkpoint, *cli.checkpoint_choice(f.checkpoint), argv[1:])

    cli.run(main, 'A test command.\\n\\n  python -c PROGRAM --out FILE')
    """)


def _program(*args):
  return subprocess.run([sys.executable, '-c', PROGRAM, *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)


def test_new_and_old_spellings_mean_the_same():
  new = _program('--out', 'r.json', '--layout', 'cufed5', '--checkpoint', '5')
  old = _program('--output_json', 'r.json', '--dataset=cufed5', '--checkpoint_step', '5')
  assert new.returncode == old.returncode == 0, (new.stderr, old.stderr)
  assert new.stdout == old.stdout == "r.json cufed5 5 5 False []\n"
  assert new.stderr == ''
  assert old.stderr.splitlines() == [  # One line per old spelling, in definition order.
      'warning: --output_json is deprecated; use --out=r.json',
      'warning: --dataset is deprecated; use --layout=cufed5',
      'warning: --checkpoint_step is deprecated; use --checkpoint=5']
  twice = _program('--output_json', 'a b.json', '--output_json', 'c.json')
  assert twice.stdout.startswith('c.json ') and twice.stderr.splitlines() == [
      "warning: --output_json is deprecated; use --out='a b.json'"]


def test_checkpoint_best_latest_and_the_old_best_flag():
  assert _program('--out=x', '--checkpoint', 'best').stdout == 'x folder best None True []\n'
  assert _program('--out=x', '--checkpoint=latest').stdout == 'x folder latest None False []\n'
  assert _program('--out=x', '--checkpoint=a.pth').stdout == 'x folder a.pth a.pth False []\n'
  old = _program('--out=x', '--best')
  assert old.stdout == 'x folder best None True []\n'
  assert old.stderr.splitlines() == ['warning: --best is deprecated; use --checkpoint=best']
  off = _program('--out=x', '--nobest')
  assert off.stdout == 'x folder None None False []\n'
  assert off.stderr.splitlines() == ['warning: --nobest is deprecated; leave it out']


def test_old_spellings_are_checked_like_the_new_ones():
  both = _program('--out', 'a', '--output_json', 'b')
  assert both.returncode == 1 and both.stdout == ''
  assert both.stderr.splitlines() == [
      'error: give --out, not both it and the deprecated --output_json']
  for args, words in [(['--out=a', '--dataset', 'bogus'], 'one of <folder|cufed5>'),
                      (['--out=a', '--checkpoint_step', 'x'], 'invalid literal for int()'),
                      (['--layout=folder'], '--out must have a value')]:
    proc = _program(*args)
    assert proc.returncode == 1 and proc.stdout == '', (args, proc)
    assert words in proc.stderr and 'FATAL Flags parsing error' in proc.stderr, (args, proc)
  # An old spelling satisfies the new flag's requirement.
  assert _program('--output_json=a').returncode == 0


def test_help_lists_own_flags_and_the_old_spellings_apart():
  helps = [_program(arg) for arg in ('--help', '-h', '--helpshort', '-?')]
  assert all(h.returncode == 0 and h.stderr == '' for h in helps), helps
  assert len({h.stdout for h in helps}) == 1
  text = helps[0].stdout
  assert text.startswith('A test command.\n\n  python -c PROGRAM --out FILE\n\nflags:\n  --out: ')
  own = re.findall(r'^  --(?:\[no\])?(\w+):', text, re.M)
  assert own == ['out', 'layout', 'checkpoint'], text
  assert '(default: folder)' in text and 'exit status: 0 done; 1 ' in text
  assert ('deprecated, accepted until the next release: --best (now --checkpoint=best), '
          '--output_json (now --out), --dataset (now --layout), --checkpoint_step (now '
          '--checkpoint)') in ' '.join(line.strip() for line in text.splitlines())
  full = _program('--helpfull')  # absl's own: every flag, the old spellings too.
  assert '--output_json' in full.stdout and 'absl.logging' in full.stdout
  # After `--` an argument is no flag: the command runs.
  assert _program('--out=x', '--', '--help').stdout == "x folder None None False ['--help']\n"


def _commands() -> list[str]:
  """Every command module: the console scripts' and those run with `python -m` only."""
  from test_signals import _commands as command_names  # pylint: disable=g-import-not-at-top
  return sorted(f'ssen_jax.{name}' for name in command_names())


@pytest.mark.parametrize('module', [
    pytest.param(m, marks=pytest.mark.xfail(reason=PENDING[m], strict=False))
    if m in PENDING else m for m in _commands()])
def test_every_commands_help_fits_a_screen_and_names_its_exit_statuses(module):
  script = MODULE_TO_SCRIPT.get(module)
  if script:  # The console script: what a user installing the package runs.
    path = shutil.which(script, path=str(pathlib.Path(sys.executable).parent))
    assert path, f'{script} is not installed beside this Python: pip install -e .'
    command = [path, '--help']
  else:
    command = [sys.executable, '-m', module, '--help']
  proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert len(lines) <= MAX_HELP_LINES, f'{module} --help has {len(lines)} lines'
  assert max(len(line) for line in lines) <= 100, proc.stdout
  assert f'python -m {module} ' in proc.stdout  # Its usage lines.
  flag_lines = [line for line in lines if re.match(r'  --\S+: ', line)]
  assert flag_lines, proc.stdout
  # The exit statuses docs/exit_statuses.md gives this command, in one sentence.
  row = _documented_statuses()[module.removeprefix('ssen_jax.')]
  sentence = ' '.join(proc.stdout[proc.stdout.index('exit status: '):].split())
  for column in ('Finished', 'Error', 'Usage error'):
    assert f'{row[column]} ' in sentence, (column, sentence)
  signal_status = re.match(r'\d+', row['SIGTERM'])
  if signal_status:
    assert f'{signal_status.group(0)} stopped by SIGTERM' in sentence, sentence
  else:
    assert 'SIGTERM kills it' in sentence, sentence


def test_console_script_and_python_m_print_the_same_help():
  runs = [subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
          for command in ([shutil.which('ssen-infer', path=str(pathlib.Path(sys.executable).parent)),
                           '--help'], [sys.executable, '-m', 'ssen_jax.infer', '--help'])]
  assert runs[0].returncode == runs[1].returncode == 0
  assert runs[0].stdout == runs[1].stdout
  assert '--checkpoint: ' in runs[0].stdout  # Defined by core.cli, listed as the command's own.


def test_infer_best_is_checkpoint_best(tmp_path):
  """infer's old --best and the new --checkpoint best choose alike: on a workdir without an
  evaluated checkpoint, both refuse with the same line (the old one after its warning)."""
  from test_infer import assert_error, make_workdir, run_many  # pylint: disable=g-import-not-at-top
  make_workdir(tmp_path / 'wd', 'tiny,no_nonlocal')
  common = ['--workdir', tmp_path / 'wd', '--lr', tmp_path / 'lr.png', '--out', tmp_path / 'o.png']
  Image.new('RGB', (8, 8)).save(tmp_path / 'lr.png')
  new, old = run_many('infer', [common + ['--checkpoint', 'best'], common + ['--best']],
                      parallel=2)
  assert_error(new, 'eval PSNR')
  assert old.returncode == 1 and old.stderr.splitlines() == [
      'warning: --best is deprecated; use --checkpoint=best', new.stderr.strip()], old.stderr
  assert not (tmp_path / 'o.png').exists()
