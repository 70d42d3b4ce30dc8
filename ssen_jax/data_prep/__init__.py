"""Raw dataset layouts -> TFDS datasets (`python -m ssen_jax.data_prep.tfds_build`), the one
training data format; reference views of photos; input throughput."""
