"""Convolution through native CPU kernels called from XLA with `jax.ffi`:

- ``"native"`` / ``"native_full"``: the project's own C++ kernels (direct AVX2 and
  im2col + OpenBLAS sgemm, native/cnn_native/conv.cc) for the weight gradient (where
  they beat XLA, see `PASSES`) or for all three passes.
- ``"onednn"``: oneDNN's JIT convolutions (native/cnn_native/onednn.cc; the library
  PyTorch's CPU convolutions run on) for the forward pass and both gradients. The
  fastest on CPU where it is installed, so ``"auto"`` picks it there (cnn/conv.py).

Both libraries come from `pip install ./native` (the `cnn-native` package, in the
README's set-up commands; oneDNN itself is the `onednn-cpu-gomp` wheel it depends on).
They handle NHWC x HWIO float32 convolutions with groups 1 and any strides, paddings and
dilations. Everything else - other dtypes, grouped or depthwise convolutions, empty
arrays, other backends - and every call when a library is not installed or fails to
load goes to ``"gemm"`` (cnn/conv_gemm.py), decided at trace time, so each
configuration stays correct. A missing or broken library is reported by one warning
line, once per process.

The onednn library also holds `relu_materialized`, the ReLU that ends a residual block
whose convolutions run there (cnn/models/resnet.py): it keeps XLA from recomputing
earlier blocks' outputs inside later blocks' fusions (see its docstring).

The derivative rule is a `jax.custom_vjp` (the FFI calls have no transpose rule), so
reverse mode runs on the kernels; forward mode (`jax.jvp`) is not supported through
these implementations - use ``"gemm"`` or ``"xla"`` for that.

Set ``CNN_NATIVE_LIB=/path/to/lib.so`` to load a "native" library built elsewhere,
``CNN_ONEDNN_LIB=/path/to/libdnnl.so.3`` for another oneDNN 3.x, or ``CNN_NATIVE=0`` to
turn both off (then they are "gemm").
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import os
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cnn import conv_xla as conv_lib
from cnn.conv_gemm import conv_gemm, explicit_padding

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]

PARTS = ("forward", "input_grad", "weight_grad")


def _installed_library(stem: str) -> str:
  """A compiled library of the installed cnn_native package (`_conv`, `_onednn`)."""
  import cnn_native  # pylint: disable=import-outside-toplevel
  return cnn_native.library_path(stem)


def _load_blas() -> None:
  """OpenBLAS from the scipy-openblas32 wheel, loaded globally so that the kernel's
  undefined scipy_cblas_sgemm resolves against it (the kernel links no BLAS)."""
  import scipy_openblas32  # pylint: disable=import-outside-toplevel
  lib_dir = scipy_openblas32.get_lib_dir()
  name = scipy_openblas32.get_library()
  ctypes.CDLL(os.path.join(lib_dir, f"lib{name}.so"), mode=ctypes.RTLD_GLOBAL)


def _onednn_path() -> str:
  """libdnnl.so.3: $CNN_ONEDNN_LIB, else the onednn-cpu-gomp wheel's (it installs into
  the environment's lib/, outside site-packages)."""
  if os.environ.get("CNN_ONEDNN_LIB"):
    return os.environ["CNN_ONEDNN_LIB"]
  dist = importlib.metadata.distribution("onednn-cpu-gomp")
  for file in dist.files or ():
    if file.name == "libdnnl.so.3":
      return str(dist.locate_file(file))
  raise FileNotFoundError("onednn-cpu-gomp has no libdnnl.so.3")


def _load_onednn() -> None:
  """oneDNN, loaded globally so that the kernel's dnnl_* symbols resolve against it.

  Its OpenMP threads wait passively (unless OMP_WAIT_POLICY is set): spinning, they
  compete with XLA's own threads for the same cores between two convolutions. GNU
  OpenMP reads the variable once, when it is loaded here; child processes do not
  inherit it.
  """
  before = os.environ.get("OMP_WAIT_POLICY")
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    ctypes.CDLL(_onednn_path(), mode=ctypes.RTLD_GLOBAL)
  finally:
    if before is None:
      del os.environ["OMP_WAIT_POLICY"]


@dataclasses.dataclass(frozen=True)
class Library:
  """One compiled library of FFI handlers for the three passes."""
  impl: str                      # the conv_impl it backs, in messages
  targets: dict                  # part -> the FFI target name it is registered as
  symbols: dict                  # part -> the handler's symbol in the library
  version_symbol: str
  version: int
  path: Callable[[], str]
  preload: Callable[[], None]    # loads what the library's undefined symbols need


LIBRARIES = {
    "native": Library(
        "native", {p: f"cnn_native_conv_{p}" for p in PARTS},
        {"forward": "CnnConvForward", "input_grad": "CnnConvInputGrad",
         "weight_grad": "CnnConvWeightGrad"},
        "CnnNativeConvVersion", 1,
        lambda: os.environ.get("CNN_NATIVE_LIB") or _installed_library("_conv"),
        lambda: _load_blas()),  # a lambda so that tests may replace _load_blas
    "onednn": Library(
        "onednn", {**{p: f"cnn_onednn_conv_{p}" for p in PARTS},
                   "materialize": "cnn_materialize"},
        {"forward": "CnnDnnlConvForward", "input_grad": "CnnDnnlConvInputGrad",
         "weight_grad": "CnnDnnlConvWeightGrad", "materialize": "CnnMaterialize"},
        "CnnDnnlConvVersion", 2, lambda: _installed_library("_onednn"),
        lambda: _load_onednn()),
}
TARGETS = LIBRARIES["native"].targets


@functools.lru_cache(maxsize=None)
def load(library: str = "native") -> Optional[str]:
  """Loads and registers `library` once; None when it works, else why it does not.

  The reason is also warned about here, once: one line, and the impl becomes "gemm".
  """
  lib_spec = LIBRARIES[library]
  if os.environ.get("CNN_NATIVE", "1") == "0":
    return "turned off by CNN_NATIVE=0"
  try:
    lib_spec.preload()
    lib = ctypes.CDLL(lib_spec.path())
    version = getattr(lib, lib_spec.version_symbol)()
    if version != lib_spec.version:
      raise RuntimeError(f"library version {version}, expected {lib_spec.version} "
                         "(reinstall: pip install ./native)")
    for part, target in lib_spec.targets.items():
      jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(lib, lib_spec.symbols[part])),
          platform="cpu")
  except Exception as error:  # pylint: disable=broad-except
    why = f"{type(error).__name__}: {error}".splitlines()[0]
    # warn_explicit on a name that is no file: the warning prints as one line.
    warnings.warn_explicit(f"cnn.conv '{lib_spec.impl}' is unavailable ({why}); "
                           "using 'gemm'.", RuntimeWarning, filename="cnn.conv_native",
                           lineno=0)
    return why
  return None


def available(library: str = "native") -> bool:
  """Whether `library` is built, loads, and is registered with XLA."""
  return load(library) is None


# ----------------------------------------------------------------------------------
# The three FFI calls and their derivative rule
# ----------------------------------------------------------------------------------

def _attrs(strides, pads: Pads, dilation) -> dict:
  # The kernels need only the top/left padding; the bottom/right one is implied by the
  # output shape they are given.
  return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]),
              pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0]),
              dh=np.int64(dilation[0]), dw=np.int64(dilation[1]))


def _call(library: str, part: str, out_shape, *args, **attrs) -> Array:
  # "sequential": under vmap (the project vmaps seeds) each member is one call.
  return jax.ffi.ffi_call(LIBRARIES[library].targets[part],
                          jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(*args, **attrs)


def output_hw(x_hw, kernel_hw, strides, pads: Pads, dilation) -> tuple[int, int]:
  """The output's (height, width), as XLA computes it."""
  return tuple((n + lo + hi - (d * (k - 1) + 1)) // s + 1
               for n, k, s, (lo, hi), d in zip(x_hw, kernel_hw, strides, pads, dilation))


# The passes that run on a kernel. "native" takes its kernel where it measured faster
# than XLA's convolution inside the engine's ResNet-20 step (README, Performance): the
# weight gradient, which XLA:CPU computes after transposing the input to batch-innermost
# order, while the kernel reads the stored NHWC input. XLA's forward and input-gradient
# convolutions run at 90-190 GFLOP/s here, that kernel's at ~50 per core. "native_full"
# puts all three passes on it; "onednn" all three on oneDNN's (130-230 GFLOP/s).
PASSES = {"native": ("weight_grad",), "native_full": PARTS, "onednn": PARTS}


def _xla(x, kernel, strides, pads, dilation):
  return conv_lib.conv_xla(x, kernel, strides, pads, dilation, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x: Array, kernel: Array, strides, pads: Pads, dilation,
          passes: tuple[str, ...], library: str) -> Array:
  if "forward" not in passes:
    return _xla(x, kernel, strides, pads, dilation)
  oh, ow = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilation)
  return _call(library, "forward", (x.shape[0], oh, ow, kernel.shape[3]), x, kernel,
               **_attrs(strides, pads, dilation))


def _conv_fwd(x, kernel, strides, pads, dilation, passes, library):
  return _conv(x, kernel, strides, pads, dilation, passes, library), (x, kernel)


def _conv_bwd(strides, pads, dilation, passes, library, residuals, dy):
  """Both gradients, each its own call, so XLA drops the one nobody uses (the first
  layer's input gradient)."""
  x, kernel = residuals
  attrs = _attrs(strides, pads, dilation)
  if "input_grad" in passes:
    dx = _call(library, "input_grad", x.shape, dy, kernel, **attrs)
  else:
    # The transpose of XLA's convolution in x: its input gradient, with no forward
    # convolution traced alongside (as jax.vjp would).
    dx, = jax.linear_transpose(lambda x_: _xla(x_, kernel, strides, pads, dilation),
                               x)(dy)
  if "weight_grad" in passes:
    dkernel = _call(library, "weight_grad", kernel.shape, x, dy, **attrs)
  else:
    dkernel, = jax.linear_transpose(lambda k_: _xla(x, k_, strides, pads, dilation),
                                    kernel)(dy)
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def implied_pads(x_hw, kernel_hw, strides, pads: Pads, dilation) -> Pads:
  """(top, bottom), (left, right) as the output's shape implies them: the bottom/right
  padding less the rows/columns a stride leaves unread, what the kernels compute with."""
  out = output_hw(x_hw, kernel_hw, strides, pads, dilation)
  return tuple((lo, (o - 1) * s + d * (k - 1) + 1 - n - lo)
               for n, k, s, (lo, _), d, o in zip(x_hw, kernel_hw, strides, pads,
                                                 dilation, out))


def supported(x: Array, kernel: Array, pads: Pads, strides, dilation,
              groups: int) -> bool:
  """Whether the kernels compute this configuration (else "gemm" does)."""
  if groups != 1 or x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    return False
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]:
    return False
  out = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilation)
  # Negative padding (a crop) is XLA's, not the kernels'.
  implied = implied_pads(x.shape[1:3], kernel.shape[:2], strides, pads, dilation)
  if min(p for pair in implied for p in pair) < 0:
    return False
  return min(*x.shape, *kernel.shape, *out) > 0 and jax.default_backend() == "cpu"


def conv_native(x: Array, kernel: Array, strides: tuple[int, int],
                padding: conv_lib.PairPadding, dilation: tuple[int, int],
                groups: int, *, passes: tuple[str, ...] = PASSES["native"],
                library: str = "native") -> Array:
  """NHWC x HWIO convolution, same contract and values as `cnn.conv.conv_xla`: the
  library's kernel for `passes` where it applies (module docstring), "gemm" elsewhere.

  With only some passes native, 1x1 kernels stay "gemm"'s matrix products, which are
  faster than XLA's 1x1 convolution in every pass.
  """
  strides, dilation = tuple(strides), tuple(dilation)
  pads = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
  pointwise_gemm = kernel.shape[:2] == (1, 1) and "forward" not in passes
  if (pointwise_gemm or not supported(x, kernel, pads, strides, dilation, groups)
      or not available(library)):
    return conv_gemm(x, kernel, strides, pads, dilation, groups)
  return _conv(x, kernel, strides, pads, dilation, tuple(passes), library)


conv_native_full = functools.partial(conv_native, passes=PASSES["native_full"])
conv_onednn = functools.partial(conv_native, passes=PASSES["onednn"], library="onednn")


# ----------------------------------------------------------------------------------
# A ReLU whose output XLA cannot fuse through
# ----------------------------------------------------------------------------------

def _materialize(x: Array) -> Array:
  """x itself, through an FFI call that XLA cannot look into (in place: the output
  aliases the input, so nothing is copied)."""
  return jax.ffi.ffi_call(LIBRARIES["onednn"].targets["materialize"],
                          jax.ShapeDtypeStruct(x.shape, x.dtype),
                          input_output_aliases={0: 0}, vmap_method="expand_dims")(x)


@jax.custom_vjp
def _relu_materialized(x: Array) -> Array:
  return _materialize(jnp.maximum(x, 0))


def _relu_materialized_fwd(x):
  y = _relu_materialized(x)
  return y, y


def _relu_materialized_bwd(y, g):
  # The mask from the stored output (y > 0 where x > 0), and the cotangent fenced too.
  return (_materialize(jnp.where(y > 0, g, 0)),)


_relu_materialized.defvjp(_relu_materialized_fwd, _relu_materialized_bwd)


def _jitted_relu(x: Array) -> Array:
  return _relu_materialized(x)


# A jitted function named "relu", as jax.nn.relu is: model summaries (cnn/summary.py)
# and traces show it as the ReLU it is.
_jitted_relu.__name__ = "relu"
_jitted_relu = jax.jit(_jitted_relu)


def relu_materialized(x: Array) -> Array:
  """max(x, 0), written to its own buffer that later elementwise code reads instead of
  recomputing it; its gradient likewise. `jax.nn.relu` where the onednn library is not
  available (not installed, turned off, not on CPU).

  Why: a residual block's output relu(bn(conv(h)) + h) is read by the next block's
  convolution and by its residual addition. XLA:CPU fuses the elementwise producer
  into that addition's fusion instead of reading the stored buffer, so block k's
  output fusion recomputes blocks k-1, k-2, ... back to the stage's start from their
  convolution outputs (ResNet-56's largest fusion read 10 of them: 40 operands), in
  the forward and the backward pass - memory traffic quadratic in the depth. An
  `optimization_barrier` does not stop it (XLA:CPU removes it before fusing); an
  opaque call does. ResNet-56's gradient: 610 -> 510 ms per step with the batch-norm
  rule of cnn/layers.py (README, Performance), and it compiles faster.
  Reverse mode only (a `custom_vjp`), like the onednn convolutions it goes with.
  """
  if jax.default_backend() != "cpu" or not available("onednn"):
    return jax.nn.relu(x)
  return _jitted_relu(x)
