"""Downloading: one ``requests`` session, per-host politeness, one attempt at a URL with its redirects,
backoff with jitter and ``Retry-After`` for the retries.

Politeness: one ``requests`` session (connection reuse, a User-Agent naming the engine and its
version), at most ``per_host`` requests in flight per host, request starts at most ``rate`` per second
per host, exponential backoff with jitter on transient failures (:data:`TRANSIENT`, and any 5xx),
``Retry-After`` honoured (and applied to the whole host), never a retry on a 4xx other than 408/429.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timezone
from urllib.parse import urljoin, urlsplit

# Failure reasons worth another try, in this run (with backoff) and on a rerun; so is every http_5xx.
TRANSIENT = frozenset({"timeout", "connection", "truncated", "http_408", "http_429"})
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_DRAIN_LIMIT = 64 * 1024  # an error page up to this size is read so its connection can be reused


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


# --------------------------------------------------------------------------- one attempt


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
