"""Arithmetic cost of a JAX function, counted from its jaxpr with loops multiplied out.

XLA's own `cost_analysis()` counts the body of a loop once, whatever its trip count; the model's
memory-bounded attention (`ops.attention`: `lax.map` over query blocks of a `lax.scan` over key
blocks) and the correlation prior's window rows (`ops.matching`: `lax.map`) are loops whose trip
counts grow with the image, so XLA's figure for a 1024x1024 input misses nearly all of its
attention. `flops` walks the jaxpr instead: a `scan` (hence `lax.map`, static `fori_loop`) counts
its body `length` times, `cond` its costliest branch, and calls (`pjit`, `remat`, custom
derivatives) their inner jaxpr once.

What is counted, per primitive:
- `dot_general`: 2 x (output elements) x (contracted size);
- `conv_general_dilated`: 2 x (output elements) x (kernel window x input channels per group);
- other arithmetic, reductions, gathers and scatters: one per element of the largest operand or
  result;
- data movement that does no arithmetic (reshape, transpose, broadcast, slices, concatenation,
  padding, dtype conversion, iota, copies): nothing.
A `while` loop whose trip count is not static counts its body once (the model has none).

This is a predictor of relative time (the tile planner of `ssen_jax.inference.tiling` compares
tilings of one image with it), not a hardware count: it ignores memory traffic and fusion.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax.extend import core as jax_core
import numpy as np

# Primitives that move or relabel data without arithmetic: not counted.
_FREE = frozenset({
    'reshape', 'squeeze', 'expand_dims', 'broadcast_in_dim', 'transpose', 'slice',
    'dynamic_slice', 'dynamic_update_slice', 'concatenate', 'pad', 'convert_element_type', 'copy',
    'copy_p', 'iota', 'rev', 'stop_gradient', 'select_n', 'bitcast_convert_type',
    'reduce_precision', 'device_put', 'sharding_constraint', 'optimization_barrier', 'split',
})


def _size(aval: Any) -> int:
  shape = getattr(aval, 'shape', ())
  return int(np.prod(shape)) if shape else 1


def _dot_general(eqn: Any) -> float:
  (contract_lhs, _), _ = eqn.params['dimension_numbers']
  lhs_shape = eqn.invars[0].aval.shape
  contracted = int(np.prod([lhs_shape[d] for d in contract_lhs])) if contract_lhs else 1
  return 2.0 * _size(eqn.outvars[0].aval) * contracted


def _conv(eqn: Any) -> float:
  dn = eqn.params['dimension_numbers']
  rhs_shape = eqn.invars[1].aval.shape
  # rhs_spec: (out feature dim, in feature dim, spatial dims...).
  in_per_group = rhs_shape[dn.rhs_spec[1]]
  window = int(np.prod([rhs_shape[d] for d in dn.rhs_spec[2:]]))
  return 2.0 * _size(eqn.outvars[0].aval) * in_per_group * window


def _sub_jaxprs(params: dict[str, Any]):
  """The jaxprs held in an equation's parameters (calls, remat, custom derivatives)."""
  for value in params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def jaxpr_flops(jaxpr: Any) -> float:
  """Arithmetic operations of a `Jaxpr` (or `ClosedJaxpr`), loops multiplied out (module doc)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'scan':
      total += eqn.params['length'] * jaxpr_flops(eqn.params['jaxpr'])
    elif name == 'cond':
      total += max(jaxpr_flops(branch) for branch in eqn.params['branches'])
    elif name == 'while':
      total += jaxpr_flops(eqn.params['body_jaxpr']) + jaxpr_flops(eqn.params['cond_jaxpr'])
    elif name == 'dot_general':
      total += _dot_general(eqn)
    elif name == 'conv_general_dilated':
      total += _conv(eqn)
    elif name in _FREE:
      continue
    else:
      inner = list(_sub_jaxprs(eqn.params))
      if inner:  # pjit, closed_call, remat, custom_jvp_call, custom_vjp_call, ...
        # custom_vjp_call holds the forward and the backward: the forward is what runs.
        total += jaxpr_flops(inner[0])
      else:
        sizes = [_size(v.aval) for v in (*eqn.invars, *eqn.outvars) if hasattr(v, 'aval')]
        total += max(sizes, default=0)
  return total


def flops(fn: Callable[..., Any], *args: Any) -> float:
  """Arithmetic operations of `fn(*args)`; arguments may be `jax.ShapeDtypeStruct`s (nothing is
  computed or compiled: the function is only traced)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))
