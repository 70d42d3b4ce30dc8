"""Converters from raw dataset layouts to sharded TFRecords (`python -m ssen_jax.data_prep.convert`)."""
