"""Convolution through a native CPU kernel ("native", "native_full"): direct AVX2 and
im2col + OpenBLAS sgemm kernels in C++, called from XLA through `jax.ffi` for the
forward pass and both gradients ("native_full"), or for the passes where the kernel is
faster than XLA's convolution ("native", see `PASSES`).

The kernel (native/cnn_native/conv.cc, installed as the `cnn-native` package by
`pip install ./native`, opt-in) handles NHWC x HWIO float32 convolutions with
groups 1 and any strides, paddings and dilations. Everything else - other dtypes,
grouped or depthwise convolutions, empty arrays, other backends - and every call when
the library is not installed or fails to load goes to ``"gemm"`` (cnn/conv_gemm.py),
decided at trace time, so each configuration stays correct. A missing or broken
library is reported by one warning line, once per process.

The derivative rule is a `jax.custom_vjp` (the FFI calls have no transpose rule), so
reverse mode runs on the native kernels; forward mode (`jax.jvp`) is not supported
through this implementation - use ``"gemm"`` or ``"xla"`` for that.

Set ``CNN_NATIVE_LIB=/path/to/lib.so`` to load a library built elsewhere, or
``CNN_NATIVE=0`` to turn the kernel off (then "native" is "gemm").
"""
from __future__ import annotations

import ctypes
import functools
import os
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnn import conv_xla as conv_lib
from cnn.conv_gemm import conv_gemm, explicit_padding

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

TARGETS = {"forward": "cnn_native_conv_forward",
           "input_grad": "cnn_native_conv_input_grad",
           "weight_grad": "cnn_native_conv_weight_grad"}
_SYMBOLS = {"forward": "CnnConvForward", "input_grad": "CnnConvInputGrad",
            "weight_grad": "CnnConvWeightGrad"}
LIBRARY_VERSION = 1


def _library_path() -> str:
  """The compiled kernel: $CNN_NATIVE_LIB, else the installed cnn_native package's."""
  if os.environ.get("CNN_NATIVE_LIB"):
    return os.environ["CNN_NATIVE_LIB"]
  import cnn_native  # pylint: disable=import-outside-toplevel
  return cnn_native.library_path()


def _load_blas() -> None:
  """OpenBLAS from the scipy-openblas32 wheel, loaded globally so that the kernel's
  undefined scipy_cblas_sgemm resolves against it (the kernel links no BLAS)."""
  import scipy_openblas32  # pylint: disable=import-outside-toplevel
  lib_dir = scipy_openblas32.get_lib_dir()
  name = scipy_openblas32.get_library()
  ctypes.CDLL(os.path.join(lib_dir, f"lib{name}.so"), mode=ctypes.RTLD_GLOBAL)


@functools.lru_cache(maxsize=None)
def load() -> Optional[str]:
  """Loads and registers the kernel once; None when it works, else why it does not.

  The reason is also warned about here, once: one line, and "native" becomes "gemm".
  """
  if os.environ.get("CNN_NATIVE", "1") == "0":
    return "turned off by CNN_NATIVE=0"
  try:
    _load_blas()
    lib = ctypes.CDLL(_library_path())
    version = lib.CnnNativeConvVersion()
    if version != LIBRARY_VERSION:
      raise RuntimeError(f"library version {version}, expected {LIBRARY_VERSION} "
                         "(reinstall: pip install ./native)")
    for part, target in TARGETS.items():
      jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(lib, _SYMBOLS[part])), platform="cpu")
  except Exception as error:  # pylint: disable=broad-except
    why = f"{type(error).__name__}: {error}".splitlines()[0]
    # warn_explicit on a name that is no file: the warning prints as one line.
    warnings.warn_explicit(f"cnn.conv 'native' is unavailable ({why}); using 'gemm'.",
                           RuntimeWarning, filename="cnn.conv_native", lineno=0)
    return why
  return None


def available() -> bool:
  """Whether the native kernel is built, loads, and is registered with XLA."""
  return load() is None


# ----------------------------------------------------------------------------------
# The three FFI calls and their derivative rule
# ----------------------------------------------------------------------------------

def _attrs(strides, pads: Pads, dilation) -> dict:
  # The kernel needs only the top/left padding; the bottom/right one is implied by the
  # output shape it is given.
  return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]),
              pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0]),
              dh=np.int64(dilation[0]), dw=np.int64(dilation[1]))


def _call(part: str, out_shape, *args, **attrs) -> Array:
  # "sequential": under vmap (the project vmaps seeds) each member is one call.
  return jax.ffi.ffi_call(TARGETS[part], jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(*args, **attrs)


def output_hw(x_hw, kernel_hw, strides, pads: Pads, dilation) -> tuple[int, int]:
  """The output's (height, width), as XLA computes it."""
  return tuple((n + lo + hi - (d * (k - 1) + 1)) // s + 1
               for n, k, s, (lo, hi), d in zip(x_hw, kernel_hw, strides, pads, dilation))


# The passes that run on the kernel. "native" takes the kernel where it measured
# faster than XLA's convolution inside the engine's ResNet-20 step (README,
# Performance): the weight gradient, which XLA:CPU computes after transposing the
# input to batch-innermost order, while the kernel reads the stored NHWC input. XLA's
# forward and input-gradient convolutions run at 90-190 GFLOP/s here, the kernel's at
# ~50 per core. "native_full" puts all three passes on the kernel.
PASSES = {"native": ("weight_grad",),
          "native_full": ("forward", "input_grad", "weight_grad")}


def _xla(x, kernel, strides, pads, dilation):
  return conv_lib.conv_xla(x, kernel, strides, pads, dilation, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x: Array, kernel: Array, strides, pads: Pads, dilation,
          passes: tuple[str, ...]) -> Array:
  if "forward" not in passes:
    return _xla(x, kernel, strides, pads, dilation)
  oh, ow = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilation)
  return _call("forward", (x.shape[0], oh, ow, kernel.shape[3]), x, kernel,
               **_attrs(strides, pads, dilation))


def _conv_fwd(x, kernel, strides, pads, dilation, passes):
  return _conv(x, kernel, strides, pads, dilation, passes), (x, kernel)


def _conv_bwd(strides, pads, dilation, passes, residuals, dy):
  """Both gradients, each its own call, so XLA drops the one nobody uses (the first
  layer's input gradient)."""
  x, kernel = residuals
  attrs = _attrs(strides, pads, dilation)
  if "input_grad" in passes:
    dx = _call("input_grad", x.shape, dy, kernel, **attrs)
  else:
    # The transpose of XLA's convolution in x: its input gradient, with no forward
    # convolution traced alongside (as jax.vjp would).
    dx, = jax.linear_transpose(lambda x_: _xla(x_, kernel, strides, pads, dilation),
                               x)(dy)
  if "weight_grad" in passes:
    dkernel = _call("weight_grad", kernel.shape, x, dy, **attrs)
  else:
    dkernel, = jax.linear_transpose(lambda k_: _xla(x, k_, strides, pads, dilation),
                                    kernel)(dy)
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def supported(x: Array, kernel: Array, pads: Pads, strides, dilation,
              groups: int) -> bool:
  """Whether the kernel computes this configuration (else "gemm" does)."""
  if groups != 1 or x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    return False
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]:
    return False
  out = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilation)
  return min(*x.shape, *kernel.shape, *out) > 0 and jax.default_backend() == "cpu"


def conv_native(x: Array, kernel: Array, strides: tuple[int, int],
                padding: conv_lib.PairPadding, dilation: tuple[int, int],
                groups: int, *, passes: tuple[str, ...] = PASSES["native"]) -> Array:
  """NHWC x HWIO convolution, same contract and values as `cnn.conv.conv_xla`: the
  native kernel for `passes` where it applies (module docstring), "gemm" elsewhere.

  With only some passes native, 1x1 kernels stay "gemm"'s matrix products, which are
  faster than XLA's 1x1 convolution in every pass.
  """
  strides, dilation = tuple(strides), tuple(dilation)
  pads = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
  pointwise_gemm = kernel.shape[:2] == (1, 1) and "forward" not in passes
  if (pointwise_gemm or not supported(x, kernel, pads, strides, dilation, groups)
      or not available()):
    return conv_gemm(x, kernel, strides, pads, dilation, groups)
  return _conv(x, kernel, strides, pads, dilation, tuple(passes))


conv_native_full = functools.partial(conv_native, passes=PASSES["native_full"])
