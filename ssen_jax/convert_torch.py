r"""Imports a PyTorch checkpoint (.pth) of an SSEN network as a workdir that `infer`, `evaluate`
and `visualize_offsets` accept.

  python -m ssen_jax.convert_torch IN.pth --config configs/refsr.py[:variant] --out DIR \
      [--overwrite]

The architecture comes from the config (its `model` section); the state_dict keys map onto the
flax parameters by `ssen_jax.convert`'s naming rule. If the .pth does not fit the architecture,
one error lists every missing, unexpected and mis-shaped parameter and nothing is written.

DIR receives `config.json` and an Orbax checkpoint at step 0 holding the converted parameters and
a fresh optimiser state (so DIR can also start a fine-tuning run). A non-empty DIR is refused
without --overwrite, which replaces only DIR/config.json and DIR/checkpoints. The workdir is built
in a temporary folder beside DIR and moved into place at the end.
"""
from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


class ConversionError(ValueError):
  """Bad conversion input; the message says what (it may span several lines)."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`.

  Raises:
    ConversionError: missing file, no get_config, or get_config failing (e.g. unknown variant).
  """
  path, arg = spec, None
  head, sep, tail = spec.rpartition(':')
  if sep and head.endswith('.py'):
    path, arg = head, tail
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConversionError(f'config file {file} does not exist')
  try:
    module_spec = importlib.util.spec_from_file_location(f'_ssen_config_{file.stem}', file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConversionError(f'config file {file} defines no get_config()')
    return module.get_config(arg) if arg is not None else module.get_config()
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # User code: report, do not crash.
    raise ConversionError(f'config {spec}: {type(e).__name__}: {e}') from None


def read_state_dict(path: str | pathlib.Path) -> dict:
  """convert.load_pth with one-line errors for missing/unreadable files.

  Raises:
    ConversionError: not a file, not a torch checkpoint, or no state_dict in it.
    ImportError: torch is not installed.
  """
  from ssen_jax import convert  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if not path.exists():
    raise ConversionError(f'{path} does not exist')
  if not path.is_file():
    raise ConversionError(f'{path} is not a file')
  try:
    return convert.load_pth(str(path))
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # torch.load raises many types.
    raise ConversionError(f'cannot read PyTorch checkpoint {path}: '
                          f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None


def params_from_state_dict(state_dict: Mapping[str, Any], config: ml_collections.ConfigDict):
  """The generator parameters of `config`'s architecture from a PyTorch state_dict.

  Raises:
    ConversionError: the architecture check of `convert.state_dict_to_params` (every problem).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ssen_jax import convert, steps  # pylint: disable=import-outside-toplevel
  trainer = steps.Trainer(config, steps.create_mesh(jax.local_devices()[:1]))
  template = trainer.abstract_state()['params']
  try:
    return convert.state_dict_to_params(state_dict, template)
  except ValueError as e:
    raise ConversionError(str(e)) from None


def summarize(error: ConversionError) -> str:
  """A one-line digest of a (multi-line) architecture mismatch, for `infer`."""
  lines = str(error).splitlines()
  if len(lines) <= 1:
    return str(error)
  counts = [l.strip().split(',')[0].rstrip(':') for l in lines[1:]
            if l.startswith('  ') and not l.startswith('    ')]
  first = next((l.strip() for l in lines[1:] if l.startswith('    ')), '')
  return f'{lines[0].rstrip(":")}: {"; ".join(counts)} (first: {first})'


def generator_from_pth(path: str | pathlib.Path, config: ml_collections.ConfigDict):
  """An `inference.Generator` from a .pth and the config giving its architecture (step 0)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ssen_jax import inference, models  # pylint: disable=import-outside-toplevel
  params = params_from_state_dict(read_state_dict(path), config)
  params = jax.device_put(params, jax.local_devices()[0])
  return inference.Generator(config=config, model=models.create_model(config.model, config.dtype),
                             params=params, step=0)


def write_workdir(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, params: Any,
                  *, step: int = 0) -> None:
  """Writes config.json and an Orbax checkpoint of `params` (+ fresh optimiser state) at `step`.

  Args:
    workdir: the folder to write (created if needed).
    config: the full config; its architecture must match `params`.
    params: the generator's flax parameters (numpy or jax arrays).
    step: the checkpoint step.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ssen_jax import checkpointing, steps  # pylint: disable=import-outside-toplevel
  trainer = steps.Trainer(config, steps.create_mesh(jax.local_devices()[:1]))
  abstract = trainer.abstract_state()
  state = {'step': np.asarray(step, np.int32), 'params': params,
           'opt_state': trainer.tx.init(params)}
  if 'disc_params' in abstract:  # GAN configs also checkpoint a discriminator: a fresh one.
    hr_side = config.data.hr_patch
    disc_params = trainer.disc.init(jax.random.key(config.seed),
                                    np.zeros((1, hr_side, hr_side, 3), np.float32))['params']
    state.update(disc_params=disc_params, disc_opt_state=trainer.disc_tx.init(disc_params))
  state = jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), state,
                       abstract)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointing.write_config(workdir, config)
  with checkpointing.create_manager(workdir, save_every=1, keep=1) as manager:
    checkpointing.save(manager, step, state, force=True)
    manager.wait_until_finished()


def _is_training_workdir(path: pathlib.Path) -> bool:
  """TensorBoard logs, a config history or checkpoints of steps other than 0 (conversions save
  step 0 only)."""
  if any(path.glob('events.out.tfevents.*')) or (path / 'config_history.json').exists():
    return True
  ckpt = path / 'checkpoints'
  return ckpt.is_dir() and any(p.name != '0' for p in ckpt.iterdir() if p.name.isdigit())


def convert(pth: str, config_spec: str, out: str, *, overwrite: bool = False) -> str:
  """The whole command: checks, converts, writes; returns a summary line.

  Raises:
    ConversionError: bad input (message may list several problems); nothing is written.
  """
  out_dir = pathlib.Path(out)
  if out_dir.exists() and not out_dir.is_dir():
    raise ConversionError(f'--out {out_dir} exists and is not a folder')
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise ConversionError(f'--out {out_dir} is not empty; pass --overwrite to replace its '
                          'config.json and checkpoints/')
  if out_dir.is_dir() and _is_training_workdir(out_dir):
    raise ConversionError(f'--out {out_dir} is a training workdir (it has training checkpoints '
                          'or logs); --overwrite would destroy the run: choose another --out')
  config = load_config_file(config_spec)
  state_dict = read_state_dict(pth)
  try:
    params = params_from_state_dict(state_dict, config)
  except ConversionError as e:
    raise ConversionError(f'{pth} does not fit the architecture of {config_spec}: {e}') from None
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
  try:
    write_workdir(tmp, config, params)
    if not out_dir.exists():
      tmp.rename(out_dir)
    else:  # Old entries move aside first and are deleted only once the new ones are in place.
      old = tmp / 'replaced'
      old.mkdir()
      for name in ('checkpoints', 'config.json'):
        if (out_dir / name).exists():
          (out_dir / name).rename(old / name)
      try:
        for name in ('checkpoints', 'config.json'):
          (tmp / name).rename(out_dir / name)
      except OSError:
        for name in ('checkpoints', 'config.json'):  # Put the old ones back.
          if (old / name).exists():
            if (out_dir / name).is_dir():
              shutil.rmtree(out_dir / name)
            (old / name).replace(out_dir / name)
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  count = sum(int(np.size(v)) for v in _leaves(params))
  return (f'wrote {out_dir}: {config.model.variant} x{config.model.scale} from {pth} '
          f'({count:,} parameters, step 0)')


def _leaves(tree):
  if isinstance(tree, Mapping):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('config', None, 'Config giving the architecture: FILE[:variant].')
  flags.DEFINE_string('out', None, 'Output workdir.')
  flags.DEFINE_bool('overwrite', False,
                    'Replace config.json and checkpoints/ in a non-empty --out.')
  flags.mark_flags_as_required(['config', 'out'])


def main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.ERROR)  # Orbax's INFO lines would bury the result.
  if len(argv) != 2:
    print('error: usage: python -m ssen_jax.convert_torch IN.pth --config FILE[:variant] '
          '--out DIR [--overwrite]', file=sys.stderr)
    sys.exit(2)
  try:
    print(convert(argv[1], FLAGS.config, FLAGS.out, overwrite=FLAGS.overwrite))
  except (ConversionError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
