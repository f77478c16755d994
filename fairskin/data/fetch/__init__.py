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

Modules
-------
::

    rows.py      the CSV: the rows to fetch, checked before any request
    download.py  the session, per-host politeness, one attempt with its redirects, backoff, Retry-After
    checks.py    an image Pillow fully decodes, in a format prepare reads, with the row's MD5
    ledger.py    the ledger, atomic writes, the folder's lock and temporary files
    work.py      which rows need a request, one row's fetch, the thread pool and progress bar
    summary.py   the summary and the per-subclass table
"""

from __future__ import annotations

import time
from pathlib import Path

from fairskin.config import DataConfig
from fairskin.data import DataError
from fairskin.data.fetch.checks import FORMAT_EXTENSIONS
from fairskin.data.fetch.download import (
    TRANSIENT,
    HostLimiter,
    _Options,
    backoff_delay,
    is_transient,
    make_session,
    parse_retry_after,
    user_agent,
)
from fairskin.data.fetch.ledger import (
    FAILED,
    LEDGER_FILE,
    LOCK_FILE,
    MD5_MISMATCH,
    MISMATCH_DIR,
    NO_URL,
    TABLE_FILE,
    VERIFIED,
    _clean_temporaries,
    _lock_folder,
    read_ledger,
)
from fairskin.data.fetch.rows import FetchRow, read_fetch_rows
from fairskin.data.fetch.summary import FetchSummary, _summary, subclass_fetch_table
from fairskin.data.fetch.work import _fetch_rows

__all__ = [
    "FAILED",
    "FORMAT_EXTENSIONS",
    "LEDGER_FILE",
    "LOCK_FILE",
    "MD5_MISMATCH",
    "MISMATCH_DIR",
    "NO_URL",
    "TABLE_FILE",
    "TRANSIENT",
    "VERIFIED",
    "FetchRow",
    "FetchSummary",
    "HostLimiter",
    "backoff_delay",
    "fetch_images",
    "is_transient",
    "make_session",
    "parse_retry_after",
    "read_fetch_rows",
    "read_ledger",
    "subclass_fetch_table",
    "user_agent",
]

# pandas and requests are imported where used: the CLI builds its parser from fetch_images's defaults,
# and `python -m fairskin config` should not pay for them.


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
    limits = dict(
        timeout=timeout,
        total_timeout=total_timeout,
        retries=retries,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        max_retry_after=max_retry_after,
    )
    _check_settings(workers=workers, per_host=per_host, rate=rate, **limits)
    started = time.monotonic()
    data = data if data is not None else DataConfig()
    out_dir = Path(out_dir)
    rows, subset = read_fetch_rows(Path(csv_path), data, only_paper_subset)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder (--out names the folder the images go to)")
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = _Options(**limits)
    lock = _lock_folder(out_dir)
    try:
        _clean_temporaries(out_dir)
        hosts = HostLimiter(per_host, rate)
        final, todo, skipped, fetched = _fetch_rows(rows, out_dir, opts, workers, hosts, seed, progress, session)
        table = subclass_fetch_table(subset, final, data)
        from fairskin.io import atomic_write_text

        atomic_write_text(out_dir / TABLE_FILE, table.to_csv(index=False))
    finally:
        lock.close()
    return _summary(rows, final, table, data, fetched, skipped, len(todo), started, out_dir)


def _check_settings(**settings: float) -> None:
    """ValueError for the first of :func:`fetch_images`'s settings out of its range."""
    for name, low in (("workers", 1), ("per_host", 1), ("retries", 0), ("max_bytes", 1), ("max_redirects", 0)):
        value = settings[name]
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name in ("rate", "backoff_base", "backoff_cap", "max_retry_after"):
        value = settings[name]
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    for name in ("timeout", "total_timeout"):
        value = settings[name]
        if not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
