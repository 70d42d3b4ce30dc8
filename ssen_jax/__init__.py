"""ssen_jax: SSEN reference-based super-resolution (Shim et al., CVPR 2020) in JAX/Flax."""
import os as _os

# tf.data (input pipeline only) uses oneDNN kernels by default, which announce themselves on
# stderr and may round differently from machine to machine; the plain kernels keep the pipeline's
# output identical everywhere. setdefault: a user's own setting wins.
_os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

__version__ = '0.1.0'


def __getattr__(name):
  """`ssen_jax.load_model` (ssen_jax.inference.api), imported on first use: `import ssen_jax`
  stays light (no JAX)."""
  if name in ('load_model', 'Model'):
    from ssen_jax.inference import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
