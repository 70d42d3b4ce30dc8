"""ops.conv2d: its matrix-product kernel gradients equal XLA's; SplitConv keeps conv's params."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssen_jax import ops
from ssen_jax.models.layers import SplitConv, conv


def _reference_conv(x, kernel):
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((k // 2, k // 2),) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize('n, h, w, c, o, k', [
    (2, 6, 5, 4, 16, 3),   # even H: positions split in two halves per image.
    (1, 7, 3, 3, 5, 3),    # odd H: one product per image.
    (3, 4, 4, 8, 2, 1),    # 1x1 kernel.
    (1, 1, 1, 2, 3, 3),    # a single pixel: every tap but the centre sees padding.
    (2, 5, 6, 3, 4, 5),    # 5x5 kernel.
    (2, 6, 5, 8, 3, 3),    # C_out < C_in: the shifted output gradient, one product.
    (1, 5, 7, 6, 2, 5),    # ... with a 5x5 kernel and odd H.
    (1, 1, 1, 4, 1, 3),    # ... at a single pixel.
    (8, 4, 3, 5, 5, 3),    # C_out == C_in at MIN_BATCH_SQUARE images: per-tap products.
])
def test_conv2d_values_and_gradients_match_xla(n, h, w, c, o, k):
  rng = np.random.default_rng(n * 100 + h * 10 + w)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, c, o)), jnp.float32)
  cot = jnp.asarray(rng.standard_normal((n, h, w, o)), jnp.float32)

  def loss(fn):
    return lambda x, kernel: jnp.sum(fn(x, kernel) * cot)

  fast = jax.jit(lambda x, kernel: ops.conv2d(x, kernel, fast_kernel_grad=True))
  np.testing.assert_allclose(fast(x, kernel), _reference_conv(x, kernel), atol=1e-4)
  g_ref = jax.grad(loss(_reference_conv), argnums=(0, 1))(x, kernel)
  g_fast = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(x, kernel)
  for got, want in zip(g_fast, g_ref):
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, atol=1e-5 * scale)
  # Compared with float64 numpy as well, so that both are not wrong the same way.
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (k // 2,) * 2, (k // 2,) * 2, (0, 0)))
  dk = np.stack([np.einsum('nhwc,nhwo->co', xp[:, i:i + h, j:j + w], np.asarray(cot, np.float64))
                 for i in range(k) for j in range(k)]).reshape(k, k, c, o)
  np.testing.assert_allclose(g_fast[1], dk, atol=1e-5 * np.abs(dk).max())


def test_split_conv_equals_conv_of_concatenation():
  """Same params as `conv` (so checkpoints and the converter are unaffected), same values."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((2, 9, 7, 5)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((2, 9, 7, 3)), jnp.float32)
  plain = nn.Conv(27, (3, 3), padding=((1, 1), (1, 1)))
  params = plain.init(jax.random.key(0), jnp.concatenate([a, b], -1))
  params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
  want = plain.apply(params, jnp.concatenate([a, b], -1))
  for layer in (SplitConv(27, pad_features_to=16), SplitConv(27, fast_kernel_grad=False)):
    shapes = jax.tree.map(jnp.shape, layer.init(jax.random.key(0), a, b))
    assert shapes == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(layer.apply(params, a, b), want, atol=1e-4)
  zero = SplitConv(27, zero_init=True).init(jax.random.key(0), a, b)
  assert all(not np.any(p) for p in jax.tree.leaves(zero))


def test_conv_factory_uses_the_fast_gradient_for_stride_1():
  """Every stride-1 convolution of the models differentiates its kernel by products (on CPU)."""
  assert isinstance(conv(64), SplitConv) and conv(64).fast_kernel_grad
  assert isinstance(conv(64, 1), SplitConv)
  assert isinstance(conv(64, 3, 2), nn.Conv)  # Stride 2 (the reference and DOE downsampling).
  assert isinstance(conv(64, use_bias=False), nn.Conv)


def test_fast_kernel_grad_only_on_cpu(monkeypatch):
  """The product form is a CPU measurement: on other backends XLA's own gradient is traced."""
  x = jnp.ones((1, 4, 4, 2), jnp.float32)
  kernel = jnp.ones((3, 3, 2, 8), jnp.float32)

  def traced(backend, kernel=kernel):
    monkeypatch.setattr(jax, 'default_backend', lambda: backend)
    fn = lambda x, k: jnp.sum(ops.conv2d(x, k, fast_kernel_grad=True))
    return str(jax.make_jaxpr(jax.grad(fn, argnums=1))(x, kernel))

  # The product forms differentiate the kernel with dot_general (one per tap when C_out >= C_in,
  # a single one when C_out < C_in); XLA's own gradient is a convolution.
  assert traced('cpu').count('dot_general') == 9
  assert traced('cpu', jnp.ones((3, 3, 2, 1), jnp.float32)).count('dot_general') == 1
  assert 'dot_general' not in traced('gpu') and 'dot_general' not in traced('tpu')
  # C -> C: XLA's gradient below MIN_BATCH_SQUARE images, the products from there on.
  square = jnp.ones((3, 3, 2, 2), jnp.float32)
  assert 'dot_general' not in traced('cpu', square)
  x = jnp.ones((ops.conv.MIN_BATCH_SQUARE, 4, 4, 2), jnp.float32)
  assert traced('cpu', square).count('dot_general') == 9


def test_even_kernels_are_refused():
  with pytest.raises(ValueError, match='odd kernel sizes'):
    ops.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((2, 2, 2, 3)))
