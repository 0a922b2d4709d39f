"""Convolution for training on XLA:CPU ("gemm"): XLA's kernels, without XLA:CPU's
slow weight-gradient path.

Why XLA:CPU trains convolutions slowly: it computes a convolution's weight gradient as
a second convolution whose window is the whole image, after transposing the layer's
input to batch-innermost (C, H, W, N) order. Inside a training step XLA fuses that
transpose with the BatchNorm/ReLU/residual ops that produced the input, so instead of
reading the stored activation once it recomputes the elementwise chain - back through
several residual blocks - at a cache-hostile stride. In a jax.profiler trace of a
CIFAR ResNet-20 step (batch 128) those transpose fusions take more time than all the
convolutions together.

What this module does:

- k x k kernels: XLA's convolution for the forward pass, the input gradient and the
  weight gradient, but the weight gradient reads a copy of the input made by
  `materialize`, which XLA cannot fuse with the ops that produced it, so the
  transposes read a stored array. ResNet-20 training, batch 128, 2-core CPU:
  1.45-1.6x the images/s of plain ``"xla"`` (median of alternated windows).
- 1x1 kernels: plain matrix products over the (strided) pixels in all three passes:
  forward + both gradients 3-6x faster than XLA's 1x1 convolution on CPU.

Measured and rejected: the weight gradient as one matrix product per kernel tap
(``x_pad[:, i::s, j::s, :]^T @ g``), as nine products or one im2col product, with or
without the barrier. Every tap's strided slice is a copy on XLA:CPU, and nine copies
of the input cost more than XLA's own weight-gradient convolution once its
transposes read a stored input (0.4-0.7x of this module in the same step).

The derivative rule is a `jax.custom_jvp`, so forward-mode (jvp, Hessian-vector
products) and higher derivatives work as with ``"xla"``. Values and gradients equal
``"xla"``'s (tests/test_conv_impl.py). Registered as the "gemm" implementation of
`cnn.conv.conv2d` and as what ``impl="auto"`` picks on CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cnn import conv_xla as conv_lib

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]


def explicit_padding(x_hw: tuple[int, int], kernel_hw: tuple[int, int],
                     strides: tuple[int, int], padding: conv_lib.PairPadding,
                     dilation: tuple[int, int]) -> Pads:
  """((top, bottom), (left, right)) for 'SAME' / 'VALID' / explicit pairs, as XLA pads."""
  if isinstance(padding, str):
    window = [d * (k - 1) + 1 for k, d in zip(kernel_hw, dilation)]
    pads = lax.padtype_to_pads(x_hw, window, strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
  return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore[return-value]


def materialize(x: Array) -> Array:
  """`x`, stored once where it is computed: a fusion barrier for XLA:CPU.

  XLA:CPU drops `lax.optimization_barrier` before fusing, but it never fuses across a
  conditional, so an identity wrapped in `lax.cond` (on a predicate XLA cannot fold)
  makes consumers read the stored array instead of recomputing its producers. Both
  branches return x (the second as x + 0, which only turns -0.0 into +0.0), so the
  value does not depend on the predicate.
  """
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda v: v, lambda v: v + 0, x)


# ----------------------------------------------------------------------------------
# k x k kernels: XLA's convolution, weight gradient from a stored input
# ----------------------------------------------------------------------------------

@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _conv_stored_input(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads,
                       dilation: tuple[int, int], groups: int) -> Array:
  return conv_lib.conv_xla(x, kernel, strides, pads, dilation, groups)


def _conv_stored_input_jvp(strides, pads, dilation, groups, primals, tangents):
  """d conv = conv(dx, W) + conv(x, dW), the second term on the stored copy of x.

  Reverse mode transposes the second term into the weight gradient, which then reads
  the copy made here in the forward pass (see `materialize`).
  """
  x, kernel = primals
  dx, dkernel = tangents
  conv = functools.partial(conv_lib.conv_xla, strides=strides, padding=pads,
                           dilation=dilation, groups=groups)
  y = conv(x, kernel)
  terms = []
  if not isinstance(dx, SymbolicZero):
    terms.append(conv(dx, kernel))
  if not isinstance(dkernel, SymbolicZero):
    terms.append(conv(materialize(x), dkernel))
  dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
  return y, dy


_conv_stored_input.defjvp(_conv_stored_input_jvp, symbolic_zeros=True)


# ----------------------------------------------------------------------------------
# 1x1 kernels: matrix products
# ----------------------------------------------------------------------------------

def conv_1x1(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads,
             groups: int) -> Array:
  """A 1x1 convolution as a (pixels x C) @ (C x K) product over the strided pixels.

  Its gradients are matrix products too (JAX differentiates the product), which XLA
  runs as GEMMs without transposing the activations.
  """
  zero = jnp.zeros((), x.dtype)
  if any(lo or hi for lo, hi in pads):
    # lax.pad, unlike jnp.pad, also takes negative (cropping) padding, as XLA does.
    x = lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  if strides != (1, 1):
    x = x[:, ::strides[0], ::strides[1], :]
  n, h, w, c = x.shape
  k = kernel.shape[-1]
  if groups == 1:
    y = x.reshape(n * h * w, c) @ kernel.reshape(c, k)
  else:
    xg = x.reshape(n * h * w, groups, c // groups)
    wg = kernel.reshape(c // groups, groups, k // groups)
    y = jnp.einsum("pgc,cgk->pgk", xg, wg)
  return y.reshape(n, h, w, k)


def conv_gemm(x: Array, kernel: Array, strides: tuple[int, int],
              padding: conv_lib.PairPadding, dilation: tuple[int, int],
              groups: int) -> Array:
  """NHWC x HWIO convolution, same contract and values as `cnn.conv.conv_xla`.

  1x1 kernels are matrix products; larger ones XLA's convolution whose weight
  gradient reads a stored copy of the input (module docstring).
  """
  strides, dilation = tuple(strides), tuple(dilation)
  pads = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
  if kernel.shape[:2] == (1, 1):
    return conv_1x1(x, kernel, strides, pads, groups)
  return _conv_stored_input(x, kernel, strides, pads, dilation, groups)


