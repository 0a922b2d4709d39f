"""Convolution whose weight gradient is a sum of matrix products ("gemm"), for XLA:CPU.

XLA:CPU computes a convolution's weight gradient as a second convolution whose window
is the whole image, after transposing the input to batch-innermost (C, H, W, N) order.
Inside a training step that transpose is fused with the BN/ReLU/residual ops that
produced the input, which XLA recomputes there with a strided access pattern: in a
CIFAR ResNet the transposes alone cost more than all the convolutions (see
/work/shared/STACK-NOTES.md and scripts/benchmark.py).

`conv_gemm` keeps XLA's convolution for the forward pass and the input gradient (both
are fast on CPU) and computes the weight gradient without any convolution:

    dW[i, j] = sum over n, h, w of  x_pad[n, h*s + i*d, w*s + j*d, :]^T  g[n, h, w, :]

one (C x P) @ (P x K) product per kernel tap (P = N * H_out * W_out), each operand a
strided slice of an NHWC array, so nothing is transposed but the tiny (K, C) results.
A 1x1 convolution is a plain matrix product in all three passes.

Registered as the "gemm" implementation of `cnn.conv.conv2d`, and as what
``impl="auto"`` picks on CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnn import conv as conv_lib

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


def _output_hw(x_hw, kernel_hw, strides, pads, dilation) -> tuple[int, int]:
  return tuple((n + lo + hi - (d * (k - 1) + 1)) // s + 1
               for n, k, s, (lo, hi), d in zip(x_hw, kernel_hw, strides, pads, dilation))


def _pad_hw(x: Array, pads: Pads) -> Array:
  # lax.pad, unlike jnp.pad, also takes negative (cropping) padding, which XLA allows.
  if not any(lo or hi for lo, hi in pads):
    return x
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _tap(x_pad: Array, i: int, j: int, out_hw: tuple[int, int],
         strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
  """The input pixels kernel tap (i, j) meets: x_pad[:, i*d + h*s, j*d + w*s, :]."""
  top, left = i * dilation[0], j * dilation[1]
  return lax.slice(
      x_pad, (0, top, left, 0),
      (x_pad.shape[0], top + (out_hw[0] - 1) * strides[0] + 1,
       left + (out_hw[1] - 1) * strides[1] + 1, x_pad.shape[3]),
      (1, strides[0], strides[1], 1))


def _tap_product(x_tap: Array, g: Array, groups: int) -> Array:
  """sum_p x_tap[p, c] g[p, k] per group, as the (C/groups, K) block of an HWIO kernel."""
  n, h, w, c = x_tap.shape
  k = g.shape[-1]
  if groups == 1:
    # Contracting the leading axis of both operands: XLA:CPU runs this as one GEMM
    # with a transposed operand, without copying it into a transposed layout.
    return jnp.einsum("pc,pk->ck", x_tap.reshape(n * h * w, c), g.reshape(n * h * w, k))
  xg = x_tap.reshape(n * h * w, groups, c // groups)
  gg = g.reshape(n * h * w, groups, k // groups)
  per_group = jnp.einsum("pgc,pgk->cgk", xg, gg)
  return per_group.reshape(c // groups, k)


def weight_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...],
                    strides: tuple[int, int], pads: Pads,
                    dilation: tuple[int, int], groups: int) -> Array:
  """d(loss)/d(kernel) of an NHWC/HWIO convolution: one matrix product per tap."""
  kh, kw = kernel_shape[:2]
  out_hw = g.shape[1:3]
  x_pad = _pad_hw(x, pads)
  taps = [_tap_product(_tap(x_pad, i, j, out_hw, strides, dilation), g, groups)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kernel_shape).astype(x.dtype)


def _conv_1x1(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads,
              groups: int) -> Array:
  """A 1x1 convolution as a matrix product over the (strided, padded) pixels."""
  out_hw = _output_hw(x.shape[1:3], (1, 1), strides, pads, (1, 1))
  x_tap = _tap(_pad_hw(x, pads), 0, 0, out_hw, strides, (1, 1))
  n, h, w, c = x_tap.shape
  k = kernel.shape[-1]
  if groups == 1:
    y = x_tap.reshape(n * h * w, c) @ kernel.reshape(c, k)
  else:
    xg = x_tap.reshape(n * h * w, groups, c // groups)
    wg = kernel.reshape(c // groups, groups, k // groups)
    y = jnp.einsum("pgc,cgk->pgk", xg, wg)
  return y.reshape(n, h, w, k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_taps(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads,
               dilation: tuple[int, int], groups: int) -> Array:
  return conv_lib.conv_xla(x, kernel, strides, pads, dilation, groups)


def _conv_taps_fwd(x, kernel, strides, pads, dilation, groups):
  y = conv_lib.conv_xla(x, kernel, strides, pads, dilation, groups)
  return y, (x, kernel)


def _conv_taps_bwd(strides, pads, dilation, groups, residuals, g):
  x, kernel = residuals
  # XLA's transposed convolution for the input gradient: it is fast on CPU.
  input_transpose = jax.linear_transpose(
      lambda x_: conv_lib.conv_xla(x_, kernel, strides, pads, dilation, groups), x)
  (dx,) = input_transpose(g)
  dkernel = weight_gradient(x, g, kernel.shape, strides, pads, dilation, groups)
  return dx, dkernel.astype(kernel.dtype)


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def conv_gemm(x: Array, kernel: Array, strides: tuple[int, int],
              padding: conv_lib.PairPadding, dilation: tuple[int, int],
              groups: int) -> Array:
  """NHWC x HWIO convolution, same contract as `cnn.conv.conv_xla`.

  Forward and input gradient by XLA's convolution, weight gradient as one matrix
  product per kernel tap (`weight_gradient`); a 1x1 kernel is a matrix product in
  every pass.
  """
  strides, dilation = tuple(strides), tuple(dilation)
  pads = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
  if kernel.shape[:2] == (1, 1):
    return _conv_1x1(x, kernel, strides, pads, groups)
  return _conv_taps(x, kernel, strides, pads, dilation, groups)


conv_lib.register_impl("gemm", conv_gemm)
