"""TensorFlow's process defaults for this project, set before TensorFlow is first imported.

Imported (for its effect) by the modules that import TensorFlow or TFDS: the input pipeline and
data preparation. `import ssen_jax` and the inference side leave the environment alone.

tf.data uses oneDNN kernels by default, which announce themselves on stderr and may round
differently from machine to machine; the plain kernels keep the pipeline's output identical
everywhere. `setdefault`: a user's own setting wins, and once TensorFlow is imported neither
variable has any effect.
"""
import os

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
