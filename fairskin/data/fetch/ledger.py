"""The folder's ledger and files: one durable JSON line per finished row, atomic image writes, the lock.

Durability: images are written under a temporary name and renamed; the ledger
(``DIR/.fetch_ledger.jsonl``) gets one JSON line per finished row, flushed and fsynced, and is read
back tolerating a torn last line.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fairskin.data import DataError

# Hidden names: the prepare stage's key covers the non-hidden files directly under data.image_root, so a
# rerun that only appends ledger lines does not redo prepare and every stage after it.
LEDGER_FILE = ".fetch_ledger.jsonl"
TABLE_FILE = ".fetch_subclasses.csv"
MISMATCH_DIR = "mismatch"
LOCK_FILE = ".fetch.lock"
_TEMP_PREFIX = ".fetch-"
_TEMP_SUFFIX = ".part"

VERIFIED, MD5_MISMATCH, FAILED, NO_URL = "verified", "md5_mismatch", "failed", "no_url"


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The last ledger entry per row id. A torn last line (a kill mid-write) and unreadable lines are
    ignored: the rows they were about are simply done again."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return entries
    for line in text.split("\n"):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            entries[entry["id"]] = entry
    return entries


class _Ledger:
    """Append-only JSON lines, each flushed and fsynced before the next row counts as done."""

    def __init__(self, path: Path):
        self.path = path
        # A torn tail from a killed run would glue itself to the next line: cut it off first.
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
                    fh.flush()
                    os.fsync(fh.fileno())
        self._fh = open(path, "ab")

    def append(self, entry: dict[str, Any]) -> None:
        """Write ``entry`` as one JSON line, flushed and fsynced."""
        self._fh.write((json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the ledger file."""
        self._fh.close()


# --------------------------------------------------------------------------- the folder


def _write_atomic(folder: Path, name: str, body: bytes, row_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{_TEMP_PREFIX}{row_id}-{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    finally:
        if tmp.exists():
            tmp.unlink()


def _own_file(out_dir: Path, entry: dict[str, Any] | None) -> Path | None:
    """The file a ledger entry says this fetch wrote for its row, if the name is one it writes."""
    if not entry or not entry.get("file"):
        return None
    name, row_id = str(entry["file"]), str(entry.get("id"))
    if not re.fullmatch(rf"({MISMATCH_DIR}/)?{re.escape(row_id)}\.[a-z]+", name):
        return None
    return out_dir / name


def _record(ledger: _Ledger, out_dir: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Append ``new`` to the ledger, first removing the row's older file when the new entry names
    another (or none): only files this fetch wrote are removed, never other files in the folder."""
    stale = _own_file(out_dir, old)
    if stale is not None and stale != _own_file(out_dir, new) and stale.is_file():
        stale.unlink()
    new["time"] = _now()
    ledger.append(new)


def _lock_folder(out_dir: Path):
    fh = open(out_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise DataError(f"{out_dir}: another `data fetch` is writing into this folder; wait for it to end") from None
    return fh


def _clean_temporaries(out_dir: Path) -> int:
    """Remove temporary files a killed run left (only called while holding the folder's lock)."""
    removed = 0
    for folder in (out_dir, out_dir / MISMATCH_DIR):
        if folder.is_dir():
            # Images (_write_atomic) and the table (fairskin.io.atomic_write_text's temporary sibling).
            for pattern in (f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}", f".{TABLE_FILE}.tmp-*"):
                for path in folder.glob(pattern):
                    path.unlink()
                    removed += 1
    return removed


def _stored_file_ok(out_dir: Path, entry: dict[str, Any]) -> bool:
    path = out_dir / str(entry.get("file") or "")
    return bool(entry.get("file")) and path.is_file() and path.stat().st_size == entry.get("bytes")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
