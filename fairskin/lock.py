"""One runs root, one user: a lock file naming the process that holds it.

A pipeline (``jobs/full_pipeline.py``), a study (``python -m fairskin.tune``) and the ablation
job (``jobs/ablation.py``) hold ``<runs root>/.fairskin.lock`` while they run. The file is
created atomically (``os.link`` of a fully written temporary file, which fails when the lock
exists; ``O_CREAT | O_EXCL`` where links are not supported) and holds a JSON body: host,
PID, the process's start time and boot id, the command and since when. A second process is
refused at once with :class:`RunsRootLocked` (exit code 2), whose message names the holder.

* A lock whose holder ran on **this host** and is gone (its PID no longer runs, or runs a
  different process: another start time or another boot) is taken over.
* A lock from **another host** is never guessed at: the holder may be alive there. Whoever
  knows that it is not passes ``--break-lock`` (``break_lock=True``).
* The lock is **re-entrant within a process**: the pipeline's ``tune`` stage calls
  ``run_study`` and the tune command runs pipeline stages first, all in one process.

Take-overs are serialised by a second, short-lived guard file, so two processes that find
the same dead holder cannot both win.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".fairskin.lock"
_GUARD_SUFFIX = ".takeover"
_GUARD_STALE_S = 30.0

_HELD: dict[Path, dict[str, Any]] = {}  # resolved root -> {"count", "body"}
_MUTEX = threading.RLock()


class RunsRootLocked(RuntimeError):
    """The runs root is in use by another process (the message names it and what to do)."""

    def __init__(self, root: Path, holder: dict[str, Any] | None, reason: str):
        self.root, self.holder = Path(root), holder or {}
        super().__init__(f"runs root {root} is in use: {describe_holder(self.holder)}. {reason}")


def this_host() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown: with the
    PID it names one process, so a PID reused by another program is not taken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "held by an unknown process (the lock file is unreadable)"
    return (
        f"held by {holder.get('command', '?')!r} on host {holder.get('host', '?')}, "
        f"PID {holder.get('pid', '?')}, since {holder.get('since', '?')}"
    )


def holder_alive(holder: dict[str, Any] | None) -> bool | None:
    """True / False for a holder on this host; None when it cannot be told from here
    (another host, or an unreadable lock)."""
    if not holder or holder.get("host") != this_host():
        return None
    boot = _boot_id()
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return False  # the machine rebooted since
    pid = int(holder.get("pid", -1))
    if pid <= 0 or not pid_alive(pid):
        return False
    start = _proc_start(pid)
    if holder.get("pid_start") and start and holder["pid_start"] != start:
        return False  # the PID now belongs to another process
    return True


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _body(command: str | None) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": this_host(),
        "pid": pid,
        "pid_start": _proc_start(pid),
        "boot_id": _boot_id(),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "token": uuid.uuid4().hex,
    }


def _create(path: Path, body: dict[str, Any]) -> bool:
    """Atomically create ``path`` holding ``body``; False when it already exists."""
    data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    tmp = path.with_name(f"{path.name}.{body['token']}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # atomic, fails if the lock exists, and the lock is never seen half-written
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _takeover_guard(path: Path) -> Iterator[bool]:
    """Yields True while this process alone may replace the lock file (False: someone else is)."""
    guard = path.with_name(path.name + _GUARD_SUFFIX)
    for _ in range(2):
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - guard.stat().st_mtime  # age of a guard only, never a fingerprint
            except OSError:
                continue
            if age > _GUARD_STALE_S:  # left by a process killed in the middle of a take-over
                with contextlib.suppress(OSError):
                    guard.unlink()
                continue
            yield False
            return
        os.close(fd)
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                guard.unlink()
        return
    yield False


def acquire(
    root: Path, command: str | None = None, break_lock: bool = False, echo=lambda msg: print(msg, file=sys.stderr)
) -> dict[str, Any]:
    """Take the lock of ``root`` (re-entrant in this process); returns the lock's body.

    Raises :class:`RunsRootLocked` when another live process holds it, or one whose liveness
    cannot be told from this host (unless ``break_lock``).
    """
    root = Path(os.path.abspath(root))
    with _MUTEX:
        held = _HELD.get(root)
        if held is not None:
            held["count"] += 1
            return held["body"]
        created = []  # folders made only to hold the lock: removed again on release if still empty
        for folder in (root, *root.parents):
            if folder.exists():
                break
            created.append(folder)
        root.mkdir(parents=True, exist_ok=True)
        path = root / LOCK_FILE
        body = _body(command)
        try:
            return _acquire(root, path, body, created, break_lock, echo)
        except BaseException:
            _remove_empty(created)
            raise


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(
    root: Path, path: Path, body: dict[str, Any], created: list[Path], break_lock: bool, echo
) -> dict[str, Any]:
    for _ in range(20):
        if _create(path, body):
            _HELD[root] = {"count": 1, "body": body, "created": created}
            return body
        holder = read_holder(path)
        if holder is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if age < 2.0:
                time.sleep(0.1)  # an O_EXCL lock being written right now
                continue
        alive = holder_alive(holder)
        if alive is True and not break_lock:
            raise RunsRootLocked(root, holder, "Wait for it to end or use another runs root (runtime.runs_root=...).")
        if alive is None and not break_lock:
            where = "on another host" if holder else "of unknown origin"
            raise RunsRootLocked(
                root,
                holder,
                f"The lock is {where}, so whether its holder still runs cannot "
                "be told from here; if you know it has ended, rerun with --break-lock.",
            )
        with _takeover_guard(path) as mine:
            if not mine:
                time.sleep(0.2)
                continue
            if read_holder(path) != holder:  # replaced meanwhile: judge the new holder
                continue
            why = "broken by --break-lock" if break_lock and alive is not False else "its holder has ended"
            echo(f"taking over the lock of {root} ({describe_holder(holder)}): {why}")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if _create(path, body):
                _HELD[root] = {"count": 1, "body": body, "created": created}
                return body
    raise RunsRootLocked(root, read_holder(path), "Could not take the lock (it kept changing hands).")


def release(root: Path) -> None:
    """Undo one :func:`acquire`; the file is removed when the outermost holder releases it
    (and only if it is still ours: a lock broken by someone else is left to them)."""
    root = Path(os.path.abspath(root))
    with _MUTEX:
        held = _HELD.get(root)
        if held is None:
            return
        held["count"] -= 1
        if held["count"] > 0:
            return
        del _HELD[root]
        path = root / LOCK_FILE
        current = read_holder(path)
        if current is not None and current.get("token") == held["body"]["token"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _remove_empty(held.get("created", []))


@contextlib.contextmanager
def runs_root_lock(root: Path, command: str | None = None, break_lock: bool = False) -> Iterator[dict[str, Any]]:
    """``with runs_root_lock(config.runtime.runs_root): ...``: hold the runs root for the block."""
    body = acquire(root, command, break_lock)
    try:
        yield body
    finally:
        release(root)


def holds(root: Path) -> bool:
    """Whether this process holds the lock of ``root``."""
    with _MUTEX:
        return Path(os.path.abspath(root)) in _HELD


def holding_runs_root(fn):
    """Decorator for ``fn(config, ...)``: hold ``config.runtime.runs_root`` while it runs (re-entrant,
    so an entry point that already holds it, e.g. with ``--break-lock``, is not refused by itself)."""
    import functools

    @functools.wraps(fn)
    def wrapper(config, *args, **kwargs):
        with runs_root_lock(config.runtime.runs_root):
            return fn(config, *args, **kwargs)

    return wrapper
