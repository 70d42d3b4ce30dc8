"""Numerical operations of SSEN: deformable convolution, attention, fixed-stencil resampling.

Only jax and numpy are imported here (no flax, no tensorflow).
"""
from ssen_jax.ops.attention import attention, chunked_attention, dense_attention
from ssen_jax.ops.deform_conv import deform_conv2d
from ssen_jax.ops.resize import bicubic_upsample, pixel_shuffle, upsample2x

__all__ = ['attention', 'bicubic_upsample', 'chunked_attention', 'deform_conv2d',
           'dense_attention', 'pixel_shuffle', 'upsample2x']
