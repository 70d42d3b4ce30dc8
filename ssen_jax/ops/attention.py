"""Softmax attention over all positions, dense or in memory-bounded chunks.

The non-local block (Wang et al., embedded Gaussian; paper Eq. 2-3) normalises
f(x_i, x_j) = exp(θ(x_i)ᵀ φ(x_j)) over every position j: a softmax with no 1/sqrt(d) scaling.
For an image of N positions the dense form holds an (N, N) matrix, which stops working early: the
1/2-scale map of a 1024x1024 input has N = 262,144 and its dense matrix is 275 GB in float32.

`attention` therefore switches, above `dense_max` positions, to an exact chunked evaluation: queries
are processed `chunk` at a time (`lax.map`) and, for each query block, keys are consumed `chunk` at a
time (`lax.scan`) while a running maximum, normaliser and weighted sum are kept (the online softmax).
Peak memory is O(chunk²) per batch element on top of the inputs, and the compiled program has the
same size whatever N is. Keys that pad N up to a multiple of the chunk get a logit of -inf, so none is
counted, and padded queries are cut off at the end.

Logits, the softmax and its accumulators are float32 even for bf16 inputs (docs/conventions.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_CHUNK = 1024
DEFAULT_DENSE_MAX = 4096


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q kᵀ) v with the full (N, M) matrix.

  Args:
    q: (B, N, D) queries.
    k: (B, M, D) keys.
    v: (B, M, E) values.

  Returns:
    (B, N, E) in v's dtype.
  """
  logits = jnp.einsum('bnd,bmd->bnm', q, k, preferred_element_type=jnp.float32)
  # exp(logits - max) is multiplied by v first and the (N, E) result divided by the row sums,
  # rather than normalising the (N, M) matrix (`jax.nn.softmax`): the same value, one pass less
  # over the large matrix in each direction (docs/performance.md, "Attention"). The max only
  # guards exp against overflow; its gradient would cancel, so it is not differentiated.
  p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum('bnm,bme->bne', p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return (out / p.sum(axis=-1)[..., None]).astype(v.dtype)


def _pad_to(x: jax.Array, length: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int = DEFAULT_CHUNK
                      ) -> jax.Array:
  """softmax(q kᵀ) v computed blockwise with a running max and sum (exact).

  Args:
    q: (B, N, D) queries.
    k: (B, M, D) keys.
    v: (B, M, E) values.
    chunk: block length for queries and keys.

  Returns:
    (B, N, E) in v's dtype, equal to `dense_attention` up to float rounding.
  """
  b, n, _ = q.shape
  m, e = k.shape[1], v.shape[-1]
  num_q = -(-n // chunk)
  num_k = -(-m // chunk)
  # (blocks, B, chunk, .) so that lax.map / lax.scan walk over the blocks.
  qb = _pad_to(q, num_q * chunk).reshape(b, num_q, chunk, -1).swapaxes(0, 1)
  kb = _pad_to(k, num_k * chunk).reshape(b, num_k, chunk, -1).swapaxes(0, 1)
  vb = _pad_to(v, num_k * chunk).reshape(b, num_k, chunk, e).swapaxes(0, 1)
  key_valid = (jnp.arange(num_k * chunk) < m).reshape(num_k, 1, 1, chunk)

  def one_query_block(q_blk):
    def step(carry, inputs):
      run_max, run_sum, acc = carry
      k_blk, v_blk, valid = inputs
      logits = jnp.einsum('bnd,bmd->bnm', q_blk, k_blk, preferred_element_type=jnp.float32)
      logits = jnp.where(valid, logits, -jnp.inf)
      new_max = jnp.maximum(run_max, logits.max(axis=-1))
      correction = jnp.exp(run_max - new_max)
      p = jnp.exp(logits - new_max[..., None])
      run_sum = run_sum * correction + p.sum(axis=-1)
      acc = acc * correction[..., None] + jnp.einsum(
          'bnm,bme->bne', p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
      return (new_max, run_sum, acc), None

    # The first key block always holds a real key (m >= 1), so run_max is finite after it and
    # exp(-inf - finite) = 0 discards the initial state without NaNs.
    init = (jnp.full((b, chunk), -jnp.inf, jnp.float32), jnp.zeros((b, chunk), jnp.float32),
            jnp.zeros((b, chunk, e), jnp.float32))
    (_, run_sum, acc), _ = jax.lax.scan(step, init, (kb, vb, key_valid))
    return acc / run_sum[..., None]

  # Rematerialised so that differentiating holds one query block's residuals at a time
  # (O(N·chunk)) rather than all of them (O(N²)).
  out = jax.lax.map(jax.checkpoint(one_query_block), qb)  # (num_q, B, chunk, E)
  out = out.swapaxes(0, 1).reshape(b, num_q * chunk, e)[:, :n]
  return out.astype(v.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, chunk: int = DEFAULT_CHUNK,
              dense_max: int = DEFAULT_DENSE_MAX) -> jax.Array:
  """softmax(q kᵀ) v; dense while N and M are at most `dense_max`, chunked beyond.

  Args:
    q: (B, N, D) queries.
    k: (B, M, D) keys.
    v: (B, M, E) values.
    chunk: block length of the chunked path.
    dense_max: largest N (and M) evaluated densely; the choice is made at trace time from static
      shapes, so it never causes a recompilation by itself.

  Returns:
    (B, N, E) in v's dtype.
  """
  if q.shape[1] <= dense_max and k.shape[1] <= dense_max:
    return dense_attention(q, k, v)
  return chunked_attention(q, k, v, chunk=chunk)
