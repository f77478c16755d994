"""The rows' work: which rows need a request (from the ledger and the folder), fetching each one (with its
retries, checks and file), and fetching them on a thread pool with a progress bar."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from fairskin.data.fetch.checks import _image_extension, _image_on_disk
from fairskin.data.fetch.download import (
    HostLimiter,
    _host,
    _http_url,
    _Options,
    _request,
    backoff_delay,
    is_transient,
    make_session,
)
from fairskin.data.fetch.ledger import (
    FAILED,
    LEDGER_FILE,
    MD5_MISMATCH,
    MISMATCH_DIR,
    NO_URL,
    VERIFIED,
    _Ledger,
    _record,
    _stored_file_ok,
    _write_atomic,
    read_ledger,
)
from fairskin.data.fetch.rows import FetchRow


def _fetch_rows(
    rows: list[FetchRow],
    out_dir: Path,
    opts: _Options,
    workers: int,
    hosts: HostLimiter,
    seed: int | None,
    progress: bool,
    session,
) -> tuple[dict[str, dict[str, Any]], list[FetchRow], int, int]:
    """Every row's final ledger entry, from the ledger and the folder or by fetching it on ``workers`` threads
    (called holding the folder's lock; ``seed``: the backoff jitter's; ``session``: None for
    :func:`make_session`'s). Returns (final entries, rows requested, verified rows not requested again,
    images fetched)."""
    ledger_path = out_dir / LEDGER_FILE
    previous = read_ledger(ledger_path)
    ledger = _Ledger(ledger_path)
    try:
        final, todo, skipped = _plan(rows, previous, out_dir, ledger)
        fetched = _run(
            todo,
            out_dir,
            opts,
            ledger,
            previous,
            final,
            workers=workers,
            hosts=hosts,
            rng=random.Random(seed),
            progress=progress,
            session=session,
        )
    finally:
        ledger.close()
    return final, todo, skipped, fetched


def _plan(
    rows: list[FetchRow], previous: dict[str, dict[str, Any]], out_dir: Path, ledger: _Ledger
) -> tuple[dict[str, dict[str, Any]], list[FetchRow], int]:
    """Decide per row from the ledger and the folder: done, kept, recorded without a request, or to fetch.

    Returns (final entries so far, rows to fetch, verified rows not requested again).
    """
    final: dict[str, dict[str, Any]] = {}
    todo: list[FetchRow] = []
    skipped = 0
    for row in rows:
        entry = previous.get(row.id)
        if entry is not None and entry.get("url") != row.url:
            entry = None  # the CSV's URL changed: this row starts over
        if entry is not None and entry.get("status") == VERIFIED and _stored_file_ok(out_dir, entry):
            final[row.id] = entry
            skipped += 1
            continue
        if entry is not None and entry.get("status") in (MD5_MISMATCH, NO_URL):
            final[row.id] = entry
            continue
        if entry is not None and entry.get("status") == FAILED and not is_transient(str(entry.get("reason"))):
            final[row.id] = entry
            continue
        new: dict[str, Any] | None = None
        base = {
            "id": row.id,
            "line": row.line,
            "url": row.url,
            "attempts": 0,
            "http_status": None,
            "bytes": 0,
            "md5": "",
            "file": "",
            "detail": "",
            "seconds": 0.0,
        }
        on_disk = _image_on_disk(out_dir, row.id)
        if on_disk is not None:
            path, body = on_disk
            new = {
                **base,
                "status": VERIFIED,
                "reason": "md5 matches",
                "detail": "found on disk",
                "bytes": len(body),
                "md5": row.id,
                "file": path.name,
            }
            skipped += 1
        elif not row.url:
            new = {**base, "status": NO_URL, "reason": NO_URL}
        elif not _http_url(row.url):
            new = {**base, "status": FAILED, "reason": "bad_url", "detail": "not an http(s) URL with a host"}
        if new is None:
            todo.append(row)
            continue
        _record(ledger, out_dir, previous.get(row.id), new)
        final[row.id] = new
    return final, _interleave_hosts(todo), skipped


def _interleave_hosts(rows: list[FetchRow]) -> list[FetchRow]:
    """Rows in round-robin order over their hosts, so workers are not all queued on one host."""
    by_host: dict[str, list[FetchRow]] = {}
    for row in rows:
        by_host.setdefault(_host(row.url), []).append(row)
    queues = list(by_host.values())
    out: list[FetchRow] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


# --------------------------------------------------------------------------- one row


def _fetch_row(
    session, row: FetchRow, out_dir: Path, opts: _Options, hosts: HostLimiter, stop: threading.Event, rng: random.Random
) -> dict[str, Any]:
    """Fetch, verify and store one row; returns its ledger entry."""
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        res = _request(session, row.url, opts, hosts)
        if res.body is not None or not is_transient(res.reason) or attempts > opts.retries or stop.is_set():
            break
        wait_s = backoff_delay(attempts, opts.backoff_base, opts.backoff_cap, rng)
        if res.retry_after is not None:
            if res.retry_after > opts.max_retry_after:
                res.detail = f"Retry-After {res.retry_after:.0f} s is over the {opts.max_retry_after:.0f} s we wait"
                break
            hosts.defer(_host(row.url), res.retry_after)
            wait_s = max(wait_s, res.retry_after)
        if stop.wait(wait_s):
            break
    entry = {
        "id": row.id,
        "line": row.line,
        "url": row.url,
        "attempts": attempts,
        "http_status": res.http_status,
        "bytes": 0,
        "md5": "",
        "file": "",
        "status": FAILED,
        "reason": res.reason,
        "detail": res.detail,
    }
    if res.body is not None:
        body = res.body
        md5 = hashlib.md5(body).hexdigest()
        entry.update(bytes=len(body), md5=md5)
        ext, reason, detail = _image_extension(body)
        if ext is None:
            entry.update(reason=reason, detail=detail)
        else:
            name = f"{row.id}{ext}"
            if md5 == row.id:
                folder, rel = out_dir, name
                entry.update(status=VERIFIED, reason="md5 matches", detail="")
            else:
                folder, rel = out_dir / MISMATCH_DIR, f"{MISMATCH_DIR}/{name}"
                entry.update(status=MD5_MISMATCH, reason="md5 differs", detail=f"got {md5}")
            _write_atomic(folder, name, body, row.id)
            entry["file"] = rel
    entry["seconds"] = round(time.monotonic() - started, 3)
    return entry


# --------------------------------------------------------------------------- the thread pool


def _run(
    todo: list[FetchRow],
    out_dir: Path,
    opts: _Options,
    ledger: _Ledger,
    previous: dict[str, dict[str, Any]],
    final: dict[str, dict[str, Any]],
    *,
    workers: int,
    hosts: HostLimiter,
    rng: random.Random,
    progress: bool,
    session,
) -> int:
    """Fetch ``todo`` on a thread pool; each finished row's ledger line is written here, in one thread."""
    if not todo:
        return 0
    own_session = session is None
    session = make_session(workers) if own_session else session
    stop = threading.Event()
    fetched = 0
    counts = {VERIFIED: 0, MD5_MISMATCH: 0, FAILED: 0}
    bar = _Progress(len(todo), progress)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
    try:
        # Submitted a window at a time, so an interrupt leaves few queued rows to cancel.
        pending: set = set()
        queue = iter(todo)
        while True:
            while len(pending) < 4 * workers:
                row = next(queue, None)
                if row is None:
                    break
                # Each row its own jitter stream: threads never share one Random.
                pending.add(
                    pool.submit(_fetch_row, session, row, out_dir, opts, hosts, stop, random.Random(rng.random()))
                )
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                entry = fut.result()
                _record(ledger, out_dir, previous.get(entry["id"]), entry)
                final[entry["id"]] = entry
                counts[entry["status"]] += 1
                fetched += entry["status"] == VERIFIED
                bar.advance(counts)
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True)
        if own_session:
            session.close()
    return fetched


class _Progress:
    """A rich progress bar on stderr with the running counts (nothing when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]fetch[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=total)

    def advance(self, counts: dict[str, int]) -> None:
        """One more row done; ``counts``: the running counts per status."""
        if self._progress is not None:
            text = f"{counts[VERIFIED]} verified, {counts[MD5_MISMATCH]} md5 mismatch, {counts[FAILED]} failed"
            self._progress.update(self._task, advance=1, description=text)

    def close(self) -> None:
        """Stop the bar (once)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
