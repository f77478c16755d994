"""Fitzpatrick17k URLs -> a folder of verified images named ``<md5hash>.<ext>``: polite, resumable, verified.

:func:`fetch_images` is the one entry point (``python -m fairskin data fetch`` calls it). For every CSV
row it ends with one of four statuses, recorded in the folder's ledger:

* ``verified``: the body decodes as an image (Pillow, fully loaded) and its MD5 equals the row's
  ``md5hash``; saved as ``DIR/<md5hash>.<ext>``, the extension from the decoded format (not the URL);
* ``md5_mismatch``: an image, but another MD5; kept apart in ``DIR/mismatch/``, never among the verified;
* ``failed``: with a reason: ``http_<code>``, ``timeout``, ``connection``, ``tls``, ``truncated`` (body
  shorter than announced), ``too_large``, ``too_many_redirects``, ``bad_redirect`` (to a scheme other
  than http(s)), ``bad_url``, ``not_image`` (e.g. an HTML page with status 200), ``corrupt_image``
  (identified but not fully loadable), ``unsupported_format``, ``bad_encoding``, ``error`` (anything
  else the HTTP stack raised);
* ``no_url``: the row has no URL (41 rows of the real CSV).

Politeness: one ``requests`` session (connection reuse, a User-Agent naming the engine and its
version), at most ``per_host`` requests in flight per host, request starts at most ``rate`` per second
per host, exponential backoff with jitter on transient failures (:data:`TRANSIENT`, and any 5xx),
``Retry-After`` honoured (and applied to the whole host), never a retry on a 4xx other than 408/429.

Durability: images are written under a temporary name and renamed; the ledger
(``DIR/.fetch_ledger.jsonl``) gets one JSON line per finished row, flushed and fsynced, and is read
back tolerating a torn last line. A rerun skips verified rows whose file is there, keeps final
failures, and retries only transient ones; an image on disk whose MD5 is its row's (a kill between
the rename and the ledger line, or images copied in by hand) is taken as verified without a request.
So a SIGKILL at any moment followed by a rerun leaves the same folder as one uninterrupted run.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import io
import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from fairskin.config import DataConfig
from fairskin.data import DataError
from fairskin.data.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    import pandas as pd

# pandas and requests are imported where used: the CLI builds its parser from fetch_images's defaults,
# and `python -m fairskin config` should not pay for them.

# Hidden names: the prepare stage's key covers the non-hidden files directly under data.image_root, so a
# rerun that only appends ledger lines does not redo prepare and every stage after it.
LEDGER_FILE = ".fetch_ledger.jsonl"
TABLE_FILE = ".fetch_subclasses.csv"
MISMATCH_DIR = "mismatch"
LOCK_FILE = ".fetch.lock"
_TEMP_PREFIX = ".fetch-"
_TEMP_SUFFIX = ".part"

VERIFIED, MD5_MISMATCH, FAILED, NO_URL = "verified", "md5_mismatch", "failed", "no_url"
# Failure reasons worth another try, in this run (with backoff) and on a rerun; so is every http_5xx.
TRANSIENT = frozenset({"timeout", "connection", "truncated", "http_408", "http_429"})
# Pillow format -> file extension; only formats `prepare` reads back (fairskin.data.images.IMAGE_EXTENSIONS).
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_DRAIN_LIMIT = 64 * 1024  # an error page up to this size is read so its connection can be reused
_MD5 = re.compile(r"^[0-9a-f]{32}$")


def is_transient(reason: str) -> bool:
    """Whether a failure reason is worth retrying (now with backoff, and on a rerun)."""
    return reason in TRANSIENT or bool(re.fullmatch(r"http_5\d\d", reason))


def user_agent() -> str:
    """The User-Agent of every request: the engine, its version and the HTTP library."""
    import requests

    from fairskin.versioning import engine_version

    return f"FairSkin-engine/{engine_version()} (python -m fairskin data fetch) python-requests/{requests.__version__}"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry): ``min(cap, base * 2**(attempt-1))``,
    half of it fixed and half drawn uniformly ("equal jitter"), so retries of many rows spread out but
    never come back at once."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (delay-seconds or an HTTP date, RFC 9110);
    None when absent or unreadable. ``now``: Unix time in seconds (default: the clock)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- the CSV


@dataclass(frozen=True)
class FetchRow:
    """One CSV row to fetch: ``id`` (the lower-case md5hash), its URL ("" when none), its 1-based line."""

    id: str
    url: str
    line: int


def read_fetch_rows(
    csv_path: Path, data: DataConfig, only_paper_subset: bool = False
) -> tuple[list[FetchRow], pd.DataFrame]:
    """Read and check the CSV; returns (rows to fetch, the paper subset's ``id, group, disease`` frame).

    Checks, before anything is requested: the ``md5hash`` and ``url`` columns exist, every md5hash is 32
    hexadecimal digits (it becomes a file name, so a path such as ``../x`` is refused), and everything
    :func:`~fairskin.data.fitzpatrick.read_fitzpatrick_csv` checks. The subset is the rows of
    ``data.diseases`` with a known skin type, binned as ``data.binning`` says (the same rule as
    ``python -m fairskin data counts``); with ``only_paper_subset`` only those rows are fetched.
    """
    import pandas as pd

    from fairskin.data.fitzpatrick import ManifestReport, read_fitzpatrick_csv, select_rows

    csv_path = Path(csv_path)
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found (the Fitzpatrick17k metadata CSV)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("md5hash", "url") if c not in raw.columns]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {missing}; the fetch needs md5hash (the file name and "
            f"the expected MD5) and url"
        )
    for i, value in enumerate(raw["md5hash"]):
        if not _MD5.match(value.strip().lower()):
            hint = (
                " (a path is not allowed: it names a file in the output folder)"
                if any(ch in value for ch in "/\\") or ".." in value
                else ""
            )
            raise DataError(
                f"{csv_path}: line {i + 2}, column md5hash: got {value!r}; expected 32 hexadecimal digits{hint}"
            )
    df = read_fitzpatrick_csv(csv_path)  # the other columns' checks; same row order, ids lower-cased
    df["url"] = raw["url"].str.strip().values
    subset = select_rows(df, data, ManifestReport())[["id", "group", "disease"]]
    if only_paper_subset:
        df = df[df["md5hash"].isin(set(subset["id"]))]
    rows = [FetchRow(id=i, url=u, line=int(n)) for i, u, n in zip(df["md5hash"], df["url"], df["line"])]
    return rows, subset.reset_index(drop=True)


# --------------------------------------------------------------------------- the ledger


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
        self._fh.write((json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# --------------------------------------------------------------------------- per-host politeness


class HostLimiter:
    """Per host: at most ``per_host`` requests in flight (a semaphore) and request starts at least
    ``1 / rate`` seconds apart (``rate`` in requests per second; 0 = no rate limit). :meth:`defer`
    holds every new request to a host back, e.g. for a ``Retry-After``."""

    def __init__(self, per_host: int, rate: float):
        self.per_host = per_host
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._next: dict[str, float] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of the host's request slots, waiting for the host's next allowed start time."""
        with self._lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with sem:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next.get(host, now))
                self._next[host] = start + self.interval
            if start > now:
                time.sleep(start - now)
            yield

    def defer(self, host: str, seconds: float) -> None:
        """No new request to ``host`` starts within ``seconds`` from now."""
        with self._lock:
            self._next[host] = max(self._next.get(host, 0.0), time.monotonic() + seconds)


# --------------------------------------------------------------------------- one row


@dataclass
class _Response:
    """The end of one attempt: a body, or a failure reason (and what the server asked us to wait)."""

    body: bytes | None = None
    reason: str = ""
    detail: str = ""
    http_status: int | None = None
    retry_after: float | None = None


@dataclass
class _Options:
    timeout: float
    total_timeout: float
    retries: int
    max_bytes: int
    max_redirects: int
    backoff_base: float
    backoff_cap: float
    max_retry_after: float


def _host(url: str) -> str:
    return urlsplit(url).netloc.lower()


def _http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _drain(resp) -> None:
    """Read a small unwanted body so the connection goes back to the pool; close a large one."""
    try:
        length = int(resp.headers.get("Content-Length", _DRAIN_LIMIT + 1))
        if length <= _DRAIN_LIMIT:
            resp.content  # noqa: B018  (reads and releases)
    except Exception:  # noqa: BLE001  (only a courtesy to the pool)
        pass
    resp.close()


def _read_body(resp, opts: _Options, deadline: float) -> _Response:
    import requests
    from urllib3.exceptions import ReadTimeoutError

    announced = resp.headers.get("Content-Length")
    announced = int(announced) if announced and announced.isdigit() else None
    if announced is not None and announced > opts.max_bytes:
        resp.close()
        return _Response(
            reason="too_large",
            detail=f"Content-Length {announced} > {opts.max_bytes} bytes",
            http_status=resp.status_code,
        )
    body = bytearray()
    try:
        for chunk in resp.iter_content(_CHUNK):
            body += chunk
            if len(body) > opts.max_bytes:
                resp.close()
                return _Response(
                    reason="too_large", detail=f"over {opts.max_bytes} bytes", http_status=resp.status_code
                )
            if time.monotonic() > deadline:
                resp.close()
                return _Response(
                    reason="timeout", detail=f"over the total of {opts.total_timeout} s", http_status=resp.status_code
                )
    except requests.exceptions.ChunkedEncodingError as exc:
        return _Response(reason="truncated", detail=f"after {len(body)} bytes ({exc})", http_status=200)
    except requests.exceptions.ContentDecodingError as exc:
        return _Response(reason="bad_encoding", detail=str(exc), http_status=200)
    except requests.exceptions.ConnectionError as exc:
        timed_out = any(isinstance(a, ReadTimeoutError) for a in exc.args)
        return _Response(reason="timeout" if timed_out else "connection", detail=str(exc), http_status=200)
    if announced is not None and "Content-Encoding" not in resp.headers and len(body) < announced:
        return _Response(reason="truncated", detail=f"{len(body)} of {announced} bytes", http_status=200)
    return _Response(body=bytes(body), http_status=200)


def _request(session, url: str, opts: _Options, hosts: HostLimiter) -> _Response:
    """One attempt: GET ``url`` following at most ``max_redirects`` http(s) redirects."""
    import requests

    deadline = time.monotonic() + opts.total_timeout
    for _hop in range(opts.max_redirects + 1):
        if time.monotonic() > deadline:
            return _Response(reason="timeout", detail=f"over the total of {opts.total_timeout} s")
        try:
            with hosts.slot(_host(url)):
                resp = session.get(url, stream=True, allow_redirects=False, timeout=(opts.timeout, opts.timeout))
                if resp.status_code in _REDIRECTS and resp.headers.get("Location"):
                    _drain(resp)
                    target = urljoin(url, resp.headers["Location"])
                    if not _http_url(target):
                        return _Response(
                            reason="bad_redirect", detail=f"to {target[:200]!r}", http_status=resp.status_code
                        )
                    url = target
                    continue
                if resp.status_code != 200:
                    _drain(resp)
                    return _Response(
                        reason=f"http_{resp.status_code}",
                        http_status=resp.status_code,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                with resp:
                    return _read_body(resp, opts, deadline)
        except requests.exceptions.Timeout as exc:
            return _Response(reason="timeout", detail=str(exc))
        except requests.exceptions.SSLError as exc:
            return _Response(reason="tls", detail=str(exc))
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ) as exc:
            return _Response(reason="bad_url", detail=str(exc))
        except (requests.exceptions.RequestException, OSError) as exc:
            return _Response(reason="connection", detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001  (one odd server must not end a 16,000-row fetch)
            return _Response(reason="error", detail=f"{type(exc).__name__}: {exc}")
    return _Response(reason="too_many_redirects", detail=f"more than {opts.max_redirects}")


def _image_extension(body: bytes) -> tuple[str | None, str, str]:
    """(extension, failure reason, detail) of a body: the extension of its fully decoded image format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as img:
            fmt = img.format or ""
            img.load()
    except UnidentifiedImageError:
        head = body[:60].decode("ascii", errors="replace")
        return None, "not_image", f"not an image ({len(body)} bytes starting {head!r})"
    except Exception as exc:  # noqa: BLE001  (truncated data, decoder errors, decompression bombs)
        return None, "corrupt_image", f"{type(exc).__name__}: {exc}"
    ext = FORMAT_EXTENSIONS.get(fmt)
    if ext is None:
        return None, "unsupported_format", f"{fmt} images are not read by prepare"
    return ext, "", ""


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


# --------------------------------------------------------------------------- the folder


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


def _image_on_disk(out_dir: Path, row_id: str) -> tuple[Path, bytes] | None:
    """The row's image already in the folder with the row's MD5 and fully decodable, if any."""
    for ext in IMAGE_EXTENSIONS:
        path = out_dir / f"{row_id}{ext}"
        if path.is_file():
            body = path.read_bytes()
            if hashlib.md5(body).hexdigest() == row_id and _image_extension(body)[0] is not None:
                return path, body
    return None


def _stored_file_ok(out_dir: Path, entry: dict[str, Any]) -> bool:
    path = out_dir / str(entry.get("file") or "")
    return bool(entry.get("file")) and path.is_file() and path.stat().st_size == entry.get("bytes")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the report


@dataclass
class FetchSummary:
    """What a fetch left in the folder.

    ``listed``: rows considered; ``fetched``: MD5-verified images downloaded by this run;
    ``verified``: verified images now in the folder; ``md5_mismatch``: rows whose image has another MD5
    (in ``mismatch/``); ``failed``: reason -> rows (``no_url`` included, mismatches not), so
    ``listed == verified + md5_mismatch + sum(failed)``; ``skipped_existing``: verified rows not
    requested again; ``requested_rows``: rows this run requested; ``seconds``: wall time.
    ``table``: per (group, disease) of the paper subset, see :func:`subclass_fetch_table`;
    ``below_minimum``: (group, disease, verified) of the subclasses under ``data.min_subclass_count``.
    """

    listed: int
    fetched: int
    verified: int
    md5_mismatch: int
    failed: dict[str, int]
    skipped_existing: int
    requested_rows: int
    seconds: float
    out_dir: Path
    ledger: Path
    table_path: Path
    min_subclass_count: int
    table: pd.DataFrame = field(repr=False)
    below_minimum: list[tuple[str, str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Flat JSON-ready dict: the counts, ``seconds``, the paths and ``below_minimum``."""
        return {
            "listed": self.listed,
            "fetched": self.fetched,
            "verified": self.verified,
            "md5_mismatch": self.md5_mismatch,
            "failed": dict(sorted(self.failed.items())),
            "skipped_existing": self.skipped_existing,
            "requested_rows": self.requested_rows,
            "seconds": round(self.seconds, 3),
            "out": str(self.out_dir),
            "ledger": str(self.ledger),
            "table": str(self.table_path),
            "min_subclass_count": self.min_subclass_count,
            "below_minimum": [list(x) for x in self.below_minimum],
        }


def subclass_fetch_table(subset: pd.DataFrame, final: dict[str, dict[str, Any]], data: DataConfig) -> pd.DataFrame:
    """Per (group, disease) of ``data``: ``paper`` (the paper's count, from the shipped table; empty for
    subclasses it lacks), ``listed`` (rows in the CSV), ``verified``, ``md5_mismatch``, ``failed`` and
    one column per failure reason, ``missing`` (listed - verified), ``below_minimum`` (verified under
    ``data.min_subclass_count``). Sorted by group, then disease."""
    import pandas as pd

    from fairskin.data.prepare import reference_counts

    paper = reference_counts()
    status = [final.get(i, {}).get("status", "") for i in subset["id"]]
    reason = [final.get(i, {}).get("reason", "") for i in subset["id"]]
    frame = subset.assign(status=status, reason=reason)
    reasons = sorted({r for s, r in zip(status, reason) if s in (FAILED, NO_URL)})
    records = []
    for group in sorted(data.group_names):
        for disease in sorted(data.diseases):
            part = frame[(frame["group"] == group) & (frame["disease"] == disease)]
            failed = part[part["status"].isin([FAILED, NO_URL])]
            verified = int((part["status"] == VERIFIED).sum())
            records.append(
                {
                    "group": group,
                    "disease": disease,
                    "paper": paper.get((group, disease)),
                    "listed": len(part),
                    "verified": verified,
                    "md5_mismatch": int((part["status"] == MD5_MISMATCH).sum()),
                    "failed": len(failed),
                    **{r: int((failed["reason"] == r).sum()) for r in reasons},
                    "missing": len(part) - verified,
                    "below_minimum": verified < data.min_subclass_count,
                }
            )
    table = pd.DataFrame.from_records(records)
    table["paper"] = table["paper"].astype("Int64")
    return table


# --------------------------------------------------------------------------- the entry point


def fetch_images(
    csv_path: Path | str,
    out_dir: Path | str,
    *,
    workers: int = 8,
    per_host: int = 2,
    rate: float = 2.0,
    timeout: float = 30.0,
    total_timeout: float = 300.0,
    retries: int = 4,
    max_bytes: int = 20 * 1024 * 1024,
    max_redirects: int = 5,
    backoff_base: float = 1.0,
    backoff_cap: float = 60.0,
    max_retry_after: float = 600.0,
    only_paper_subset: bool = False,
    data: DataConfig | None = None,
    progress: bool = True,
    seed: int | None = None,
    session=None,
) -> FetchSummary:
    """Download every CSV row's ``url`` to ``out_dir/<md5hash>.<ext>``, verified; resumable (module doc).

    Units: ``workers`` threads; ``per_host`` requests in flight per host; ``rate`` request starts per
    second per host (0: no limit); ``timeout`` seconds for each connect and each read;
    ``total_timeout`` seconds for one attempt with its redirects (checked between reads, so it can be
    overrun by at most one ``timeout``); ``retries`` further attempts on a transient failure;
    ``max_bytes`` bytes per body (after content decoding); ``max_redirects`` hops per attempt;
    ``backoff_base`` / ``backoff_cap`` seconds (:func:`backoff_delay`); ``max_retry_after`` seconds: a
    longer ``Retry-After`` ends the row's attempts for this run (it stays retryable on a rerun).
    ``data``: groups, diseases, binning and ``min_subclass_count`` (default: the defaults of
    :class:`~fairskin.config.DataConfig`, i.e. the paper's); ``only_paper_subset``: fetch only the rows of
    ``data.diseases`` with a known skin type. ``seed``: the backoff jitter's seed. ``session``: a
    ``requests.Session`` to use instead of :func:`make_session`'s.

    Raises DataError, before any request, for a bad CSV or an ``out_dir`` that is not a folder.
    Writes the ledger and ``.fetch_subclasses.csv`` (the table) into ``out_dir``.
    """
    for name, value, low in (
        ("workers", workers, 1),
        ("per_host", per_host, 1),
        ("retries", retries, 0),
        ("max_bytes", max_bytes, 1),
        ("max_redirects", max_redirects, 0),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (
        ("rate", rate),
        ("backoff_base", backoff_base),
        ("backoff_cap", backoff_cap),
        ("max_retry_after", max_retry_after),
    ):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    for name, value in (("timeout", timeout), ("total_timeout", total_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    started = time.monotonic()
    data = data if data is not None else DataConfig()
    out_dir = Path(out_dir)
    rows, subset = read_fetch_rows(Path(csv_path), data, only_paper_subset)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder (--out names the folder the images go to)")
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = _Options(
        timeout=timeout,
        total_timeout=total_timeout,
        retries=retries,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        max_retry_after=max_retry_after,
    )
    lock = _lock_folder(out_dir)
    try:
        _clean_temporaries(out_dir)
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
                hosts=HostLimiter(per_host, rate),
                rng=random.Random(seed),
                progress=progress,
                session=session,
            )
        finally:
            ledger.close()
        listed_ids = [r.id for r in rows]
        statuses = [final[i]["status"] for i in listed_ids]
        failed: dict[str, int] = {}
        for i, status in zip(listed_ids, statuses):
            if status in (FAILED, NO_URL):
                failed[final[i]["reason"]] = failed.get(final[i]["reason"], 0) + 1
        table = subclass_fetch_table(subset, final, data)
        from fairskin.io import atomic_write_text

        table_path = out_dir / TABLE_FILE
        atomic_write_text(table_path, table.to_csv(index=False))
    finally:
        lock.close()
    small = table[table["below_minimum"]]
    below = [(r.group, r.disease, int(r.verified)) for r in small.itertuples()]
    warnings = [
        f"{r.group} / {r.disease}: {r.verified} verified image(s) of {r.listed} listed (paper: "
        f"{_paper_text(r.paper)}), under data.min_subclass_count={data.min_subclass_count}; prepare drops "
        f"this subclass"
        for r in small.itertuples()
    ]
    return FetchSummary(
        listed=len(rows),
        fetched=fetched,
        verified=statuses.count(VERIFIED),
        md5_mismatch=statuses.count(MD5_MISMATCH),
        failed=failed,
        skipped_existing=skipped,
        requested_rows=len(todo),
        seconds=time.monotonic() - started,
        out_dir=out_dir,
        ledger=ledger_path,
        table_path=table_path,
        min_subclass_count=data.min_subclass_count,
        table=table,
        below_minimum=below,
        warnings=warnings,
    )


def _paper_text(value) -> str:
    import pandas as pd

    return "-" if pd.isna(value) else str(int(value))


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


def make_session(pool_size: int):
    """One ``requests.Session`` for the whole fetch: keep-alive pools of ``pool_size`` connections per
    host, no automatic retries or redirects (the fetch does both itself, per row), the engine's
    User-Agent."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": user_agent(), "Accept": "image/*,*/*;q=0.5"})
    return session


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
        if self._progress is not None:
            text = f"{counts[VERIFIED]} verified, {counts[MD5_MISMATCH]} md5 mismatch, {counts[FAILED]} failed"
            self._progress.update(self._task, advance=1, description=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
