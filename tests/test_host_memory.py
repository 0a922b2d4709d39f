"""cnn.host_memory: freed blocks stay in the process, so that a CPU step's large
temporary buffer (XLA allocates it on its own threads) needs no fresh pages."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Allocates, touches and frees a 64 MiB block (16,384 pages) five times, in the main
# thread and in new threads (which glibc gives their own arenas), and prints the
# minor page faults per round after a first warm-up round (numpy's huge pages off, so
# that each page is one fault).
_PROBE = """
import resource, sys, threading
import numpy as np
from cnn import host_memory
kept = host_memory.keep_freed_memory()
np._core.multiarray._set_madvise_hugepage(False)   # 4 KiB pages: one fault each

def block():
  a = np.ones(64 * 2**20 // 8)
  del a

def in_thread():
  t = threading.Thread(target=block)
  t.start()
  t.join()

def faults_per_round(run):
  run()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    run()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

print(kept, faults_per_round(block), faults_per_round(in_thread))
"""


def _probe(setting):
  env = {k: v for k, v in os.environ.items() if k != "CNN_KEEP_HOST_MEMORY"}
  if setting is not None:
    env["CNN_KEEP_HOST_MEMORY"] = setting
  out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout.split()
  return out[0] == "True", float(out[1]), float(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_new_pages():
  kept, main_thread, new_thread = _probe(None)
  assert kept
  # A reused block faults in nothing; a fresh one 16,384 pages (4 KiB each).
  assert main_thread < 1000 and new_thread < 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_opt_out_keeps_glibc_defaults():
  kept, main_thread, new_thread = _probe("0")
  assert not kept
  assert main_thread > 10000 and new_thread > 10000
