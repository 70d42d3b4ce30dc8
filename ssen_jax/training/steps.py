"""Sharded training state and the jit-compiled train steps (docs/architecture.md, "Distribution").

Parameters and optimiser state are replicated over the mesh of `ssen_jax.core.sharding`; batches
are sharded on their leading dimension. The state is created already replicated by a jitted init
with `out_shardings`, and every update donates it.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from ssen_jax import models
from ssen_jax.core.sharding import batch_sharded, replicated
from ssen_jax.training import optim

State = Dict[str, Any]
Batch = Mapping[str, jax.Array]


class Trainer:
  """Holds the model, optimisers and compiled steps for one config.

  Attributes:
    model: the generator (flax module).
    disc: the PatchGAN discriminator, or None outside the GAN stage.
    tx, disc_tx: optax optimisers.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.model = models.create_model(config.model, config.dtype)
    self.uses_ref = models.uses_reference(config.model.variant)
    self.gan = config.loss.adversarial_weight > 0
    self.schedule = optim.learning_rate_schedule(config.optim)
    self.tx = optim.make_optimizer(config.optim)
    self.disc = None
    if self.gan:
      self.disc = models.PatchDiscriminator(config.gan.disc_features,
                                            dtype=jnp.dtype(config.dtype))
      self.disc_tx = optim.make_optimizer(config.optim, base_lr=config.gan.disc_learning_rate)
    self.train_step = jax.jit(self._gan_step if self.gan else self._step, donate_argnums=0,
                              in_shardings=(replicated(mesh), batch_sharded(mesh)),
                              out_shardings=(replicated(mesh), replicated(mesh)))

  # -- State ---------------------------------------------------------------------------------

  def _init(self, rng: jax.Array) -> State:
    g_rng, d_rng = jax.random.split(rng)
    lr, ref = models.init_inputs(self.config.model,
                                 self.config.data.hr_patch // self.config.model.scale)
    params = self.model.init(g_rng, lr, ref)['params']
    state = {'step': jnp.zeros((), jnp.int32), 'params': params,
             'opt_state': self.tx.init(params)}
    if self.gan:
      hr = jnp.zeros((1, lr.shape[1] * self.config.model.scale,
                      lr.shape[2] * self.config.model.scale, 3))
      disc_params = self.disc.init(d_rng, hr)['params']
      state['disc_params'] = disc_params
      state['disc_opt_state'] = self.disc_tx.init(disc_params)
    return state

  def init_state(self, seed: int | jax.Array, params: Any = None) -> State:
    """Creates the state directly replicated over the mesh (no host round trip).

    Args:
      seed: an integer seed, or a PRNG key. Integer seeds make an 'rbg' key: initialising a
        full-size network with threefry keys takes several times longer to compile on CPU, and
        initial values need no more than rbg gives.
      params: generator parameters to start from instead of fresh ones (the GAN stage's
        reconstruction model, imported PyTorch weights); numpy or jax arrays of the model's tree.
        Optimiser (and discriminator) states are fresh either way.
    """
    rng = jax.random.key(seed, impl='rbg') if isinstance(seed, int) else seed
    state = jax.jit(self._init, out_shardings=replicated(self.mesh))(rng)
    if params is not None:
      place = lambda new, like: jax.device_put(
          new if isinstance(new, jax.Array) else np.asarray(new, like.dtype), like.sharding)
      state = dict(state, params=jax.tree.map(place, params, state['params']))
    return state

  def abstract_state(self) -> State:
    """Shapes, dtypes and shardings of the state, for checkpoint restoration."""
    shapes = jax.eval_shape(self._init, jax.random.key(0, impl='rbg'))
    sharding = replicated(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)

  # -- Steps ---------------------------------------------------------------------------------

  @staticmethod
  def _all_finite(*trees) -> jax.Array:
    """One boolean: every leaf of `trees` is finite (one fused reduction per leaf, inside the
    step, so that the host reads a single scalar before it saves)."""
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack(leaves))

  def _generate(self, params, batch: Batch) -> jax.Array:
    return self.model.apply({'params': params}, batch['lr'], batch.get('ref'))

  def _rec_loss(self, sr: jax.Array, hr: jax.Array) -> jax.Array:
    return optim.charbonnier_loss(sr, hr, self.config.loss.charbonnier_eps)

  @staticmethod
  def _psnr(sr: jax.Array, hr: jax.Array) -> jax.Array:
    """Training PSNR (RGB, float, no shave): a cheap progress signal, not the published metric."""
    mse = jnp.mean((jnp.clip(sr, 0, 1) - hr) ** 2)
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))

  def _alignment_loss(self, params, aligned: jax.Array, hr: jax.Array) -> jax.Array:
    """Charbonnier distance between SSEN's output and the (fixed) features of the HR crop itself.

    The HR crop is the perfectly aligned reference, so `F_ref(HR)` is what SSEN should produce from
    any reference of the same content; the target is a constant (stop_gradient), so the extractor
    cannot satisfy the loss by collapsing its features. docs/choices.md, "Alignment loss".
    """
    target = jax.lax.stop_gradient(
        self.model.apply({'params': params}, hr, method='ref_features'))
    return optim.charbonnier_loss(aligned, target, self.config.loss.charbonnier_eps)

  def _step(self, state: State, batch: Batch) -> Tuple[State, Dict[str, jax.Array]]:
    align_weight = float(self.config.loss.get('align_weight', 0.0))

    def loss_fn(params):
      if align_weight > 0:
        sr, inter = self.model.apply({'params': params}, batch['lr'], batch['ref'],
                                     mutable=['intermediates'])
        align = self._alignment_loss(params, inter['intermediates']['aligned'][0], batch['hr'])
        rec = self._rec_loss(sr, batch['hr'])
        return rec + align_weight * align, (sr, rec, align)
      sr = self._generate(params, batch)
      rec = self._rec_loss(sr, batch['hr'])
      return rec, (sr, rec, jnp.zeros(()))

    (loss, (sr, rec, align)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = self.tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss, 'psnr': self._psnr(sr, batch['hr']),
               'grad_norm': optax.tree.norm(grads),
               **({'rec_loss': rec, 'align_loss': align} if align_weight > 0 else {}),
               'learning_rate': self.schedule(state['step']),
               'params_finite': self._all_finite(params, opt_state)}
    new_state = dict(state, step=state['step'] + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  def _gan_step(self, state: State, batch: Batch) -> Tuple[State, Dict[str, jax.Array]]:
    """One discriminator update on (HR, detached SR), then one generator update.

    The generator runs forward once: its VJP is kept and fed the gradient of the combined loss
    with respect to SR, computed against the freshly updated discriminator.
    """
    hr = batch['hr']
    sr, generator_vjp = jax.vjp(lambda p: self._generate(p, batch), state['params'])

    def d_loss_fn(disc_params):
      real = self.disc.apply({'params': disc_params}, hr)
      fake = self.disc.apply({'params': disc_params}, jax.lax.stop_gradient(sr))
      return optim.gan_losses(real, fake)[0]

    d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state['disc_params'])
    d_updates, disc_opt_state = self.disc_tx.update(d_grads, state['disc_opt_state'],
                                                    state['disc_params'])
    disc_params = optax.apply_updates(state['disc_params'], d_updates)

    def g_loss_fn(sr):
      rec = self._rec_loss(sr, hr)
      fake = self.disc.apply({'params': disc_params}, sr)
      adv = optim.gan_losses(jnp.zeros_like(fake), fake)[1]
      return rec + self.config.loss.adversarial_weight * adv, (rec, adv)

    (loss, (rec, adv)), sr_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(sr)
    grads, = generator_vjp(sr_grad)
    updates, opt_state = self.tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss, 'rec_loss': rec, 'adv_loss': adv, 'disc_loss': d_loss,
               'psnr': self._psnr(sr, hr), 'grad_norm': optax.tree.norm(grads),
               'learning_rate': self.schedule(state['step']),
               'params_finite': self._all_finite(params, opt_state, disc_params, disc_opt_state)}
    new_state = dict(state, step=state['step'] + 1, params=params, opt_state=opt_state,
                     disc_params=disc_params, disc_opt_state=disc_opt_state)
    return new_state, metrics
