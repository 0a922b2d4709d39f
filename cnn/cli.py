"""The one command-line shape of every script: parser, config overrides, shapes.

Every CLI (scripts/, the studies' CLIs under experiments/, benchmarks/) builds its
parser with `parser` and reads its arguments with `parse`, so they share:

* ``--config experiments/x.py[:preset]`` and ``--workdir DIR`` (`add_config`);
* config overrides in two spellings, ``--config.a.b=v`` and ``--config.a.b v``,
  returned as ``a.b=v`` strings for `cnn.config.load`;
* flags spelt with underscores (``--dry_run``, ``--image_index``), never dashes;
* ``--help`` that prints and exits 0 before anything is imported or run.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Sequence

from cnn.errors import ConfigError, exit_on_user_error

OVERRIDE_PREFIX = "--config."
OVERRIDE_HELP = ("Config overrides: --config.a.b=VALUE or --config.a.b VALUE (VALUE a "
                 "Python literal, else a string), applied after the preset.")


def parser(prog: str, doc: Optional[str], **kwargs) -> argparse.ArgumentParser:
  """An ArgumentParser for ``python -m <prog>`` showing `doc` verbatim.

  Abbreviations are off so that ``--conf`` is not silently taken for ``--config``.
  """
  return argparse.ArgumentParser(
      prog=f"python -m {prog}", description=doc, allow_abbrev=False,
      formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_config(p: argparse.ArgumentParser, *, workdir: Optional[str] = "run directory",
               config_required: bool = True, workdir_required: bool = True) -> None:
  """Adds ``--config`` and (unless `workdir` is None) ``--workdir`` to `p`, with the
  override syntax in the epilog."""
  p.add_argument("--config", required=config_required, metavar="FILE.py[:PRESET]",
                 help="an experiment file, e.g. experiments/lenet_digits.py:preset")
  if workdir is not None:
    p.add_argument("--workdir", required=workdir_required, help=workdir)
  p.epilog = OVERRIDE_HELP if not p.epilog else f"{p.epilog}\n\n{OVERRIDE_HELP}"


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(other arguments, overrides as ``a.b=v``) of a command line.

  ``--config.a.b=v`` is one token; ``--config.a.b v`` takes the next token as the
  value (which may start with a single dash: ``--config.optim.b1 -0.5``).
  """
  rest, overrides = [], []
  tokens = list(argv)
  i = 0
  while i < len(tokens):
    token = tokens[i]
    if token == "--":   # everything after it is positional
      rest.extend(tokens[i:])
      break
    if not token.startswith(OVERRIDE_PREFIX):
      rest.append(token)
      i += 1
      continue
    key, sep, value = token[len(OVERRIDE_PREFIX):].partition("=")
    if not key:
      raise ConfigError(f"Override {token!r} names no key; write --config.a.b=VALUE.")
    if not sep:
      if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
        raise ConfigError(f"Override {token} has no value; write {token}=VALUE or "
                          f"{token} VALUE.")
      value = tokens[i + 1]
      i += 1
    overrides.append(f"{key}={value}")
    i += 1
  return rest, overrides


def parse(p: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, *,
          overrides: bool = True) -> tuple[argparse.Namespace, list[str]]:
  """(arguments, ``a.b=v`` overrides) of `argv` (default ``sys.argv[1:]``).

  A malformed override exits 2 with its one sentence, an unknown argument with
  argparse's usage error;
  ``--help`` prints the help and exits 0 (a subcommand's own with subparsers).
  With `overrides` False, ``--config.*`` arguments are refused like any unknown flag.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if not overrides:
    return p.parse_args(argv), []
  try:
    rest, found = split_overrides(argv)
  except ConfigError:
    if "-h" in argv or "--help" in argv:
      p.parse_args(["--help"])   # asking for help is never an error
    with exit_on_user_error():   # one sentence and exit 2, as every config mistake
      raise
  return p.parse_args(rest), found


def prepare_process() -> None:
  """What a CLI that compiles and runs steps does first, before JAX starts: the
  persistent compilation cache (a resumed or repeated run skips recompiling,
  cnn/compilation_cache.py) and glibc keeping freed memory (no fresh pages per CPU
  step, cnn/host_memory.py)."""
  from cnn import compilation_cache, host_memory  # pylint: disable=import-outside-toplevel
  compilation_cache.enable()
  host_memory.keep_freed_memory()


def parse_shape(text: str) -> tuple[int, ...]:
  """'224,224,3' or '224x224x3' -> (224, 224, 3)."""
  parts = [part for part in re.split(r"[,x\s]+", text.strip()) if part]
  if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
    raise ConfigError(
        f"Cannot read input shape {text!r}; give positive height,width,channels such "
        "as 224,224,3.")
  return tuple(int(part) for part in parts)


def emit(text: str, out: Optional[str] = None) -> None:
  """Writes `text` to the file `out` (its folder made) and prints the path, or prints
  `text` itself when there is no `out`."""
  if out:
    import pathlib  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(path)
  else:
    print(text, end="")
