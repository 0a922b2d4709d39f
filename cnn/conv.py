"""2-D convolution as one function with selectable implementations.

`conv2d` is what every convolution layer of the library calls. `impl` picks how it is
computed:

- ``"xla"``: `lax.conv_general_dilated`, the reference and the fastest on GPU/TPU.
- ``"gemm"``: XLA's kernels without XLA:CPU's slow weight-gradient path (conv_gemm).
- ``"onednn"``: oneDNN's convolutions (what PyTorch's CPU convolutions run on) through
  `jax.ffi` for all three passes (conv_native); ``"gemm"`` when not installed.
- ``"native"`` / ``"native_full"``: the project's own C++ kernels through `jax.ffi` for
  the weight gradient / for all three passes (conv_native); ``"gemm"`` when not built.
- ``"auto"``: the fastest implementation for the current backend that is installed.

Implementations are registered in `CONV_IMPLS` (see `register_impl`, below), so a
faster kernel for one backend is one function, checked against ``"xla"`` in the tests.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import jax

from cnn.conv_gemm import conv_gemm
from cnn import conv_native as conv_native_lib
from cnn.conv_native import conv_native, conv_native_full, conv_onednn
from cnn.conv_xla import DIMENSION_NUMBERS, PairPadding, conv_xla  # noqa: F401
from cnn.errors import ConfigError, unknown_choice

Padding = Union[str, int, Sequence[int], Sequence[tuple[int, int]]]


def pair(value: int | Sequence[int], name: str = "value") -> tuple[int, int]:
  """(h, w) from an int or a pair; the course writes square kernels as one number."""
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ConfigError(f"{name} must be an int or a pair of ints, got {value!r}.")
  return value  # type: ignore[return-value]


def normalize_padding(padding: Padding) -> PairPadding:
  """'SAME' / 'VALID' as given; P, (P_h, P_w) or ((lo, hi), (lo, hi)) as explicit pairs."""
  if isinstance(padding, str):
    upper = padding.upper()
    if upper not in ("SAME", "VALID"):
      raise ConfigError(
          f"Padding must be 'SAME', 'VALID' or integers, got {padding!r}.")
    return upper
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, int) for p in padding):
    return ((padding[0], padding[0]), (padding[1], padding[1]))
  if len(padding) == 2 and all(len(p) == 2 for p in padding):
    return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore[return-value]
  raise ConfigError(f"Cannot read padding {padding!r}; use 'SAME', 'VALID', P or (P_h, P_w).")


ConvImpl = Callable[..., jax.Array]
CONV_IMPLS: dict[str, ConvImpl] = {"xla": conv_xla}
# Per backend, what "auto" resolves to: the first implementation registered for it
# (fastest first) whose `ready()` holds; backends not listed use "xla".
AUTO_IMPL: dict[str, list[tuple[str, Callable[[], bool]]]] = {}


def register_impl(name: str, fn: ConvImpl, *, auto_for: Sequence[str] = (),
                  ready: Callable[[], bool] = lambda: True) -> None:
  """Adds a convolution implementation. `auto_for` names backends where it is the
  fastest of those registered so far; `ready` says whether it can run here (e.g. its
  library is installed), asked when "auto" is resolved."""
  CONV_IMPLS[name] = fn
  for backend in auto_for:
    AUTO_IMPL.setdefault(backend, []).insert(0, (name, ready))


def resolve_impl(impl: str) -> str:
  """The concrete implementation name for `impl` on the default backend."""
  if impl == "auto":
    return next((name for name, ready in AUTO_IMPL.get(jax.default_backend(), ())
                 if ready()), "xla")
  if impl not in CONV_IMPLS:
    raise unknown_choice("conv_impl", impl, list(CONV_IMPLS) + ["auto"])
  return impl


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int | Sequence[int] = 1,
           padding: Padding = "SAME", dilation: int | Sequence[int] = 1,
           groups: int = 1, impl: str = "xla") -> jax.Array:
  """NHWC convolution with an HWIO kernel (I = input channels / groups)."""
  return CONV_IMPLS[resolve_impl(impl)](
      x, kernel, pair(strides, "strides"), normalize_padding(padding),
      pair(dilation, "dilation"), groups)


# 1x1 convolutions as matmuls and a fusion barrier: faster than XLA's on CPU (conv_gemm).
register_impl("gemm", conv_gemm, auto_for=("cpu",))
# C++ kernels through jax.ffi (cnn/conv_native.py); "gemm" where they do not apply.
# Not "auto" on CPU: in the engine's ResNet-20 step "native" measured 0.93-0.97x
# "gemm" and "native_full" 0.80-0.82x (README, Performance).
register_impl("native", conv_native)
register_impl("native_full", conv_native_full)
# oneDNN through jax.ffi: "auto" on CPU where it is installed (README, Performance)
# and the process has one CPU device. With several (simulated) CPU devices in one
# process, oneDNN's OpenMP teams started from the devices' threads deadlocked XLA's
# in-process collectives (8 devices: 3 runs in 14 stuck in an all-gather), so "auto"
# is "gemm" there; an explicit "onednn" is still honoured.
register_impl("onednn", conv_onednn, auto_for=("cpu",),
              ready=lambda: (jax.local_device_count() == 1
                             and conv_native_lib.available("onednn")))
