"""One writer per workdir: a lock file holding the owner's PID and host.

Two runs on one workdir would interleave their steps in metrics.jsonl and race on the
checkpoints, so `lock` refuses a second one at once (a `WorkdirBusy` ConfigError, one
sentence naming the owner). The exclusion itself is an ``flock`` on ``<workdir>/.lock``:
the kernel drops it when its process dies, even by SIGKILL, so a lock file left by a
dead run is recognised as stale and taken over with a warning. The PID and host
written into the file are for the messages, and guard shared file systems whose
flock is local to each host: a lock file naming another host is never taken over.

Only JAX process 0 takes the lock (the others of a multi-host run share its workdir
and write nothing but their checkpoint shards). A workdir that `lock` had to create is
removed again if the run leaves nothing in it, so a run refused for a bad config
leaves no trace.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import pathlib
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional

from cnn.errors import ConfigError

LOCK_NAME = ".lock"


class WorkdirBusy(ConfigError):
  """Another live run holds the workdir."""


def _owner_text() -> str:
  return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"


def _read_owner(fd: int) -> Optional[dict[str, Any]]:
  """The owner recorded in an open lock file, or None if it is empty or garbled."""
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096)
  try:
    owner = json.loads(raw.decode())
  except (UnicodeDecodeError, ValueError):
    return None
  return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[dict[str, Any]]) -> str:
  if not owner:
    return "another process"
  return (f"PID {owner.get('pid', '?')} on {owner.get('host', '?')}"
          f"{' since ' + owner['started'] if owner.get('started') else ''}")


def _pid_alive(pid: Any) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:    # exists, owned by someone else
    return True
  return True


def _make_dirs(path: pathlib.Path) -> list[pathlib.Path]:
  """Creates `path` and missing parents; returns those it created, deepest first."""
  created = []
  for p in [path, *path.parents]:
    if p.exists():
      break
    created.append(p)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"Cannot write to workdir {path} ({e.strerror}); choose a writable "
                      "--workdir.") from None
  return created


def _open_locked(path: pathlib.Path, workdir: pathlib.Path) -> tuple[int, bool]:
  """(fd of `path`, whether it holds the file's flock); raises WorkdirBusy if a live
  run holds the flock. The flock is False only where the file system has none."""
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ConfigError(f"Cannot write to workdir {workdir} ({e.strerror}); choose a "
                        "writable --workdir.") from None
    flocked = True
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _read_owner(fd)
      os.close(fd)
      raise _busy(workdir, owner, path) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        os.close(fd)
        raise
      flocked = False        # no flock here: the recorded PID alone decides
    # The previous holder removes the file before it lets go of the flock; then this
    # fd locks an orphan inode and the lock must be taken on the new file.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd, flocked
    os.close(fd)


def _busy(workdir: pathlib.Path, owner: Optional[dict[str, Any]],
          path: pathlib.Path) -> WorkdirBusy:
  mine = " (this process)" if owner and owner.get("pid") == os.getpid() else ""
  return WorkdirBusy(f"Workdir {workdir} is in use by {_describe(owner)}{mine} (lock file "
                     f"{path}); wait for that run to end or choose another --workdir.")


@contextlib.contextmanager
def lock(workdir: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Holds `workdir` for this process until the block ends (normally, by an exception,
  or by a SIGTERM turned into one); yields the lock file's path.

  Raises:
    WorkdirBusy: a live run holds it, or the lock file names another host.
    ConfigError: the workdir cannot be created or written.
  """
  workdir = pathlib.Path(workdir)
  if not _is_main_process():
    yield workdir / LOCK_NAME
    return
  created = _make_dirs(workdir)
  path = workdir / LOCK_NAME
  try:
    fd, flocked = _open_locked(path, workdir)
    try:
      _check_previous_owner(fd, flocked, path, workdir)
    except BaseException:
      os.close(fd)
      raise
  except BaseException:
    _remove_if_empty(created)
    raise
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, _owner_text().encode(), 0)
    yield path
  finally:
    with contextlib.suppress(OSError):
      path.unlink()          # before the flock goes: a waiting opener re-checks the inode
    os.close(fd)
    _remove_if_empty(created)


def _check_previous_owner(fd: int, flocked: bool, path: pathlib.Path,
                          workdir: pathlib.Path) -> None:
  """Judges what a lock file we could open says: nothing (a fresh lock), a run of
  this host that is gone (stale: warn and take it over), or a run of another host
  (refuse: on a shared file system its flock may not reach this one)."""
  owner = _read_owner(fd)
  if owner is None:
    return
  if owner.get("host") != socket.gethostname():
    raise WorkdirBusy(
        f"Workdir {workdir} is locked by {_describe(owner)}, another host; if that run "
        f"has ended, delete {path} and run again.")
  if not flocked and _pid_alive(owner.get("pid")):
    raise _busy(workdir, owner, path)
  # With the flock ours, its recorded owner is gone even if its PID was reused since.
  print(f"warning: taking over the stale lock of {_describe(owner)} in {workdir} (that "
        "run is no longer running).", file=sys.stderr)


def _remove_if_empty(created: list[pathlib.Path]) -> None:
  """Removes the directories `lock` created (deepest first) while they are empty."""
  for p in created:
    try:
      p.rmdir()
    except OSError:
      return


def _is_main_process() -> bool:
  try:
    import jax  # pylint: disable=import-outside-toplevel  (heavy; only when locking)
    return jax.process_index() == 0
  except Exception:  # noqa: BLE001 -- no backend yet: a single process
    return True


def locked(fn: Callable) -> Callable:
  """Decorates a function with a ``workdir`` argument so that it runs holding
  `lock(workdir)` (a one-line way to make `cnn.train.fit` exclusive)."""
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    workdir = signature.bind(*args, **kwargs).arguments["workdir"]
    with lock(workdir):
      return fn(*args, **kwargs)

  return wrapper
