"""The README's commands work as written.

Every `python -m ssen_jax.X` command of the README and of docs/usage.md (fenced blocks and inline
code) names a module that exists, every flag it passes is one that module defines (`--helpxml` of
the real command), and every `--config.a.b` override names a field of the config it applies to.
The cheap commands run as written: the bicubic protocol check on Set5, the three `infer` commands
and the Python API block, on a tiny random-weight workdir that stands in for the demo's
(/tmp/ssen_demo) and on Set5 crops named as in the README (photo.png, reference.jpg, photos/,
refs/). The README stays short and its relative links resolve.
"""
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, shared_dir
from ssen_jax.core import config as config_lib
from test_infer import make_workdir

README = REPO_ROOT / 'README.md'
USAGE = REPO_ROOT / 'docs' / 'usage.md'
MAX_README_LINES = 160
DEMO_WORKDIR = '/tmp/ssen_demo'  # What the README's inference commands use.
LR_SHAPE = (40, 48)  # (H, W) of the LR crops standing in for photo.png.


# ---------------------------------------------------------------------------------------------
# Reading the Markdown.


def fenced_blocks(text: str) -> list[tuple[str, str]]:
  """[(language, body)] of the fenced code blocks."""
  return re.findall(r'^```(\w*)\n(.*?)^```', text, flags=re.M | re.S)


def shell_lines(text: str) -> list[str]:
  """Shell command lines: the lines of bash blocks (continuations joined) and inline code spans."""
  lines = []
  for language, body in fenced_blocks(text):
    if language in ('bash', 'sh', ''):
      lines += body.replace('\\\n', ' ').splitlines()
  prose = re.sub(r'^```.*?^```', '', text, flags=re.M | re.S)
  lines += [span.replace('\n', ' ') for span in re.findall(r'`([^`]+)`', prose)]
  return lines


def ssen_commands(text: str) -> list[list[str]]:
  """Every `python -m ssen_jax...` command as its tokens (comments and optional brackets dropped)."""
  commands = []
  for line in shell_lines(text):
    try:
      tokens = shlex.split(line, comments=True)
    except ValueError:  # Inline code that is not a command (an unbalanced quote).
      continue
    if tokens[:2] == ['python', '-m'] and len(tokens) > 2 and tokens[2].startswith('ssen_jax'):
      commands.append([t.strip('[]') for t in tokens if t.strip('[]')])
  return commands


def flag_value(tokens: list[str], name: str) -> str | None:
  """The value of `--name V` or `--name=V` in tokens."""
  for i, token in enumerate(tokens):
    if token == f'--{name}' and i + 1 < len(tokens):
      return tokens[i + 1]
    if token.startswith(f'--{name}='):
      return token.split('=', 1)[1]
  return None


def has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return False
    node = node[part]
  return True


@pytest.fixture(scope='module')
def readme() -> str:
  return README.read_text()


@pytest.fixture(scope='module')
def documented_commands(readme) -> list[list[str]]:
  commands = ssen_commands(readme) + ssen_commands(USAGE.read_text())
  assert len(commands) >= 10, commands  # The extraction itself works.
  return commands


# ---------------------------------------------------------------------------------------------
# Flags.


def module_flags(module: str) -> dict[str, str]:
  """{flag name: absl type} of `python -m module`, from its `--helpxml` (the command's own flags,
  defined the way it defines them when run)."""
  result = subprocess.run([sys.executable, '-m', module, '--helpxml'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  # absl's --helpxml exits with status 1 after writing the XML.
  assert '</AllFlags>' in result.stdout, f'python -m {module} --helpxml:\n{result.stderr[-2000:]}'
  root = ElementTree.fromstring(result.stdout[result.stdout.index('<?xml'):])
  return {flag.findtext('name'): flag.findtext('type') for flag in root.iter('flag')}


def test_every_command_module_and_flag_exists(documented_commands):
  modules = sorted({tokens[2] for tokens in documented_commands})
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    defined = dict(zip(modules, pool.map(module_flags, modules)))
  refsr_default = config_lib.load_config(str(REPO_ROOT / 'configs' / 'refsr.py'))
  problems = []
  for tokens in documented_commands:
    module, flags_ = tokens[2], defined[tokens[2]]
    config_spec = flag_value(tokens, 'config')
    config = None
    if config_spec and module == 'ssen_jax.main':
      config = config_lib.load_config(str(REPO_ROOT / config_spec))  # Raises on a bad variant.
    for token in tokens[3:]:
      if not token.startswith('--'):
        continue
      name = token[2:].split('=', 1)[0]
      if name.startswith('config.'):
        if module != 'ssen_jax.main':  # Only the trainer takes a config file with overrides.
          problems.append(f'python -m {module} takes no config overrides ({token})')
        elif not has_field(config if config is not None else refsr_default, name[7:]):
          problems.append(f'{token}: no field {name[7:]} in {config_spec}')
      elif name in flags_:
        continue
      elif name.startswith('no') and flags_.get(name[2:]) == 'bool':
        continue
      else:
        problems.append(f'python -m {module} defines no --{name}')
  assert not problems, '\n'.join(problems)
  # The commands a user runs first are among those checked.
  assert {'ssen_jax.main', 'ssen_jax.infer', 'ssen_jax.evaluate'} <= set(modules)


def test_config_specs_and_overrides_outside_commands(readme):
  """`configs/X.py:variant` anywhere (the experiments table's `...` rows) loads, and every
  `--config.a.b` outside a full command names a field of configs/refsr.py."""
  specs = set(re.findall(r'configs/\w+\.py(?::[\w,]+)?', readme))
  assert 'configs/refsr.py:demo' in specs and 'configs/selfsim.py:rcan' in specs
  for spec in specs:
    config_lib.load_config(str(REPO_ROOT / spec))
  refsr = config_lib.load_config(str(REPO_ROOT / 'configs' / 'refsr.py'))
  in_commands = {t for tokens in ssen_commands(readme) for t in tokens}
  loose = [m.group(0) for m in re.finditer(r'--config\.[\w.]+', readme)
           if not any(t.startswith(m.group(0)) for t in in_commands)]
  assert loose  # The overrides in the prose are checked too.
  for override in loose:
    assert has_field(refsr, override[len('--config.'):]), override


def test_install_extras_and_test_command(readme):
  extras = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project'][
      'optional-dependencies']
  for extra in re.findall(r"pip install -e '\.\[(\w+)\]'", readme):
    assert extra in extras, extra
  ci_command = next(line.strip() for line in (REPO_ROOT / '.ci' / 'run').read_text().splitlines()
                    if line.strip().startswith('python -m pytest'))
  readme_lines = []
  for line in shell_lines(readme):
    try:
      readme_lines.append(shlex.join(shlex.split(line, comments=True)))
    except ValueError:  # Inline code that is not a command.
      pass
  assert shlex.join(shlex.split(ci_command)) in readme_lines, ci_command


# ---------------------------------------------------------------------------------------------
# The cheap commands, run.


def test_bicubic_protocol_check_runs_as_written(readme):
  command = next(t for t in ssen_commands(readme) if flag_value(t, 'method') == 'bicubic')
  dataset = flag_value(command, 'dataset_dir')
  assert dataset.startswith('../shared/')
  command = [a.replace(dataset, str(shared_dir() / dataset[len('../shared/'):])) for a in command]
  result = subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
  # The figures the README states beside the command are what it prints.
  line = next(line for line in readme.splitlines() if '--method bicubic' in line)
  psnr, ssim = re.search(r'# ([\d.]+) dB / ([\d.]+)', line).groups()
  assert f'**{psnr}** | **{ssim}**' in result.stdout, result.stdout[-1500:]


def _set5_crop(set5, name, shape, top=60, left=60):
  rgb = np.asarray(Image.open(set5 / f'{name}.png').convert('RGB'))
  return rgb[top:top + shape[0], left:left + shape[1]]


@pytest.fixture(scope='module')
def images_dir(tmp_path_factory, set5_dir):
  """photo.png, reference.jpg, photos/ and refs/ as the README names them, from Set5."""
  path = tmp_path_factory.mktemp('readme_images')
  ref_shape = (4 * LR_SHAPE[0] + 24, 4 * LR_SHAPE[1] - 16)  # Cropped and padded to 4x.
  Image.fromarray(_set5_crop(set5_dir, 'baby', LR_SHAPE)).save(path / 'photo.png')
  Image.fromarray(_set5_crop(set5_dir, 'baby', ref_shape, 20, 20)).save(path / 'reference.jpg')
  (path / 'photos').mkdir()
  (path / 'refs').mkdir()
  for name in ('head', 'woman'):
    Image.fromarray(_set5_crop(set5_dir, name, LR_SHAPE)).save(path / 'photos' / f'{name}.png')
    Image.fromarray(_set5_crop(set5_dir, name, ref_shape, 10, 10)).save(
        path / 'refs' / f'{name}.png')
  return path


@pytest.fixture(scope='module')
def tiny_workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('readme_workdir') / 'wd'
  make_workdir(path, 'tiny,no_nonlocal')
  return path


def _run_in_copy(command, images_dir, run_dir):
  shutil.copytree(images_dir, run_dir)
  return subprocess.run([sys.executable, *command[1:]], cwd=run_dir, capture_output=True,
                        text=True, timeout=300)


def test_infer_commands_and_python_api_run_as_written(readme, images_dir, tiny_workdir,
                                                      tmp_path):
  commands = [t for t in ssen_commands(readme) if t[2] == 'ssen_jax.infer']
  assert len(commands) == 3 and all(flag_value(t, 'workdir') == DEMO_WORKDIR for t in commands)
  commands = [[str(tiny_workdir) if a == DEMO_WORKDIR else a for a in t] for t in commands]
  run_dirs = [tmp_path / f'run{i}' for i in range(len(commands))]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(_run_in_copy, commands, [images_dir] * len(commands), run_dirs))
  for command, result in zip(commands, results):
    assert result.returncode == 0, f'{shlex.join(command)}:\n{result.stderr[-2000:]}'
  expected = (4 * LR_SHAPE[0], 4 * LR_SHAPE[1], 3)
  (with_ref, self_ref, folder) = run_dirs
  for path in (with_ref / 'photo_x4.png', self_ref / 'photo_x4.png',
               folder / 'photos_x4' / 'head.png', folder / 'photos_x4' / 'woman.png'):
    assert np.asarray(Image.open(path)).shape == expected, path
  # The reference matters: the commands with and without it differ.
  assert not np.array_equal(np.asarray(Image.open(with_ref / 'photo_x4.png')),
                            np.asarray(Image.open(self_ref / 'photo_x4.png')))

  # The Python block, in a folder of its own; it promises `infer`'s output, bitwise.
  (code,) = [body for language, body in fenced_blocks(readme) if language == 'python']
  assert f"'{DEMO_WORKDIR}'" in code
  api_dir = tmp_path / 'api'
  shutil.copytree(images_dir, api_dir)
  cwd = os.getcwd()
  os.chdir(api_dir)
  try:
    exec(compile(code.replace(DEMO_WORKDIR, str(tiny_workdir)), 'README.md', 'exec'), {})
  finally:
    os.chdir(cwd)
  np.testing.assert_array_equal(np.asarray(Image.open(api_dir / 'photo_x4.png')),
                                np.asarray(Image.open(with_ref / 'photo_x4.png')))


# ---------------------------------------------------------------------------------------------
# Shape of the README.


def test_readme_is_short_and_its_links_resolve(readme):
  lines = readme.splitlines()
  assert len(lines) <= MAX_README_LINES, f'README.md has {len(lines)} lines'
  assert lines[0] == '# ssen_jax'
  # The first screen answers a newcomer: install, demo, own images, the API, the tests.
  first_screen = '\n'.join(lines[:60])
  for needle in ("pip install -e '.[train]'", 'configs/refsr.py:demo', 'python -m ssen_jax.infer',
                 'ssen_jax.load_model', 'python -m pytest'):
    assert needle in first_screen, needle
  assert '## Does it use the reference?' in readme
  for doc in (README, USAGE):
    targets = re.findall(r'\]\(([^)\s]+)\)', doc.read_text())
    assert targets, doc
    for target in targets:
      if re.match(r'[a-z]+:', target) or target.startswith('#'):
        continue
      path = (doc.parent / target.split('#')[0]).resolve()
      assert path.exists(), f'{doc.name} links to {target}, which does not exist'
  # The docs the README promises are linked from it.
  for doc in ('docs/usage.md', 'docs/performance.md', 'docs/reference_use.md',
              'docs/architecture.md', 'docs/conventions.md', 'docs/choices.md',
              'launch/README.md'):
    assert f']({doc})' in readme, doc
