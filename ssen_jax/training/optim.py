"""Losses, learning-rate schedule and optimisers (paper Sec. 3.5 and 4.2; docs/choices.md)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def charbonnier_loss(sr: jax.Array, hr: jax.Array, eps: float = 1e-6) -> jax.Array:
  """mean(sqrt((sr - hr)² + ε²)) over all pixels and channels (paper Eq. 4), in float32."""
  diff = sr.astype(jnp.float32) - hr.astype(jnp.float32)
  return jnp.mean(jnp.sqrt(diff * diff + eps * eps))


def gan_losses(real_logits: jax.Array, fake_logits: jax.Array):
  """PatchGAN losses of paper Eq. 5, as sigmoid cross-entropy averaged over patches.

  Returns:
    (discriminator loss, generator loss); the generator's is the non-saturating -log D(G(x)).
  """
  d_loss = (optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits)).mean()
            + optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits)).mean())
  g_loss = optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)).mean()
  return d_loss, g_loss


def learning_rate_schedule(cfg: ml_collections.ConfigDict,
                           base_lr: float | None = None) -> optax.Schedule:
  """Linear warm-up, then cosine annealing with warm restarts (SGDR, Loshchilov & Hutter).

  Cycle k (0-based) starts at base_lr * restart_decay**k and decays along a half cosine to
  min_lr_ratio times that peak over `cycle_steps` steps.
  """
  base_lr = cfg.learning_rate if base_lr is None else base_lr
  cycle = max(int(cfg.cycle_steps), 1)
  warmup = int(cfg.warmup_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    after = jnp.maximum(step - warmup, 0.0)
    k = jnp.floor(after / cycle)
    t = (after - k * cycle) / cycle
    peak = base_lr * jnp.power(cfg.restart_decay, k)
    floor = peak * cfg.min_lr_ratio
    lr = floor + 0.5 * (peak - floor) * (1 + jnp.cos(jnp.pi * t))
    if warmup > 0:
      lr = jnp.where(step < warmup, base_lr * (step + 1) / warmup, lr)
    return lr

  return schedule


def make_optimizer(cfg: ml_collections.ConfigDict,
                   base_lr: float | None = None) -> optax.GradientTransformation:
  """Adam(β1, β2) on the SGDR schedule, with optional global-norm clipping.

  `cfg.offset_lr_multiplier` (default 1) scales the steps of SSEN's offset branch: the dynamic
  offset estimators (`doe_*`) and the convolutions that predict offsets and masks (`offset_conv`).
  """
  tx = optax.adam(learning_rate_schedule(cfg, base_lr), b1=cfg.b1, b2=cfg.b2)
  multiplier = float(cfg.get('offset_lr_multiplier', 1.0))
  if multiplier != 1.0:
    tx = optax.chain(tx, scale_offset_branch(multiplier))
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx


def is_offset_branch(path) -> bool:
  """Whether a parameter path lies in SSEN's offset branch (a `doe_*` module or an `offset_conv`)."""
  names = [str(getattr(k, 'key', k)) for k in path]
  return any(n.startswith('doe_') or n == 'offset_conv' for n in names)


def scale_offset_branch(multiplier: float) -> optax.GradientTransformation:
  """Multiplies the updates of the offset branch's parameters (`is_offset_branch`) by `multiplier`."""

  def update_fn(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * multiplier if is_offset_branch(path) else u, updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
