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
- `conv_general_dilated`: 2 x (output elements) x (kernel window x input channels per group),
  divided by the input dilation (a transposed convolution's inserted zeros are not counted);
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
  # lhs_dilation d (a transposed convolution: the input gradient of a strided one) puts d - 1
  # zeros between input samples along each axis; only one tap in d meets a sample, and only
  # those are counted (as XLA does): otherwise a stride-2 layer's backward would count 4x.
  dilation = int(np.prod(eqn.params.get('lhs_dilation') or (1,)))
  return 2.0 * _size(eqn.outvars[0].aval) * in_per_group * window / dilation


def _sub_jaxprs(params: dict[str, Any]):
  """The jaxprs held in an equation's parameters (calls, remat, custom derivatives)."""
  for value in params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


KINDS = ('dot', 'conv', 'other')  # The kinds `jaxpr_counts` separates.


def jaxpr_counts(jaxpr: Any) -> dict[str, float]:
  """Operations of a `Jaxpr` (or `ClosedJaxpr`) by kind, loops multiplied out (module doc):
  'dot' (`dot_general`), 'conv' (`conv_general_dilated`), 'other' (elementwise, reductions,
  gathers, scatters). Kinds run at very different rates (docs/performance.md, "Tiled inference")."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = dict.fromkeys(KINDS, 0.0)

  def add(counts: dict[str, float], times: float = 1.0) -> None:
    for kind in KINDS:
      total[kind] += times * counts[kind]

  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'scan':
      add(jaxpr_counts(eqn.params['jaxpr']), eqn.params['length'])
    elif name == 'cond':
      add(max((jaxpr_counts(b) for b in eqn.params['branches']), key=lambda c: sum(c.values())))
    elif name == 'while':
      add(jaxpr_counts(eqn.params['body_jaxpr']))
      add(jaxpr_counts(eqn.params['cond_jaxpr']))
    elif name == 'dot_general':
      total['dot'] += _dot_general(eqn)
    elif name == 'conv_general_dilated':
      total['conv'] += _conv(eqn)
    elif name in _FREE:
      continue
    else:
      inner = list(_sub_jaxprs(eqn.params))
      if inner:  # pjit, closed_call, remat, custom_jvp_call, custom_vjp_call, ...
        # custom_vjp_call holds the forward and the backward: the forward is what runs.
        add(jaxpr_counts(inner[0]))
      else:
        sizes = [_size(v.aval) for v in (*eqn.invars, *eqn.outvars) if hasattr(v, 'aval')]
        total['other'] += max(sizes, default=0)
  return total


def jaxpr_flops(jaxpr: Any) -> float:
  """Arithmetic operations of a `Jaxpr` (or `ClosedJaxpr`), loops multiplied out (module doc)."""
  return sum(jaxpr_counts(jaxpr).values())


def counts(fn: Callable[..., Any], *args: Any) -> dict[str, float]:
  """`jaxpr_counts` of `fn(*args)` (arguments may be `jax.ShapeDtypeStruct`s: only traced)."""
  return jaxpr_counts(jax.make_jaxpr(fn)(*args))


def flops(fn: Callable[..., Any], *args: Any) -> float:
  """Arithmetic operations of `fn(*args)`; arguments may be `jax.ShapeDtypeStruct`s (nothing is
  computed or compiled: the function is only traced)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))
