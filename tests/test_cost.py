"""ssen_jax.core.cost: operation counts with loops multiplied out, against XLA and by hand."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from ssen_jax.core import cost

attention_ops = importlib.import_module('ssen_jax.ops.attention')


def _spec(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_matmul_and_conv_by_hand():
  a, b = _spec(3, 5, 7), _spec(3, 7, 11)
  # 2 x output (3*5*11) x contracted 7; nothing else.
  assert cost.flops(lambda x, y: jnp.einsum('bij,bjk->bik', x, y), a, b) == 2 * 3 * 5 * 11 * 7
  x, k = _spec(2, 9, 10, 4), _spec(3, 3, 4, 6)
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert cost.flops(conv, x, k) == 2 * (2 * 9 * 10 * 6) * (3 * 3 * 4)
  # Grouped: each output channel sees in_channels / groups inputs.
  grouped = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2)
  assert cost.flops(grouped, x, _spec(3, 3, 2, 6)) == 2 * (2 * 9 * 10 * 6) * (3 * 3 * 2)
  # The input gradient of a stride-2 convolution is one over an input with zeros inserted
  # (lhs_dilation 2): only the taps that meet a sample count, 1 in 4, so it costs what the
  # forward does.
  strided = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), 'SAME',
                                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  x8 = _spec(2, 8, 10, 4)
  forward = cost.flops(strided, x8, k)
  input_grad = lambda x, k, g: jax.linear_transpose(lambda x: strided(x, k), x)(g)
  assert cost.flops(input_grad, x8, k, _spec(2, 4, 5, 6)) == forward
  # Data movement is free, arithmetic is one per element.
  assert cost.flops(lambda x: x.reshape(-1).T[::2], x) == 0
  assert cost.flops(lambda x: jnp.exp(x) + 1, x) == 2 * 2 * 9 * 10 * 4


def test_loops_are_multiplied_out():
  body = lambda m: m @ m
  one = cost.flops(body, _spec(8, 8))
  assert one == 2 * 8 * 8 * 8
  assert cost.flops(lambda xs: jax.lax.map(body, xs), _spec(13, 8, 8)) == 13 * one
  nested = lambda xs: jax.lax.map(lambda x: jax.lax.map(body, x), xs)
  assert cost.flops(nested, _spec(3, 5, 8, 8)) == 15 * one
  # The costliest branch of a cond; calls (jit, checkpoint) once.
  branches = lambda p, m: jax.lax.cond(p, body, lambda m: m + 1, m)
  assert cost.flops(branches, jax.ShapeDtypeStruct((), jnp.bool_), _spec(8, 8)) == one
  assert cost.flops(jax.jit(jax.checkpoint(body)), _spec(8, 8)) == one


def test_chunked_attention_counts_like_dense():
  """XLA counts a loop body once: the chunked attention would look 16x cheaper than the dense."""
  q = _spec(1, 4096, 16)
  dense = cost.flops(attention_ops.dense_attention, q, q, q)
  chunked = cost.flops(lambda *a: attention_ops.chunked_attention(*a, chunk=1024), q, q, q)
  assert dense >= 2 * 2 * 4096 * 4096 * 16  # Two products of 4096 x 4096 x 16.
  assert abs(chunked - dense) / dense < 0.02, (chunked, dense)
  xla = jax.jit(lambda *a: attention_ops.chunked_attention(*a, chunk=1024)).lower(
      q, q, q).cost_analysis()['flops']
  assert xla < dense / 4, (xla, dense)  # Why this module exists.


def test_agrees_with_xla_without_loops():
  """On a loop-free network (convolutions, activations, a dense attention) the count is XLA's."""
  def net(x, k1, k2):
    dn = ('NHWC', 'HWIO', 'NHWC')
    y = jax.nn.leaky_relu(jax.lax.conv_general_dilated(x, k1, (1, 1), 'SAME', dimension_numbers=dn))
    y = jax.lax.conv_general_dilated(y, k2, (2, 2), 'SAME', dimension_numbers=dn)
    flat = y.reshape(1, -1, y.shape[-1])
    return attention_ops.dense_attention(flat, flat, flat)
  args = (_spec(1, 32, 32, 8), _spec(3, 3, 8, 16), _spec(3, 3, 16, 16))
  ours = cost.flops(net, *args)
  xla = jax.jit(net).lower(*args).cost_analysis()['flops']
  np.testing.assert_allclose(ours, xla, rtol=0.1)


def test_counts_by_kind():
  x, k = _spec(1, 16, 16, 4), _spec(3, 3, 4, 4)
  def net(x, k):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    flat = jnp.exp(y).reshape(1, -1, 4)
    return jax.lax.map(lambda f: f @ f.T, flat)  # A loop of one: counted once.
  got = cost.counts(net, x, k)
  assert got == {'dot': 2 * 256 * 256 * 4, 'conv': 2 * 256 * 4 * 36, 'other': 256 * 4}
  assert cost.flops(net, x, k) == sum(got.values())
