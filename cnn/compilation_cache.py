"""JAX's persistent compilation cache, on by default for the command-line tools.

A 56-layer network's train step takes tens of seconds to compile on a CPU; with the
cache a resumed run, a sweep's second seed or a re-run evaluation loads it in well
under a second instead (measured in the README's performance section).

    CNN_COMPILATION_CACHE=0            # off
    CNN_COMPILATION_CACHE=/some/dir    # another folder
    (unset)                            # $XDG_CACHE_HOME/cnn/jax, else ~/.cache/cnn/jax

A cache folder set through JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config``) is left as it is. Library code never turns the cache on: only the
scripts' ``main`` functions call `enable`, so tests and notebooks stay as JAX's
defaults leave them.
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Optional

ENV = "CNN_COMPILATION_CACHE"
OFF = ("0", "false", "no", "off")
ON = ("", "1", "true", "yes", "on")
# Steps compiling faster than this are not worth a file: most eval and init programs.
MIN_COMPILE_SECS = 0.5


def default_dir() -> pathlib.Path:
  """The user cache folder for compiled programs."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                          ".cache")
  return pathlib.Path(root) / "cnn" / "jax"


def enable() -> Optional[str]:
  """Turns the persistent cache on unless opted out; returns its folder (or None).

  A folder that cannot be created costs one warning line, never the run.
  """
  import jax  # pylint: disable=import-outside-toplevel
  value = os.environ.get(ENV, "").strip()
  if value.lower() in OFF:
    return None
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  folder = default_dir() if value.lower() in ON else pathlib.Path(value).expanduser()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    print(f"warning: compilation cache off ({folder}: {e.strerror}); set {ENV}=0 to "
          "silence this.", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  return str(folder)
