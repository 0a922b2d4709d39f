"""Errors a user can cause, and the one place that turns them into a message.

Every mistake a user can make (a bad config value, an unknown model, an impossible
stride) raises `ConfigError` with one sentence that says what is wrong and what to do.
Entry points call `exit_on_user_error` so such a mistake ends with that sentence and
exit status 2, never a traceback. It also turns the two failures a user must hear
about in one line but did not cause by a typo into one: a full disk (`DiskFullError`,
exit 1), a SIGTERM outside the training loop, whose own handler checkpoints (exit
143, the shell's code for it, with a message instead of a silent death), and a
collective of a multi-process job that fails because a peer process died (exit 1).
"""
from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import os
import signal
import sys
import threading
from typing import Iterable, Iterator, Optional


class ConfigError(ValueError):
  """A mistake in what the user asked for; the message is one sentence."""


class DiskFullError(RuntimeError):
  """A write failed for lack of space; the message is one sentence."""


class Terminated(BaseException):
  """SIGTERM arrived outside the training loop (a BaseException, like
  KeyboardInterrupt, so that no `except Exception` swallows it)."""


def disk_full(error: Optional[BaseException]) -> bool:
  """Whether `error` or one of its causes is a full disk (ENOSPC; tensorstore and
  orbax pass it on as text)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
  """Builds the error for an unknown name, listing the valid ones (closest first)."""
  choices = sorted(choices)
  close = difflib.get_close_matches(str(value), choices, n=3)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return ConfigError(
      f"Unknown {kind} {value!r}; valid choices are: {', '.join(choices)}.{hint}")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
  """Turns a ConfigError (or a FileNotFoundError) into one line on stderr and exit 2, a
  full disk or a dead peer process into one line and exit 1, and a SIGTERM into one
  line and exit 143."""
  previous = _catch_sigterm()
  previous_hook = sys.unraisablehook
  sys.unraisablehook = functools.partial(_quiet_terminated, previous_hook)
  try:
    yield
    raise_if_terminated()   # one that arrived while finishing, swallowed
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except DiskFullError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except OSError as e:
    if not disk_full(e):
      raise
    print(f"error: no space left on device writing {e.filename or 'a file'}; free some "
          "space and run the same command again to resume.", file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    if not lost_peer(e):
      raise
    _exit_lost_peer(e)
  except Terminated:
    print("error: terminated by SIGTERM outside the training loop (while starting or "
          "finishing); the workdir's checkpoints are intact, run the same command again "
          "to resume.", file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)
  finally:
    sys.unraisablehook = previous_hook
    _SIGTERM_SEEN.clear()   # for a later CLI call or loop in this process (tests)
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


# What a multi-process collective's transport (gloo on CPU) says when the process at
# the other end is gone: a closed or reset connection, or a message cut short.
_LOST_PEER_TEXT = ("Gloo ", "Connection closed by peer", "Connection reset by peer",
                   "Received data size doesn't match expected size")


def lost_peer(error: BaseException) -> bool:
  """Whether `error` is a JAX runtime error of a collective in a multi-process job
  whose peer died (or lost its connection), rather than a fault of this process."""
  jax = sys.modules.get("jax")
  if jax is None or not isinstance(error, jax.errors.JaxRuntimeError):
    return False
  try:
    if jax.process_count() < 2:
      return False
  except RuntimeError:
    return False
  return any(text in str(error) for text in _LOST_PEER_TEXT)


def _exit_lost_peer(error: BaseException) -> None:
  """One line, then exit 1 at once. A normal exit would run JAX's atexit shutdown,
  whose barrier waits for the dead peer until the heartbeat timeout and then aborts
  the process with a C++ stack trace; the checkpoints already on disk are final (an
  unfinished save stays a temporary directory, which restoring skips)."""
  cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  print(f"error: a collective failed because another task died or lost its connection "
        f"({cause}); the workdir's checkpoints are intact: restart every process with "
        "the same command to resume.", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


# Set by the start-up SIGTERM handler. Python swallows an exception raised while it
# runs a gc callback or a __del__ ("Exception ignored in ..."), and the handler may run
# inside one, so the exception alone can be lost: `raise_if_terminated` raises it again
# at the next check. Process-wide, as the signal is; `_catch_sigterm` clears it.
_SIGTERM_SEEN = threading.Event()


def _raise_terminated(signum, frame):
  del signum, frame
  _SIGTERM_SEEN.set()
  raise Terminated()


def _quiet_terminated(previous_hook, unraisable) -> None:
  """sys.unraisablehook: a swallowed `Terminated` prints nothing (it is raised again
  by `raise_if_terminated`, and the CLI then says one line); anything else goes to
  the previous hook."""
  if isinstance(unraisable.exc_value, Terminated):
    return
  previous_hook(unraisable)


def raise_if_terminated() -> None:
  """Raises `Terminated` if a SIGTERM arrived since the CLI started whose exception
  Python may have swallowed (see `_SIGTERM_SEEN`); the training loop calls it before
  it takes over SIGTERM."""
  if _SIGTERM_SEEN.is_set():
    raise Terminated()


def _catch_sigterm():
  """Makes SIGTERM raise `Terminated` (the training loop installs its own handler,
  which checkpoints, and restores this one after); returns the previous handler, or
  None where signals cannot be handled (not the main thread)."""
  if threading.current_thread() is not threading.main_thread():
    return None
  _SIGTERM_SEEN.clear()
  return signal.signal(signal.SIGTERM, _raise_terminated)
