"""Converters from raw dataset layouts to sharded TFRecords (`python -m data_prep.convert`)."""
