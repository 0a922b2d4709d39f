"""XLA's own convolution in the project's NHWC/HWIO layout: the reference every other
implementation (cnn/conv_gemm.py) is checked against and falls back to. `cnn.conv`
holds the registry; this module depends on nothing of the project, so the
implementations can import it without importing the registry back."""
from __future__ import annotations

from typing import Union

import jax
from jax import lax

PairPadding = Union[str, tuple[tuple[int, int], tuple[int, int]]]

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv_xla(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             padding: PairPadding, dilation: tuple[int, int], groups: int) -> jax.Array:
  """The reference: XLA's own convolution."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=padding, rhs_dilation=dilation,
      dimension_numbers=DIMENSION_NUMBERS, feature_group_count=groups)
