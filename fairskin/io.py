"""Atomic file and folder writes: write to a temporary path beside the target, then rename.

A crash or a kill at any point leaves either the old content or the new one, never a
half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Temporary folders this process is writing now (:func:`atomic_directory`): a stage running beside another
# (a background stage) must not see the other's folder as stale although its PID is this process's.
_writing: set[Path] = set()
_writing_lock = threading.Lock()


def writing_now() -> frozenset[Path]:
    """The temporary folders :func:`atomic_directory` calls of this process are writing at this moment."""
    with _writing_lock:
        return frozenset(_writing)


def host_tag() -> str:
    """This host's name as it appears in temporary names (characters outside [A-Za-z0-9._-] -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "unknown"


def _temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """``.<name>.<tag>-<pid>-<8 hex>@<host>``: the PID and host tell whether its writer may still run
    (see :func:`fairskin.pipeline.keyed.clean_stale_partials`; a PID means nothing on another host)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}@{host_tag()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def plain_number(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (JSON keeps a float exactly but writes a float32 as a string);
    anything else unchanged."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON (sorted keys, indented) version of :func:`atomic_write_bytes`."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``final`` in one rename.

    On an exception the temporary folder is removed and ``final`` is untouched. With
    ``replace=True`` an existing ``final`` is swapped out only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final, "partial")
    tmp.mkdir()
    with _writing_lock:
        _writing.add(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with _writing_lock:
            _writing.discard(tmp)
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} already exists")
        old = _temp_sibling(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
