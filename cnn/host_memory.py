"""Keeps freed host memory in the process, so that each CPU train step stops paying
for fresh pages: on by default for the command-line tools.

Why: XLA:CPU allocates each execution's temporary buffer (ResNet-20 at batch 128: one
300 MB block) from the thread that runs it. glibc serves a block that large from a
fresh `mmap` and returns it with `munmap` when the step ends, so every step touches
~73,000 new pages, which the kernel faults in and zeroes: ~70 ms of a 240 ms
ResNet-20 step on the 2-core box (README, Performance). Telling glibc to use one arena
and never to `mmap` keeps the block in the heap, and the next step reuses it: 0 page
faults per step.

    CNN_KEEP_HOST_MEMORY=0     # off (glibc's defaults)

The cost: the process keeps its peak heap (it reuses it every step anyway) and threads
share one malloc arena. Library code never calls `keep_freed_memory`: only the scripts'
``main`` functions do, before JAX starts its threads, so tests and notebooks keep
glibc's defaults. Elsewhere than glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "CNN_KEEP_HOST_MEMORY"
OFF = ("0", "false", "no", "off")

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# The most mallopt takes (an int): freed memory above 2 GiB at the heap's top is
# still returned to the system.
_TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed blocks (see the module docstring); returns
  whether it did. Call it before the first JAX computation: a thread that has already
  allocated keeps its own arena."""
  if os.environ.get(ENV, "").strip().lower() in OFF:
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False   # no glibc malloc here
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # One arena: a non-main arena serves large blocks with mmap whatever M_MMAP_MAX says.
  return all(mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
