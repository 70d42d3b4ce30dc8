"""ssen_jax: SSEN reference-based super-resolution (Shim et al., CVPR 2020) in JAX/Flax."""
__version__ = '0.1.0'


def __getattr__(name):
  """`ssen_jax.load_model` (ssen_jax.inference.api), imported on first use: `import ssen_jax`
  stays light (no JAX)."""
  if name in ('load_model', 'Model'):
    from ssen_jax.inference import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
