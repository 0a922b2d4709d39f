"""Test set-up: 8 simulated CPU devices, a compilation cache and glibc's malloc defaults,
before jax is imported."""
import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# glibc's defaults in the test process and the runs it starts (tests that call a
# script's main in-process would otherwise change malloc for every later test);
# tests/test_host_memory.py checks the setting itself.
os.environ.setdefault("CNN_KEEP_HOST_MEMORY", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The real MNIST/CIFAR-10 shards beside the repo; tests using it skip without it."""
  if not (SHARED_DATA / "mnist").is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA}")
  return SHARED_DATA
