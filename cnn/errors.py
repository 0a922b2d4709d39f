"""Errors a user can cause, and the one place that turns them into a message.

Every mistake a user can make (a bad config value, an unknown model, an impossible
stride) raises `ConfigError` with one sentence that says what is wrong and what to do.
Entry points call `exit_on_user_error` so such a mistake ends with that sentence and
exit status 2, never a traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import sys
from typing import Iterable, Iterator


class ConfigError(ValueError):
  """A mistake in what the user asked for; the message is one sentence."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
  """Builds the error for an unknown name, listing the valid ones (closest first)."""
  choices = sorted(choices)
  close = difflib.get_close_matches(str(value), choices, n=3)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ConfigError(
      f"Unknown {kind} {value!r}; valid choices are: {', '.join(choices)}.{hint}")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
  """Turns a ConfigError (or a FileNotFoundError) into one line on stderr and exit 2."""
  try:
    yield
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
