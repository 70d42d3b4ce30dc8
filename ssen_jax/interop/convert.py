"""Conversion between PyTorch state_dicts and flax parameter trees of the SSEN networks.

A PyTorch implementation whose module attributes mirror the flax module names (flax's `name_i`
children held in an `nn.ModuleList` called `name`; `ssen_jax/interop/torch_reference.py` is one) maps onto the
flax parameters by rule, not by table:

  * the key is split on '.'; a numeric component is joined to the one before it with '_':
    'extract.3.conv1.weight' -> ('extract_3', 'conv1', 'weight');
  * a leaf 'weight' becomes 'kernel', transposed from PyTorch's layout to flax's:
    (O, C, kh, kw) -> (kh, kw, C, O) for convolutions, (O, C) -> (C, O) for dense layers;
  * a leaf 'bias' stays 'bias', as does any other leaf name (e.g. the correlation prior's 0-d
    'matcher.log_temperature' -> ('matcher', 'log_temperature')), unchanged in layout and shape.

The inverse (`params_to_state_dict`) writes every `name_i` as 'name.i', i.e. ModuleList keys.

torch is needed only to read `.pth` files (`load_pth`), and is imported there, lazily: training and
inference never import it.
"""
from __future__ import annotations

import pathlib
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

Path = Tuple[str, ...]

_WRAPPER_KEYS = ('state_dict', 'params', 'model')
_PREFIX = 'module.'
_NUMBERED = re.compile(r'^(.+)_(\d+)$')


def _key_to_path(key: str) -> Path:
  """'extract.3.conv1.weight' -> ('extract_3', 'conv1', 'kernel')."""
  parts = []
  for part in key.split('.'):
    if part.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{part}'
    else:
      parts.append(part)
  if parts[-1] == 'weight':
    parts[-1] = 'kernel'
  return tuple(parts)


def _path_to_key(path: Path) -> str:
  """('extract_3', 'conv1', 'kernel') -> 'extract.3.conv1.weight'."""
  parts = []
  for name in path[:-1]:
    match = _NUMBERED.match(name)
    parts.extend([match.group(1), match.group(2)] if match else [name])
  parts.append('weight' if path[-1] == 'kernel' else path[-1])
  return '.'.join(parts)


def _contiguous(value: np.ndarray, dtype=None) -> np.ndarray:
  """A C-contiguous array of the same shape: unlike `np.ascontiguousarray`, 0-d stays 0-d."""
  return np.asarray(value, dtype=dtype, order='C')


def _torch_to_flax(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def _flax_to_torch(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))
  if value.ndim == 2:
    return value.T
  return value


def _flatten(tree: Mapping[str, Any], prefix: Path = ()) -> Dict[Path, Any]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (name,)))
    else:
      flat[prefix + (name,)] = value
  return flat


def _unflatten(flat: Mapping[Path, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _unwrap_variables(tree: Mapping[str, Any]) -> Tuple[Mapping[str, Any], bool]:
  """Accepts either a params tree or a flax variables dict {'params': params}."""
  if set(tree.keys()) == {'params'} and isinstance(tree['params'], Mapping):
    return tree['params'], True
  return tree, False


def state_dict_to_params(state_dict: Mapping[str, Any], template: Mapping[str, Any]
                         ) -> Dict[str, Any]:
  """Converts a PyTorch state_dict into a flax parameter tree shaped like `template`.

  Args:
    state_dict: key -> array (numpy, or anything `np.asarray` accepts), PyTorch layouts: conv
      weights (O, C, kh, kw), biases (O,).
    template: the flax params tree, or the variables dict {'params': ...}, of the target model;
      leaves may be arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape(model.init, ...)`).

  Returns:
    A nested dict of numpy arrays with the template's structure, shapes and dtypes (wrapped in
    {'params': ...} if the template was).

  Raises:
    ValueError: listing, in one message, every flax parameter that no key provides, every key that
      maps to no parameter, and every shape mismatch.
  """
  params_template, wrapped = _unwrap_variables(template)
  expected = _flatten(params_template)
  converted: Dict[Path, np.ndarray] = {}
  unexpected, mismatched = [], []
  mismatched_paths = set()
  for key, value in state_dict.items():
    path = _key_to_path(key)
    if path not in expected:
      unexpected.append(f'{key} -> {"/".join(path)}')
      continue
    if path in converted or path in mismatched_paths:
      unexpected.append(f'{key} -> {"/".join(path)} (a second key for this parameter)')
      continue
    array = _torch_to_flax(np.asarray(value))
    want = tuple(expected[path].shape)
    if array.shape != want:
      want_torch = _flax_to_torch(np.empty(want, np.bool_)).shape
      mismatched.append(f'{key}: got {tuple(np.shape(value))}, model expects {want_torch} '
                        f'(flax {"/".join(path)} {want})')
      mismatched_paths.add(path)
      continue
    converted[path] = _contiguous(array, expected[path].dtype)
  missing = [p for p in expected if p not in converted and p not in mismatched_paths]
  if missing or unexpected or mismatched:
    lines = ['state_dict does not match the model parameters:']
    if missing:
      lines.append(f'  missing ({len(missing)}), expected as key -> flax path:')
      lines += [f'    {_path_to_key(p)} -> {"/".join(p)}' for p in missing]
    if unexpected:
      lines.append(f'  unexpected ({len(unexpected)}), no such flax parameter:')
      lines += [f'    {u}' for u in unexpected]
    if mismatched:
      lines.append(f'  shape mismatch ({len(mismatched)}):')
      lines += [f'    {m}' for m in mismatched]
    raise ValueError('\n'.join(lines))
  params = _unflatten(converted)
  return {'params': params} if wrapped else params


def params_to_state_dict(params: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Converts a flax parameter tree into a PyTorch-layout state_dict (the inverse rule).

  Args:
    params: the flax params tree, or the variables dict {'params': ...}.

  Returns:
    key -> numpy array, e.g. 'ssen.doe.0.conv_in.weight' -> (O, C, kh, kw); flax's `name_i`
    becomes 'name.i'.
  """
  params, _ = _unwrap_variables(params)
  return {_path_to_key(path): _contiguous(_flax_to_torch(np.asarray(value)))
          for path, value in _flatten(params).items()}


def load_pth(path: str) -> Dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint into key -> numpy array.

  Accepts a bare state_dict or a dict holding one under 'state_dict', 'params' or 'model'; a
  'module.' prefix (DataParallel / DistributedDataParallel) is stripped from every key. Loaded with
  `weights_only=True`, so no pickled code is executed.

  Args:
    path: a file written by `torch.save`.

  Returns:
    key -> numpy array in PyTorch layout; pass it to `state_dict_to_params`.

  Raises:
    ImportError: torch is not installed.
    ValueError: the file holds no state_dict.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('reading .pth files needs PyTorch: pip install torch (CPU build is '
                      'enough); or convert the checkpoint elsewhere with '
                      'ssen_jax.interop.convert.load_pth and save it with numpy.savez') from e
  obj = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(obj, Mapping):
    for key in _WRAPPER_KEYS:
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ValueError(f'{path} does not hold a state_dict (a mapping of names to tensors), nor one '
                     f'under {", ".join(repr(k) for k in _WRAPPER_KEYS)}')
  state = {}
  for key, value in obj.items():
    if key.startswith(_PREFIX):
      key = key[len(_PREFIX):]
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16.
      value = value.float()
    state[key] = value.numpy()
  return state


class ConversionError(ValueError):
  """Bad conversion input; the message says what (it may span several lines)."""


def read_state_dict(path: str | pathlib.Path) -> Dict[str, np.ndarray]:
  """`load_pth` with one-line errors for missing or unreadable files.

  Raises:
    ConversionError: not a file, not a torch checkpoint, or no state_dict in it.
    ImportError: torch is not installed.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise ConversionError(f'{path} does not exist')
  if not path.is_file():
    raise ConversionError(f'{path} is not a file')
  try:
    return load_pth(str(path))
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # torch.load raises many types.
    raise ConversionError(f'cannot read PyTorch checkpoint {path}: '
                          f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None


def summarize(error: Exception) -> str:
  """A one-line digest of a (multi-line) architecture mismatch of `state_dict_to_params`."""
  lines = str(error).splitlines()
  if len(lines) <= 1:
    return str(error)
  counts = [l.strip().split(',')[0].rstrip(':') for l in lines[1:]
            if l.startswith('  ') and not l.startswith('    ')]
  first = next((l.strip() for l in lines[1:] if l.startswith('    ')), '')
  return f'{lines[0].rstrip(":")}: {"; ".join(counts)} (first: {first})'


__all__ = ['ConversionError', 'load_pth', 'params_to_state_dict', 'read_state_dict',
           'state_dict_to_params', 'summarize']
