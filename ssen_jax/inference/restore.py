"""Restoring a trained generator: the one path every tool and the GAN stage use.

  config (`{workdir}/config.json`, or a config file for a .pth) -> flax model (`models.create_model`)
  -> abstract parameters (`jax.eval_shape` of `model.init`: shapes and dtypes, nothing computed)
  -> parameters only, restored from the Orbax checkpoint (the latest, a given step, or the best)
     or converted from a PyTorch state_dict.

No optimiser, discriminator or train step is built: restoring reads only the generator's
parameters (`core.checkpointing.restore_params`). Workdirs are those of `python -m ssen_jax.main`
and folders written by `python -m ssen_jax.convert_torch`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from ssen_jax import models
from ssen_jax.core import checkpointing
from ssen_jax.core import config as config_lib
from ssen_jax.interop import convert

SrFn = Callable[[Any, jax.Array, Optional[jax.Array]], jax.Array]


def make_sr_fn(model: Any, uses_ref: bool) -> SrFn:
  """The jitted `sr_fn(params, lr, ref) -> SR` of a generator, clipped to [0, 1].

  lr (N, h, w, 3) and ref (N, s*h, s*w, 3) float in [0, 1] (ref ignored, may be None, for models
  without a reference) -> (N, s*h, s*w, 3) float32. It compiles once per input shape (evaluation
  images keep their own sizes: padding them to a common shape would change the border pixels that
  the published protocol scores).
  """

  @jax.jit
  def sr_fn(params, lr, ref):
    return jnp.clip(model.apply({'params': params}, lr, ref if uses_ref else None), 0.0, 1.0)

  return sr_fn


@dataclasses.dataclass
class Generator:
  """A restored generator: its config, flax module, parameters and checkpoint step."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  step: int

  @property
  def scale(self) -> int:
    return int(self.config.model.scale)

  @property
  def uses_ref(self) -> bool:
    return models.uses_reference(self.config.model.variant)

  @functools.cached_property
  def sr_fn(self) -> SrFn:
    """`make_sr_fn` of this model: sr_fn(params, lr, ref) -> SR in [0, 1]."""
    return make_sr_fn(self.model, self.uses_ref)


def _default_sharding() -> jax.sharding.Sharding:
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_params(config: ml_collections.ConfigDict,
                    sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """Shapes and dtypes of the generator's parameters (`jax.ShapeDtypeStruct`s), on `sharding`.

  Args:
    config: a full config (its `model` section and `dtype` are used).
    sharding: where the restored parameters go; default this host's first device.
  """
  model = models.create_model(config.model, config.dtype)
  shapes = jax.eval_shape(lambda rng: model.init(rng, *models.init_inputs(config.model, 8)),
                          jax.random.key(0))['params']
  sharding = sharding or _default_sharding()
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def load_generator(workdir: str | os.PathLike, step: Optional[int] = None, best: bool = False,
                   sharding: Optional[jax.sharding.Sharding] = None, *,
                   best_or_latest: bool = False) -> Generator:
  """Restores the generator of a training workdir (or of a `convert_torch` folder).

  Args:
    workdir: holds config.json and checkpoints/.
    step: checkpoint step; None takes the latest (or the best with `best`).
    best: the checkpoint with the best evaluation PSNR (`checkpointing.NoBestCheckpointError` if
      none carries one).
    sharding: where the parameters go; default this host's first device.
    best_or_latest: the best, else (no evaluation was saved) the latest (the GAN stage's init).

  Raises:
    FileNotFoundError: not a workdir, no checkpoint in it, or no checkpoint at `step`;
      `checkpointing.NoBestCheckpointError` for `best` without an evaluated checkpoint.
  """
  if not checkpointing.workdir_path(workdir).is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist or is not a folder')
  config = checkpointing.read_config(workdir)
  saved = checkpointing.checkpoint_steps(workdir)
  if not saved:  # Checked before building anything: a clear message, fast.
    raise FileNotFoundError(f'workdir {workdir} holds no checkpoint (has training run?)')
  if step is not None and step not in saved:
    raise FileNotFoundError(f'workdir {workdir} has no checkpoint at step {step} '
                            f'(saved: {", ".join(map(str, saved))})')
  try:
    params, restored_step = checkpointing.restore_params(
        workdir, abstract_params(config, sharding), step=step, best=best,
        best_or_latest=best_or_latest)
  except checkpointing.NoBestCheckpointError:
    raise
  except FileNotFoundError:
    raise FileNotFoundError(f'workdir {workdir} holds no checkpoint (has training run?)') from None
  return Generator(config=config, model=models.create_model(config.model, config.dtype),
                   params=params, step=int(restored_step))


def params_from_state_dict(state_dict: Any, config: ml_collections.ConfigDict) -> Any:
  """The generator parameters (numpy) of `config`'s architecture from a PyTorch state_dict.

  Raises:
    convert.ConversionError: the architecture check of `convert.state_dict_to_params` (one message
      listing every missing, unexpected and mis-shaped parameter).
  """
  try:
    return convert.state_dict_to_params(state_dict, abstract_params(config))
  except ValueError as e:
    raise convert.ConversionError(str(e)) from None


def generator_from_pth(path: str | os.PathLike, config: ml_collections.ConfigDict,
                       sharding: Optional[jax.sharding.Sharding] = None) -> Generator:
  """A generator (step 0) from a PyTorch .pth and the config giving its architecture.

  `sharding`: where the parameters go; default this host's first device."""
  params = params_from_state_dict(convert.read_state_dict(path), config)
  return Generator(config=config, model=models.create_model(config.model, config.dtype),
                   params=jax.device_put(params, sharding or _default_sharding()), step=0)


def generator_from_flags(workdir: Optional[str | os.PathLike], checkpoint: Optional[str] = None,
                         config: Optional[str | ml_collections.ConfigDict] = None,
                         best: bool = False,
                         sharding: Optional[jax.sharding.Sharding] = None) -> Generator:
  """The generator chosen by the tools' --workdir / --checkpoint / --config flags.

  The one reading of that vocabulary: the command-line tools pass their flags, and
  `ssen_jax.load_model` (`inference.api`) its keyword arguments.

  Args:
    workdir: a training workdir.
    checkpoint: None (the latest, or the best), a step of `workdir`, a folder written by
      `convert_torch`, or a PyTorch .pth file.
    config: FILE[:variant] (or a loaded config) giving a .pth's architecture (default: the
      workdir's config.json).
    best: prefer the checkpoint with the best evaluation PSNR (the tools' `--checkpoint best`,
      read by `core.cli.checkpoint_choice`).
    sharding: where the parameters go; default this host's first device.

  Raises:
    FileNotFoundError, ValueError (incl. convert.ConversionError, config_lib.ConfigError): with a
      one-line message.
  """
  if checkpoint is None or checkpoint.isdigit():
    if not workdir:
      raise ValueError('--workdir is required (or --checkpoint naming a .pth file or a folder '
                       'written by ssen_jax.convert_torch)')
    return load_generator(workdir, None if checkpoint is None else int(checkpoint), best,
                          sharding)
  path = pathlib.Path(checkpoint)
  if path.is_dir():
    return load_generator(path, None, best, sharding)
  if not path.exists():
    raise FileNotFoundError(f'--checkpoint {checkpoint} is neither a step number nor an existing '
                            '.pth file or converted folder')
  if isinstance(config, ml_collections.ConfigDict):
    cfg = config
  elif config:
    cfg = config_lib.load_config(config)
  elif workdir:
    cfg = checkpointing.read_config(workdir)
  else:
    raise ValueError(f'--checkpoint {checkpoint} needs --config FILE[:variant] (or a --workdir '
                     'with a config.json) to know the architecture')
  source = (f'the given config ({cfg.model.variant})'
            if isinstance(config, ml_collections.ConfigDict) else config or workdir)
  try:
    return generator_from_pth(path, cfg, sharding)
  except convert.ConversionError as e:
    raise convert.ConversionError(
        f'{checkpoint} does not fit the architecture of {source}: '
        f'{convert.summarize(e)}; python -m ssen_jax.convert_torch lists every '
        'problem') from None
