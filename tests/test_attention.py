"""Dense vs chunked attention, and the non-local block built on it."""
import importlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssen_jax import ops
from ssen_jax.models import NonLocalBlock

TOL = 1e-5


def _qkv(b, n, m, d, e, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  q = (rng.standard_normal((b, n, d)) * scale).astype(np.float32)
  k = (rng.standard_normal((b, m, d)) * scale).astype(np.float32)
  v = rng.standard_normal((b, m, e)).astype(np.float32)
  return q, k, v


def _numpy_attention(q, k, v):
  logits = np.einsum('bnd,bmd->bnm', q.astype(np.float64), k.astype(np.float64))
  logits -= logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w /= w.sum(-1, keepdims=True)
  return np.einsum('bnm,bme->bne', w, v.astype(np.float64))


@pytest.mark.parametrize('n, m, chunk', [
    (37, 37, 8),   # N not a multiple of the chunk.
    (5, 5, 16),    # N < chunk.
    (20, 33, 8),   # M != N, M not a multiple.
    (24, 7, 8),    # N a multiple, M < chunk.
    (1, 1, 4),     # a single position.
])
def test_chunked_equals_dense(n, m, chunk):
  # Scale 2 gives logits of ~±10-20, so the running max actually matters.
  q, k, v = _qkv(2, n, m, 4, 3, seed=n + m, scale=2.0)
  dense = np.asarray(ops.dense_attention(q, k, v))
  chunked = np.asarray(jax.jit(ops.chunked_attention, static_argnames='chunk')(q, k, v,
                                                                              chunk=chunk))
  ref = _numpy_attention(q, k, v)
  err = np.abs(chunked - dense).max()
  print(f'\n[attention n={n} m={m} chunk={chunk}] chunked-dense {err:.2e}, '
        f'dense-float64 {np.abs(dense - ref).max():.2e}')
  assert chunked.shape == (2, n, 3)
  assert err <= TOL
  assert np.abs(dense - ref).max() <= TOL


@pytest.mark.parametrize('n, m, chunk', [(37, 37, 8), (20, 33, 8), (5, 5, 16)])
def test_chunked_gradients_equal_dense(n, m, chunk):
  q, k, v = _qkv(1, n, m, 4, 3, seed=1, scale=2.0)
  cot = np.random.default_rng(2).standard_normal((1, n, 3)).astype(np.float32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

  g_dense = jax.grad(loss(ops.dense_attention), argnums=(0, 1, 2))(q, k, v)
  g_chunk = jax.jit(jax.grad(loss(lambda q, k, v: ops.chunked_attention(q, k, v, chunk=chunk)),
                             argnums=(0, 1, 2)))(q, k, v)
  errs = [float(np.abs(a - b).max()) for a, b in zip(g_chunk, g_dense)]
  print(f'\n[attention grad n={n} m={m}] d/dq {errs[0]:.2e} d/dk {errs[1]:.2e} '
        f'd/dv {errs[2]:.2e}')
  for err, g in zip(errs, g_dense):
    assert err <= TOL * (1 + np.abs(g).max())


def test_attention_switches_on_dense_max(monkeypatch):
  q, k, v = _qkv(1, 12, 12, 4, 3)
  calls = []
  module = importlib.import_module('ssen_jax.ops.attention')
  real_chunked = module.chunked_attention

  def spy(*args, **kwargs):
    calls.append(kwargs.get('chunk'))
    return real_chunked(*args, **kwargs)

  monkeypatch.setattr(module, 'chunked_attention', spy)
  dense = ops.attention(q, k, v, chunk=4, dense_max=12)
  assert calls == []
  chunked = ops.attention(q, k, v, chunk=4, dense_max=11)
  assert calls == [4]
  ops.attention(q[:, :5], k, v, chunk=4, dense_max=11)  # M alone above the threshold.
  assert calls == [4, 4]
  np.testing.assert_allclose(chunked, dense, atol=TOL)


def test_chunked_path_has_bounded_intermediates():
  """No (N, M) array appears in the chunked program: the largest is O(chunk²)."""
  n, chunk = 300, 16
  q, k, v = _qkv(1, n, n, 4, 3)
  jaxpr = jax.make_jaxpr(lambda q, k, v: ops.chunked_attention(q, k, v, chunk=chunk))(q, k, v)

  def sizes(jx):
    """Output sizes of every equation, nested jaxprs (scan, map, remat) included."""
    for eqn in jx.eqns:
      for var in eqn.outvars:
        yield int(np.prod(var.aval.shape))
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          if hasattr(sub, 'eqns'):  # Jaxpr
            yield from sizes(sub)
          elif hasattr(getattr(sub, 'jaxpr', None), 'eqns'):  # ClosedJaxpr
            yield from sizes(sub.jaxpr)

  all_sizes = list(sizes(jaxpr.jaxpr))
  assert chunk * chunk in all_sizes  # The walk reached the (chunk, chunk) logits block...
  assert max(all_sizes) < n * n / 4  # ...and nothing near (N, N) exists.


def _nonlocal_params(block, x, seed=0, randomize_wz=False):
  params = block.init(jax.random.PRNGKey(seed), x)['params']
  if randomize_wz:
    flat = flax.traverse_util.flatten_dict(params)
    rng = np.random.default_rng(seed)
    flat = {k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32) for k, v in flat.items()}
    params = flax.traverse_util.unflatten_dict(flat)
  return params


def test_nonlocal_is_identity_at_init():
  x = np.random.default_rng(0).standard_normal((2, 5, 3, 8)).astype(np.float32)
  block = NonLocalBlock(8)
  params = block.init(jax.random.PRNGKey(0), x)['params']
  assert not np.any(params['w_z']['kernel']) and not np.any(params['w_z']['bias'])
  assert np.any(params['theta']['kernel'])
  np.testing.assert_array_equal(block.apply({'params': params}, x), x)


def test_nonlocal_chunked_equals_dense():
  x = np.random.default_rng(1).standard_normal((1, 7, 5, 8)).astype(np.float32)  # N = 35.
  dense_block = NonLocalBlock(8)
  chunked_block = NonLocalBlock(8, chunk=8, dense_max=16)
  params = _nonlocal_params(dense_block, x, randomize_wz=True)
  dense = dense_block.apply({'params': params}, x)
  chunked = chunked_block.apply({'params': params}, x)
  assert np.abs(dense - x).max() > 1e-2  # The block is not the identity here.
  np.testing.assert_allclose(chunked, dense, atol=TOL)


def test_nonlocal_matches_numpy_formula():
  """z = x + W_z(softmax(θ(x) φ(x)ᵀ) g(x)), with 1x1 convs to C/2 and no 1/sqrt(d) scaling."""
  x = np.random.default_rng(2).standard_normal((1, 3, 4, 6)).astype(np.float32)
  block = NonLocalBlock(6)
  params = _nonlocal_params(block, x, randomize_wz=True)
  out = block.apply({'params': params}, x)
  flat = x.reshape(1, 12, 6).astype(np.float64)

  def proj(name):
    p = params[name]
    return flat @ np.asarray(p['kernel'])[0, 0] + np.asarray(p['bias'])

  y = _numpy_attention(proj('theta'), proj('phi'), proj('g'))
  z = flat + y @ np.asarray(params['w_z']['kernel'])[0, 0] + np.asarray(params['w_z']['bias'])
  assert params['theta']['kernel'].shape == (1, 1, 6, 3)
  np.testing.assert_allclose(out, z.reshape(x.shape), atol=TOL)
