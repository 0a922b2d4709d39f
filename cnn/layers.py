"""The layers of the course as pure functions and Flax Linen modules (NHWC).

Pure functions hold the math the slides teach (`conv_output_size`, `local_response_norm`,
`apply_kernel`); modules wrap them with parameters. Every module that changes the
spatial size checks the course's rule ``(N - F + 2P) / S + 1`` at trace time, so an
impossible configuration fails with one sentence that names the layer and the numbers
instead of an XLA error.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn import conv as conv_lib
from cnn.conv import Padding, normalize_padding, pair
from cnn.errors import ConfigError, unknown_choice

Array = jax.Array
Dtype = Any

# He et al. (2015) initialisation, used by the papers from VGG on.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


# ----------------------------------------------------------------------------------
# Output size: the course's rule
# ----------------------------------------------------------------------------------

def conv_output_size(n: int, f: int, padding: int | tuple[int, int] | str = 0,
                     stride: int = 1, dilation: int = 1, *,
                     layer: str = "layer") -> int:
  """Output length of a convolution or pooling window along one axis.

  ``(N - F + 2P) / S + 1`` with the dilated filter size ``F = d (F - 1) + 1``. Padding
  is P (both sides), (lo, hi), 'VALID' (P = 0) or 'SAME' (output ceil(N / S), the
  TensorFlow rule). A fractional result is illegal, as in the course, and so is a
  result below 1: both raise ConfigError naming `layer` and the numbers.
  """
  if min(n, f, stride, dilation) <= 0:
    raise ConfigError(
        f"{layer}: input size, kernel size, stride and dilation must be positive, got "
        f"N={n}, F={f}, S={stride}, d={dilation}.")
  f_eff = dilation * (f - 1) + 1
  if isinstance(padding, str):
    if padding.upper() == "SAME":
      return -(-n // stride)
    padding = 0
  lo, hi = (padding, padding) if isinstance(padding, int) else padding
  span = n - f_eff + lo + hi
  size = span / stride + 1
  pad_txt = f"2*{lo}" if lo == hi else f"{lo}+{hi}"
  formula = f"({n} - {f_eff} + {pad_txt}) / {stride} + 1 = {size:g}"
  if span < 0:
    raise ConfigError(
        f"{layer}: input of size {n} is smaller than its {f_eff}-wide window "
        f"({formula}); use a larger input or a smaller kernel.")
  if span % stride:
    raise ConfigError(
        f"{layer}: output size {formula} is fractional; change the stride, "
        "padding or kernel size so that it divides evenly.")
  return span // stride + 1


def _check_spatial(x: Array, kernel: tuple[int, int], strides: tuple[int, int],
                   padding: conv_lib.PairPadding, dilation: tuple[int, int],
                   layer: str) -> None:
  if x.ndim != 4:
    raise ConfigError(f"{layer}: expects NHWC input with 4 dimensions, got shape {x.shape}.")
  for axis in range(2):
    pad = padding if isinstance(padding, str) else padding[axis]
    conv_output_size(x.shape[1 + axis], kernel[axis], pad, strides[axis],
                     dilation[axis], layer=layer)


def _layer_name(module: nn.Module) -> str:
  path = "/".join(module.scope.path) if module.scope is not None else ""
  return path or type(module).__name__


# ----------------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------------

class Conv(nn.Module):
  """2-D convolution: filters, kernel, stride, padding, dilation, groups, bias.

  ``padding`` is 'SAME', 'VALID', P, (P_h, P_w) or ((top, bottom), (left, right)).
  ``groups`` splits input and output channels into groups (AlexNet's two towers,
  ResNeXt); ``groups == in_channels`` is a depthwise convolution. ``impl`` selects the
  implementation in `cnn.conv` ('xla', 'auto', ...). ``strict=False`` floors a
  fractional output size (PyTorch's rule) instead of rejecting it.
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  dilation: int | Sequence[int] = 1
  groups: int = 1
  use_bias: bool = True
  strict: bool = True
  impl: str = "auto"
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    name = _layer_name(self)
    kernel_size = pair(self.kernel_size, "kernel_size")
    strides = pair(self.strides, "strides")
    dilation = pair(self.dilation, "dilation")
    padding = normalize_padding(self.padding)
    in_features = x.shape[-1]
    if (self.features <= 0 or self.groups <= 0 or min(kernel_size) <= 0
        or min(strides) <= 0 or min(dilation) <= 0):
      raise ConfigError(
          f"{name}: filters, groups, kernel size, stride and dilation must be positive, "
          f"got {self.features}, {self.groups}, {kernel_size}, {strides}, {dilation}.")
    if in_features % self.groups or self.features % self.groups:
      raise ConfigError(
          f"{name}: groups={self.groups} must divide both the input channels "
          f"({in_features}) and the filters ({self.features}).")
    if self.strict:
      _check_spatial(x, kernel_size, strides, padding, dilation, name)
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (in_features // self.groups, self.features),
                        self.param_dtype)
    dtype = self.dtype or x.dtype
    y = conv_lib.conv2d(x.astype(dtype), kernel.astype(dtype), strides=strides,
                        padding=padding, dilation=dilation, groups=self.groups,
                        impl=self.impl)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


class ConvTranspose(nn.Module):
  """Transposed ("up-") convolution: output size (N - 1) S + F - 2P for padding P.

  With 'VALID' padding and kernel == stride (U-Net's 2x2/2) every input pixel becomes
  an S x S block: the output is exactly S times larger.
  """
  features: int
  kernel_size: int | Sequence[int] = 2
  strides: int | Sequence[int] = 2
  padding: Padding = "VALID"
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel_size = pair(self.kernel_size, "kernel_size")
    padding = normalize_padding(self.padding)
    if not isinstance(padding, str):
      # The course's (and PyTorch's) P crops P pixels off each border of the full
      # output, but lax.conv_transpose pads the stride-dilated input instead: P
      # cropped is F - 1 - P padded.
      padding = tuple((f - 1 - lo, f - 1 - hi) for f, (lo, hi) in zip(kernel_size, padding))
    # transpose_kernel makes this the exact transpose (the input gradient) of a Conv
    # with the same kernel, as in PyTorch: each input pixel scatters the kernel itself,
    # not its mirror image. The kernel is then (F, F, features, in_channels).
    return nn.ConvTranspose(
        self.features, kernel_size, strides=pair(self.strides, "strides"),
        padding=padding, use_bias=self.use_bias, transpose_kernel=True,
        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        name="deconv")(x)


class SeparableConv(nn.Module):
  """Depthwise-separable convolution: a depthwise KxK (one filter per input channel,
  times `depth_multiplier`) then a 1x1 pointwise convolution to `features`.

  Multiplications per output pixel: K*K*C_in*m + C_in*m*features, against
  K*K*C_in*features for the full convolution (MobileNet, Xception).
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  dilation: int | Sequence[int] = 1
  depth_multiplier: int = 1
  use_bias: bool = False
  impl: str = "auto"
  dtype: Optional[Dtype] = None
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    x = Conv(channels * self.depth_multiplier, self.kernel_size, self.strides,
             self.padding, self.dilation, groups=channels, use_bias=False,
             impl=self.impl, dtype=self.dtype, kernel_init=self.kernel_init,
             name="depthwise")(x)
    return Conv(self.features, 1, use_bias=self.use_bias, impl=self.impl,
                dtype=self.dtype, kernel_init=self.kernel_init, name="pointwise")(x)


# ----------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------

def _pool_args(x: Array, window, strides, padding, layer: str, strict: bool):
  window = pair(window, "window")
  strides = pair(window if strides is None else strides, "strides")
  padding = normalize_padding(padding)
  if strict:
    _check_spatial(x, window, strides, padding, (1, 1), layer)
  return window, strides, padding


def max_pool(x: Array, window: int | Sequence[int] = 2, strides=None,
             padding: Padding = "VALID", *, layer: str = "max_pool",
             strict: bool = True, return_indices: bool = False
             ) -> Array | tuple[Array, Array]:
  """Max over each window (stride defaults to the window: 2x2/2 halves the size).

  ``return_indices=True`` also returns the switches SegNet's decoder unpools with:
  for every output, the position ``h * W + w`` of its maximum in its own (n, c) input
  plane (int32, same NHWC shape as the output; PyTorch's ``return_indices``
  convention, ties going to the first maximum in row-major window order).
  """
  window, strides, padding = _pool_args(x, window, strides, padding, layer, strict)
  if not return_indices:
    return nn.max_pool(x, window, strides, padding)
  return _max_pool_with_indices(x, window, strides, padding)


def _max_pool_with_indices(x: Array, window: tuple[int, int], strides: tuple[int, int],
                           padding: conv_lib.PairPadding) -> tuple[Array, Array]:
  """Max pooling as an argmax over the window's strided shifts (one slice each)."""
  _, h, w, _ = x.shape
  if isinstance(padding, str):
    padding = tuple(lax.padtype_to_pads((h, w), window, strides, padding))
  (top, bottom), (left, right) = padding
  fill = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
  ho = (h + top + bottom - window[0]) // strides[0] + 1
  wo = (w + left + right - window[1]) // strides[1] + 1
  shifts, offsets = [], []
  for a in range(window[0]):
    for b in range(window[1]):
      shifts.append(lax.slice(xp, (0, a, b, 0),
                              (xp.shape[0], a + strides[0] * (ho - 1) + 1,
                               b + strides[1] * (wo - 1) + 1, xp.shape[3]),
                              (1, strides[0], strides[1], 1)))
      offsets.append((a, b))
  stack = jnp.stack(shifts)                       # (window cells, N, Ho, Wo, C)
  best = jnp.argmax(stack, axis=0)                # the first maximum wins ties
  y = jnp.take_along_axis(stack, best[None], axis=0)[0]
  rows = (jnp.arange(ho) * strides[0] - top)[None, :, None, None]
  cols = (jnp.arange(wo) * strides[1] - left)[None, None, :, None]
  off_r = jnp.array([o[0] for o in offsets], jnp.int32)[best]
  off_c = jnp.array([o[1] for o in offsets], jnp.int32)[best]
  return y, ((rows + off_r) * w + cols + off_c).astype(jnp.int32)


def max_unpool(y: Array, indices: Array, output_shape: Sequence[int] | None = None,
               window: int | Sequence[int] = 2, strides=None) -> Array:
  """The inverse of `max_pool` with switches: every value goes back to the position
  its index names, everything else is zero (SegNet's unpooling).

  ``output_shape`` is (H, W) or the full (N, H, W, C); by default PyTorch's
  ``(H_in - 1) * stride + window``. Where windows overlap and two outputs name the same
  position, one of them is kept.
  """
  if y.shape != indices.shape:
    raise ConfigError(
        f"max_unpool: values {y.shape} and indices {indices.shape} must have the same shape.")
  n, hi, wi, c = y.shape
  if output_shape is None:
    window = pair(window, "window")
    strides = pair(window if strides is None else strides, "strides")
    output_shape = ((hi - 1) * strides[0] + window[0], (wi - 1) * strides[1] + window[1])
  output_shape = tuple(int(s) for s in output_shape)
  if len(output_shape) == 4:
    if output_shape[0] != n or output_shape[3] != c:
      raise ConfigError(
          f"max_unpool: output_shape {output_shape} does not match values of shape "
          f"{y.shape} in batch and channels.")
    output_shape = output_shape[1:3]
  if len(output_shape) != 2:
    raise ConfigError(f"max_unpool: output_shape must be (H, W) or (N, H, W, C), "
                      f"got {output_shape}.")
  h, w = output_shape
  flat = jnp.zeros((n, h * w, c), y.dtype)
  batch = jnp.arange(n)[:, None, None]
  chan = jnp.arange(c)[None, None, :]
  flat = flat.at[batch, indices.reshape(n, hi * wi, c), chan].set(
      y.reshape(n, hi * wi, c), mode="drop")
  return flat.reshape(n, h, w, c)


# ----------------------------------------------------------------------------------
# Upsampling by interpolation (the "Types of Upsampling" slide's first kind)
# ----------------------------------------------------------------------------------

UPSAMPLE_METHODS = ("nearest", "bilinear", "bicubic")


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution weights of the 4 neighbours at distances 1+t, t, 1-t, 2-t
  (PyTorch's a = -0.75)."""

  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1

  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

  return np.stack([far(1 + t), near(t), near(1 - t), far(2 - t)], axis=-1)


def _interp_matrix(n: int, factor: int, method: str) -> np.ndarray:
  """(n * factor, n) matrix of one axis's interpolation weights, half-pixel centres
  (PyTorch's align_corners=False): output o samples input coordinate
  (o + 0.5) / factor - 0.5."""
  out = np.arange(n * factor)
  m = np.zeros((n * factor, n), np.float64)
  if method == "nearest":
    m[out, out // factor] = 1.0
    return m
  src = (out + 0.5) / factor - 0.5
  if method == "bilinear":
    src = np.maximum(src, 0.0)  # PyTorch clamps the left border for linear modes
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    np.add.at(m, (out, i0), 1 - lam)
    np.add.at(m, (out, i1), lam)
    return m
  i = np.floor(src).astype(int)
  weights = _cubic_weights(src - i)
  for k in range(4):  # neighbours i-1 .. i+2, clamped to the border as PyTorch does
    np.add.at(m, (out, np.clip(i - 1 + k, 0, n - 1)), weights[:, k])
  return m


def upsample(x: Array, factor: int | Sequence[int], method: str = "nearest") -> Array:
  """(N, H, W, C) -> (N, fH, fW, C) by nearest, bilinear or bicubic interpolation.

  Integer factors only; the sampling matches torch.nn.functional.interpolate with
  align_corners=False (half-pixel centres, a = -0.75 for bicubic, borders clamped).
  Each axis is one small matrix product, so it is exact to float32 and differentiable.
  """
  if method not in UPSAMPLE_METHODS:
    raise unknown_choice("upsampling method", method, UPSAMPLE_METHODS)
  if x.ndim != 4:
    raise ConfigError(f"upsample: expects NHWC input with 4 dimensions, got shape {x.shape}.")
  fh, fw = pair(factor, "factor")
  if fh < 1 or fw < 1:
    raise ConfigError(f"upsample: factor must be a positive integer, got {(fh, fw)}.")
  if method == "nearest":
    return jnp.repeat(jnp.repeat(x, fh, axis=1), fw, axis=2)
  mh = jnp.asarray(_interp_matrix(x.shape[1], fh, method), x.dtype)
  mw = jnp.asarray(_interp_matrix(x.shape[2], fw, method), x.dtype)
  return jnp.einsum("oh,nhwc,pw->nopc", mh, x, mw, precision=lax.Precision.HIGHEST)


class Upsample(nn.Module):
  """`upsample` as a layer: no parameters."""
  factor: int | Sequence[int] = 2
  method: str = "nearest"

  def __call__(self, x: Array) -> Array:
    return upsample(x, self.factor, self.method)


def avg_pool(x: Array, window: int | Sequence[int] = 2, strides=None,
             padding: Padding = "VALID", *, layer: str = "avg_pool",
             strict: bool = True) -> Array:
  """Mean over each window; padded zeros are not counted (as in Caffe and PyTorch's
  count_include_pad=False)."""
  window, strides, padding = _pool_args(x, window, strides, padding, layer, strict)
  return nn.avg_pool(x, window, strides, padding, count_include_pad=False)


def global_avg_pool(x: Array) -> Array:
  """(N, H, W, C) -> (N, C): the mean of each feature map."""
  return jnp.mean(x, axis=(1, 2))


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_in, n_out) averaging weights of PyTorch's adaptive pooling: output i is the
  mean of inputs floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1 (bins
  overlap where n_out does not divide n_in; an input smaller than n_out repeats)."""
  m = np.zeros((n_in, n_out), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[start:end, i] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: Array, size: int | Sequence[int]) -> Array:
  """(N, H, W, C) -> (N, h, w, C) as PyTorch's ``AdaptiveAvgPool2d((h, w))``: the
  fixed-size map torchvision's VGG (7x7) and AlexNet (6x6) flatten at any input size.
  An input already of that size is returned as it is."""
  h, w = pair(size, "size")
  if x.shape[1:3] == (h, w):
    return x
  rows = jnp.asarray(_adaptive_matrix(x.shape[1], h), x.dtype)
  cols = jnp.asarray(_adaptive_matrix(x.shape[2], w), x.dtype)
  return jnp.einsum("nhwc,hi,wj->nijc", x, rows, cols)


class MaxPool(nn.Module):
  """``strict=False`` floors a fractional output size (PyTorch's rule) instead of
  rejecting it."""
  window: int | Sequence[int] = 2
  strides: Optional[int | Sequence[int]] = None
  padding: Padding = "VALID"
  strict: bool = True

  def __call__(self, x: Array) -> Array:
    return max_pool(x, self.window, self.strides, self.padding, layer=_layer_name(self),
                    strict=self.strict)


class AvgPool(nn.Module):
  window: int | Sequence[int] = 2
  strides: Optional[int | Sequence[int]] = None
  padding: Padding = "VALID"

  def __call__(self, x: Array) -> Array:
    return avg_pool(x, self.window, self.strides, self.padding, layer=_layer_name(self))


class GlobalAvgPool(nn.Module):
  def __call__(self, x: Array) -> Array:
    return global_avg_pool(x)


# ----------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------

def _batch_stats(x: Array) -> tuple[Array, Array]:
  """Per-channel mean and biased variance over every axis but the last, as flax's
  BatchNorm computes them: E[x^2] - E[x]^2, clipped at 0. Two sums, which XLA:CPU runs
  as two fast reductions (one variadic `lax.reduce` of both measured 40 % slower)."""
  axes = tuple(range(x.ndim - 1))
  count = np.prod(x.shape[:-1])
  mean = jnp.sum(x, axes) / count
  mean_sq = jnp.sum(jnp.square(x), axes) / count
  return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


def _batch_norm_forward(x, scale, bias, epsilon):
  """(y, mean, var, inv, a): the output with its statistics, inv = (var + epsilon)
  ^ -1/2 and the per-channel factor a = scale * inv that the derivative rule reuses."""
  mean, var = _batch_stats(x)
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  return x * a + (bias - mean * a), mean, var, inv, a


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array,
                     epsilon: float) -> tuple[Array, Array, Array]:
  """Training-mode batch normalisation: (y, mean, var), y = (x - mean) / sqrt(var +
  epsilon) * scale + bias with the batch's statistics (`_batch_stats`), channels last.

  The same function as flax's `nn.BatchNorm` (to float32 rounding), written so that
  XLA fuses it into fewer passes over the activations: y is one multiply-add per
  element with per-channel coefficients, and the derivative rule below gives the
  input's gradient as one more (a * g + c1 * x + c0) after two reductions, where
  differentiating flax's formula saves and re-reads x - mean, the normalised x and the
  chain through rsqrt (ResNet-56's gradient: 10 % faster on CPU, README Performance).
  A `custom_jvp`, so forward mode and reverse mode (its transpose) both work. Where
  the variance is clipped at 0 (a channel constant over the batch, up to rounding)
  the rule differentiates the unclipped variance, whose derivative 2 (x - mean) / m
  is 0 there too.
  """
  y, mean, var, _, _ = _batch_norm_forward(x, scale, bias, epsilon)
  return y, mean, var


@batch_norm_train.defjvp
def _batch_norm_train_jvp(epsilon, primals, tangents):
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  axes = tuple(range(x.ndim - 1))
  y, mean, var, inv, a = _batch_norm_forward(x, scale, bias, epsilon)
  dmean = jnp.mean(dx, axes)
  dvar = 2.0 * (jnp.mean(x * dx, axes) - mean * dmean)   # d E[(x - mean)^2]
  da = dscale * inv - 0.5 * a * inv * inv * dvar          # a = scale * (var + eps)^-1/2
  dy = a * dx + x * da + (dbias - dmean * a - mean * da)
  return (y, mean, var), (dy, dmean, dvar)


class _TrainingBatchNorm(nn.Module):
  """`batch_norm_train` with flax BatchNorm's variables (params scale and bias,
  batch_stats mean and var, float32) and its update of the running averages."""
  momentum: float
  epsilon: float
  scale_init: Callable

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (x.shape[-1],)
    scale = self.param("scale", self.scale_init, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():   # as flax: init leaves the averages at 0 and 1
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class BatchNorm(nn.Module):
  """Batch normalisation: batch statistics over N, H, W when training (and the running
  averages updated with `momentum`), the running averages in evaluation.

  ``axis_name`` averages the statistics over a named device axis (the global batch in
  a `shard_map` step); leave it None for per-device ("ghost batch") statistics.

  Training on float32 without ``axis_name`` runs `batch_norm_train` (the same values,
  fewer passes over memory); everything else runs flax's `nn.BatchNorm`. Both keep the
  same variables under "bn", so checkpoints do not depend on which one ran.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: Callable = nn.initializers.ones
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    if (train and self.axis_name is None and x.dtype == jnp.float32
        and self.dtype in (None, jnp.float32)):
      return _TrainingBatchNorm(self.momentum, self.epsilon, self.scale_init,
                                name="bn")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                        epsilon=self.epsilon, scale_init=self.scale_init,
                        axis_name=self.axis_name, dtype=self.dtype, name="bn")(x)


def local_response_norm(x: Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75) -> Array:
  """AlexNet's local response normalisation across channels (Krizhevsky et al. 2012,
  section 3.3): b_c = a_c / (k + alpha * sum_{c' in window(c)} a_c'^2) ** beta, the
  window being `size` adjacent channels centred on c. alpha is not divided by `size`
  (PyTorch's LocalResponseNorm divides it)."""
  squared = jnp.square(x)
  half = size // 2
  padded = jnp.pad(squared, [(0, 0)] * (x.ndim - 1) + [(half, size - 1 - half)])
  window_sum = lax.reduce_window(padded, 0.0, lax.add, (1,) * (x.ndim - 1) + (size,),
                                 (1,) * x.ndim, "VALID")
  return x / jnp.power(k + alpha * window_sum, beta)


class LocalResponseNorm(nn.Module):
  """The course's NORM layer (AlexNet, VGG A-LRN): k=2, n=5, alpha=1e-4, beta=0.75."""
  size: int = 5
  k: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75

  def __call__(self, x: Array) -> Array:
    return local_response_norm(x, self.size, self.k, self.alpha, self.beta)


# ----------------------------------------------------------------------------------
# Activations, dense, flatten, dropout
# ----------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "softmax": nn.softmax,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[Array], Array]:
  """The activation function called `name` (see ACTIVATIONS)."""
  if name not in ACTIVATIONS:
    raise unknown_choice("activation", name, ACTIVATIONS)
  return ACTIVATIONS[name]


class Activation(nn.Module):
  """An activation by name, e.g. ``Activation("tanh")`` for LeNet-5."""
  fn: str = "relu"

  def __call__(self, x: Array) -> Array:
    return activation(self.fn)(x)


Dense = nn.Dense


def flatten(x: Array) -> Array:
  """(N, ...) -> (N, prod(...))."""
  return x.reshape((x.shape[0], -1))


class Flatten(nn.Module):
  def __call__(self, x: Array) -> Array:
    return flatten(x)


class Dropout(nn.Module):
  """Zeroes a fraction `rate` of activations when training (scaling the rest by
  1 / (1 - rate)); the identity in evaluation. Draws from the 'dropout' rng stream."""
  rate: float = 0.5

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    return nn.Dropout(self.rate, deterministic=not train)(x)


# ----------------------------------------------------------------------------------
# The course's fixed kernels ("what does this kernel do?")
# ----------------------------------------------------------------------------------

BOX_BLUR_5X5 = np.full((5, 5), 0.04, np.float32)
EDGE_DETECT_3X3 = np.array([[0.0, -0.25, 0.0],
                            [-0.25, 1.0, -0.25],
                            [0.0, -0.25, 0.0]], np.float32)
FIXED_KERNELS = {"box_blur": BOX_BLUR_5X5, "edge_detect": EDGE_DETECT_3X3}


def apply_kernel(image: Array, kernel: Array | np.ndarray | str,
                 padding: Padding = "SAME") -> Array:
  """Convolves each channel of an HWC (or NHWC) image with one 2-D kernel.

  Like every CNN library this is cross-correlation (the kernel is not flipped); the
  course's kernels are symmetric, so it makes no difference to them.
  """
  if isinstance(kernel, str):
    if kernel not in FIXED_KERNELS:
      raise unknown_choice("kernel", kernel, FIXED_KERNELS)
    kernel = FIXED_KERNELS[kernel]
  image = jnp.asarray(image, jnp.float32)
  squeeze = image.ndim == 3
  if squeeze:
    image = image[None]
  channels = image.shape[-1]
  k = jnp.asarray(kernel, jnp.float32)
  weights = jnp.tile(k[:, :, None, None], (1, 1, 1, channels))
  out = conv_lib.conv2d(image, weights, padding=padding, groups=channels)
  return out[0] if squeeze else out


# Factories that models bind once, so a whole network switches implementation or
# dtype by one argument (the flax imagenet example's `partial(nn.Conv, ...)` idiom).
def conv_factory(impl: str = "auto", dtype: Optional[Dtype] = None,
                 kernel_init: Callable = he_normal) -> Callable[..., Conv]:
  return functools.partial(Conv, impl=impl, dtype=dtype, kernel_init=kernel_init)
