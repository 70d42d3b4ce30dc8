"""What the benchmarks run on: the config, random weights of realistic scale, random images.

The model is the config's (default `configs/refsr.py`; `--tiny` adds its `tiny` variant) with
random weights scaled so that the deformable offsets are of the order of pixels (an untrained model
samples the regular grid, which would make the gathers unrealistically cache-friendly).
"""
from __future__ import annotations

import numpy as np
from flax import traverse_util

from ssen_jax import models
from ssen_jax.core import config as config_lib
from ssen_jax.inference import restore

DEFAULT_CONFIG = 'configs/refsr.py'


def load_config(spec: str, *variants: str):
  """The config of `spec` (FILE[:variants]) with `variants` appended ('' entries ignored).

  Raises:
    config_lib.ConfigError: missing file or unknown variant.
  """
  file, arg = config_lib.split_spec(spec)
  arg = ','.join(filter(None, [arg, *variants]))
  return config_lib.load_config(f'{file}:{arg}' if arg else str(file))


def randomize_params(params, seed: int = 0, bias_std: float = 0.05, offset_gain: float = 3.0):
  """Every parameter redrawn: kernels N(0, 1/fan_in), offset predictors x offset_gain, biases small.

  The same rule as the reference's `randomize_`: activations stay of order one through the network
  and the deformable offsets are of the order of pixels.
  """
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, value in flat.items():
    shape = np.shape(value)
    if len(shape) > 1:
      std = 1.0 / np.sqrt(np.prod(shape[:-1]))
      std *= offset_gain if any('offset_conv' in p for p in path) else 1.0
    else:
      std = bias_std
    out[path] = (rng.standard_normal(shape) * std).astype(np.float32)
  return traverse_util.unflatten_dict(out)


def model_and_params(config, seed: int = 0):
  """The generator of `config` and randomized parameters (numpy; nothing compiled)."""
  model = models.create_model(config.model, config.dtype)
  return model, randomize_params(restore.abstract_params(config), seed)


def images(rng, n, h, w, scale):
  """Random lr (n, h, w, 3), ref and hr (n, scale*h, scale*w, 3), float32 in [0, 1)."""
  lr = rng.random((n, h, w, 3), dtype=np.float32)
  ref = rng.random((n, scale * h, scale * w, 3), dtype=np.float32)
  hr = rng.random((n, scale * h, scale * w, 3), dtype=np.float32)
  return lr, ref, hr
