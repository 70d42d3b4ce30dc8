"""Numerical operations of SSEN: deformable convolution, attention, fixed-stencil resampling, local
feature matching, and a convolution with a faster kernel gradient.

Only jax and numpy are imported here (no flax, no tensorflow).
"""
from ssen_jax.ops.attention import attention, chunked_attention, dense_attention
from ssen_jax.ops.conv import conv2d
from ssen_jax.ops.deform_conv import deform_conv2d
from ssen_jax.ops.matching import (box_downsample, dense_match, displacements, local_correlation,
                                   match_flow, match_flow_phases, shift_image,
                                   soft_argmax_displacement, warp_by_flow)
from ssen_jax.ops.resize import bicubic_upsample, pixel_shuffle, upsample2x

__all__ = ['attention', 'bicubic_upsample', 'box_downsample', 'chunked_attention', 'conv2d',
           'deform_conv2d', 'dense_attention', 'dense_match', 'displacements', 'local_correlation',
           'match_flow', 'match_flow_phases', 'pixel_shuffle', 'shift_image', 'soft_argmax_displacement', 'upsample2x',
           'warp_by_flow']
