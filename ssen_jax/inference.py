"""Loading a trained generator from a workdir (or an imported PyTorch checkpoint) for inference.

`evaluate`, `infer` and `visualize_offsets` rebuild the model from `{workdir}/config.json` and
restore only the generator's parameters from the Orbax checkpoint.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import jax
import ml_collections

from ssen_jax import checkpointing
from ssen_jax import models
from ssen_jax import steps


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


def load_generator(workdir: str | pathlib.Path, step: Optional[int] = None,
                   best: bool = False) -> Generator:
  """Restores the generator of a training workdir on this host's devices.

  Args:
    workdir: a training workdir (holds config.json and checkpoints/).
    step: checkpoint step; None takes the latest (or the best with `best`).
    best: prefer the checkpoint with the best evaluation PSNR.

  Raises:
    FileNotFoundError: not a workdir, or no checkpoint in it.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  config = checkpointing.read_config(workdir)
  trainer = steps.Trainer(config, steps.create_mesh(jax.local_devices()[:1]))
  try:
    params, restored_step = checkpointing.restore_params(workdir, trainer.abstract_state(),
                                                         step=step, best=best)
  except FileNotFoundError:
    raise FileNotFoundError(f'workdir {workdir} holds no checkpoint (has training run?)') from None
  return Generator(config=config, model=trainer.model, params=params, step=int(restored_step))
