"""`python -m fairskin data fetch` (fairskin.data.fetch) against a real HTTP server on 127.0.0.1.

The server (http.server's ThreadingHTTPServer in a thread) answers by path: an image, 404, 500 twice
then the image, 429 with Retry-After then the image, a response slower than the timeout, a body cut
short, an HTML page with status 200, a redirect loop, redirects to an image and to ftp://, bodies over
the size cap (with and without Content-Length) and an image whose MD5 is not its row's. It logs every
request (time, path, User-Agent, connection) and counts the requests in flight, and those records are
what the tests check the fetcher against.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from conftest import FITZPATRICK_CSV, REFERENCE_COUNTS, REPO
from PIL import Image

from fairskin.__main__ import main
from fairskin.config import build_config
from fairskin.data.fetch import (
    LEDGER_FILE,
    LOCK_FILE,
    MISMATCH_DIR,
    TABLE_FILE,
    backoff_delay,
    fetch_images,
    parse_retry_after,
    read_fetch_rows,
    read_ledger,
    subclass_fetch_table,
)


@pytest.fixture(scope="module")
def ray_head():
    """Overrides conftest's autouse session head: nothing here uses Ray, and a head costs a 2-core
    machine tens of seconds."""
    yield None


@pytest.fixture(scope="module", autouse=True)
def _no_proxy():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


# --------------------------------------------------------------------------- the server


class ServerState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[float, str, str, int]] = []  # (monotonic time, path, User-Agent, connection no.)
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.peak = 0
        self.connections = 0
        self.bodies: dict[str, bytes] = {}  # key -> image bytes served under /img/<key>...

    def paths(self, since: int = 0) -> list[str]:
        with self.lock:
            return [p for _, p, _, _ in self.log[since:]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen

    def setup(self) -> None:
        super().setup()
        state = self.server.state
        with state.lock:
            state.connections += 1
            self.conn_no = state.connections

    def log_message(self, *args) -> None:
        pass

    def _leave(self) -> None:
        # A request is "in flight" from its arrival until just before its first response byte (or until
        # the client hangs up): inside the client's own in-flight span, so the count never overstates it.
        if not self._left:
            self._left = True
            with self.server.state.lock:
                self.server.state.in_flight -= 1

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        with state.lock:
            attempt = state.hits[url.path]
            state.hits[url.path] += 1
            state.log.append((time.monotonic(), url.path, self.headers.get("User-Agent", ""), self.conn_no))
            state.in_flight += 1
            state.peak = max(state.peak, state.in_flight)
        self._left = False
        try:
            query = dict(p.split("=") for p in url.query.split("&") if "=" in p)
            if "d" in query and not self._pause(float(query["d"])):
                return
            kind, _, name = url.path.strip("/").partition("/")
            key = name.split(".")[0]
            getattr(self, f"_{kind}")(key, attempt)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._leave()

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False (and the request leaves) as soon as the client hangs up."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.connection], [], [], left)
            if ready:
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    self._leave()
                    self.close_connection = True
                    return False
                time.sleep(0.01)
        return True

    def _reply(
        self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True, cut: int | None = None
    ) -> None:
        self._leave()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        if not length or cut is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()

    def _image(self, key: str) -> None:
        self._reply(200, self.server.state.bodies[key], {"Content-Type": "image/png"})

    def _img(self, key, attempt):
        self._image(key)

    def _e404(self, key, attempt):
        self._reply(404, b"not found", {"Content-Type": "text/plain"})

    def _flaky(self, key, attempt):
        if attempt < 2:
            self._reply(500, b"oops", {"Content-Type": "text/plain"})
        else:
            self._image(key)

    def _busy(self, key, attempt):
        if attempt == 0:
            self._reply(429, b"slow down", {"Retry-After": "1"})
        else:
            self._image(key)

    def _slow(self, key, attempt):
        if self._pause(2.0):
            self._image(key)

    def _cut(self, key, attempt):
        body = self.server.state.bodies[key]
        self._reply(200, body, {"Content-Type": "image/png"}, cut=len(body) // 2)

    def _html(self, key, attempt):
        self._reply(200, b"<!doctype html><html><body>Image moved</body></html>", {"Content-Type": "text/html"})

    def _loop(self, key, attempt):
        self._reply(302, headers={"Location": f"/loop2/{key}"})

    def _loop2(self, key, attempt):
        self._reply(302, headers={"Location": f"/loop/{key}"})

    def _redir(self, key, attempt):
        self._reply(302, headers={"Location": f"../img/{key}.png"})

    def _badredir(self, key, attempt):
        self._reply(302, headers={"Location": "ftp://127.0.0.1/secret.png"})

    def _big(self, key, attempt):
        self._reply(200, b"\xff\xd8\xff" + bytes(300_000), {"Content-Type": "image/jpeg"}, length=False)

    def _bigcl(self, key, attempt):
        self._reply(200, b"\xff\xd8\xff" + bytes(300_000), {"Content-Type": "image/jpeg"})


@contextmanager
def serving():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.state = ServerState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- data


def image_bytes(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def csv_row(md5hash: str, url: str, label: str, fst: int) -> dict:
    """A row with the real Fitzpatrick17k CSV's columns."""
    return {
        "md5hash": md5hash,
        "fitzpatrick_scale": fst,
        "fitzpatrick_centaur": fst,
        "label": label,
        "nine_partition_label": "inflammatory",
        "three_partition_label": "non-neoplastic",
        "qc": "",
        "url": url,
        "url_alphanum": url.replace("/", "").replace(":", "").replace(".", ""),
    }


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


DISEASES = ["lichen planus", "psoriasis"]
FST = {"Caucasian": 1, "Asian": 3, "African": 5}
MIN_COUNT = 4


def data_config():
    return build_config(
        "demo", overrides=[f"data.diseases=[{', '.join(DISEASES)}]", f"data.min_subclass_count={MIN_COUNT}"]
    ).data


FAST = dict(
    workers=4,
    per_host=2,
    rate=0,
    timeout=0.4,
    retries=3,
    max_bytes=100_000,
    max_redirects=3,
    backoff_base=0.05,
    backoff_cap=0.2,
    progress=False,
    seed=0,
)

# African / lichen planus gets every troublesome row: (kind, expected status, expected reason).
TROUBLE = [
    ("flaky", "verified", "md5 matches"),
    ("busy", "verified", "md5 matches"),
    ("e404", "failed", "http_404"),
    ("slow", "failed", "timeout"),
    ("cut", "failed", "truncated"),
    ("html", "failed", "not_image"),
    ("loop", "failed", "too_many_redirects"),
    ("big", "failed", "too_large"),
    ("bigcl", "failed", "too_large"),
    ("badredir", "failed", "bad_redirect"),
    ("mismatch", "md5_mismatch", "md5 differs"),
    ("nourl", "no_url", "no_url"),
]


def build_scenario(state: ServerState, base: str, folder: Path) -> dict:
    """The CSV of the acceptance scenario; returns what each row should end as (computed by hand)."""
    rows, expect, served = [], {}, {}
    seed = 0

    def image_row(kind: str, label: str, fst: int, fmt: str, url_suffix: str, delay: str = "?d=0.05"):
        nonlocal seed
        seed += 1
        body = image_bytes(seed, fmt)
        key = md5(body)
        state.bodies[key] = body
        served[key] = body
        rows.append(csv_row(key, f"{base}/{kind}/{key}{url_suffix}{delay}", label, fst))
        return key

    # 4 good rows in each subclass but African / lichen planus; PNGs behind URLs that say .jpg.
    for group, fst in FST.items():
        for disease in DISEASES:
            if (group, disease) == ("African", "lichen planus"):
                continue
            for i in range(4):
                fmt = "PNG" if i % 2 == 0 else "JPEG"
                key = image_row("img", disease, fst, fmt, ".jpg" if fmt == "PNG" else "")
                expect[key] = ("verified", "md5 matches", f"{key}.{'png' if fmt == 'PNG' else 'jpg'}")
    key = image_row("redir", "psoriasis", FST["Caucasian"], "PNG", ".png", delay="")
    expect[key] = ("verified", "md5 matches", f"{key}.png")
    trouble_ids = {}
    for kind, status, reason in TROUBLE:
        if kind in ("flaky", "busy", "slow", "cut"):
            key = image_row(kind, "lichen planus", FST["African"], "PNG", ".png", delay="")
        elif kind == "mismatch":
            seed += 1
            body = image_bytes(seed, "PNG")
            state.bodies["mm"] = body
            key = md5(b"the image the CSV meant")
            rows.append(csv_row(key, f"{base}/img/mm.png", "lichen planus", FST["African"]))
            served[key] = body
        else:
            key = md5(kind.encode())
            url = "" if kind == "nourl" else f"{base}/{kind}/{key}"
            rows.append(csv_row(key, url, "lichen planus", FST["African"]))
        trouble_ids[kind] = key
        name = {"verified": f"{key}.png", "md5_mismatch": f"{MISMATCH_DIR}/{key}.png"}.get(status, "")
        expect[key] = (status, reason, name)
    # Outside the paper subset: another label, and an unknown skin type; fetched all the same.
    for label, fst in (("acne", 2), ("psoriasis", -1)):
        key = image_row("img", label, fst, "PNG", ".png", delay="")
        expect[key] = ("verified", "md5 matches", f"{key}.png")
    csv = write_csv(folder / "fitzpatrick17k.csv", rows)
    return {"csv": csv, "expect": expect, "served": served, "trouble": trouble_ids, "rows": rows}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """One fetch of the acceptance scenario; tests read what it left (and copy it to change it)."""
    folder = tmp_path_factory.mktemp("fetch")
    with serving() as (server, base):
        sc = build_scenario(server.state, base, folder)
        out = folder / "images"
        started = time.monotonic()
        summary = fetch_images(sc["csv"], out, data=data_config(), **FAST)
        sc.update(
            server=server,
            base=base,
            out=out,
            summary=summary,
            wall=time.monotonic() - started,
            log_len=len(server.state.log),
        )
        yield sc


def folder_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def key_of(path: str) -> str:
    """/<kind>/<key>[.<ext>] -> key"""
    return path.split("/")[2].split(".")[0]


# --------------------------------------------------------------------------- the acceptance scenario


def test_every_row_ends_in_its_status_with_its_reason(scenario):
    ledger = read_ledger(scenario["out"] / LEDGER_FILE)
    got = {i: (e["status"], e["reason"], e["file"]) for i, e in ledger.items()}
    assert got == scenario["expect"]
    for key, entry in ledger.items():
        if entry["status"] in ("verified", "md5_mismatch"):
            assert entry["bytes"] == len(scenario["served"][key]) and entry["md5"] == md5(scenario["served"][key])
        assert entry["time"]


def test_only_real_verified_images_are_in_the_folder(scenario):
    out, expect, served = scenario["out"], scenario["expect"], scenario["served"]
    files = folder_files(out)
    images = {name: files[name] for name in files if name not in (LEDGER_FILE, TABLE_FILE, LOCK_FILE)}
    want = {name: served[key] for key, (status, _, name) in expect.items() if name}
    assert images == want  # the verified ones at the top (extension from the format), the mismatch apart
    mismatch = f"{MISMATCH_DIR}/{scenario['trouble']['mismatch']}.png"
    assert [n for n in images if n.startswith(MISMATCH_DIR)] == [mismatch]
    assert not [n for n in files if ".part" in n or n.split("/")[-1].startswith(".fetch-")]
    for name, body in images.items():
        with Image.open(io.BytesIO(body)) as img:
            img.load()
            assert name.endswith({"PNG": ".png", "JPEG": ".jpg"}[img.format])


def test_retries_backoff_and_redirects_seen_by_the_server(scenario):
    state, trouble = scenario["server"].state, scenario["trouble"]
    hits = Counter(scenario["server"].state.paths()[: scenario["log_len"]])
    retries = FAST["retries"]

    def n(kind: str) -> int:
        return sum(c for p, c in hits.items() if p.split("/")[1] == kind and key_of(p) == trouble[kind])

    assert n("e404") == 1 and n("html") == 1 and n("big") == 1 and n("bigcl") == 1 and n("badredir") == 1
    assert n("flaky") == 3  # 500, 500, image
    assert n("busy") == 2 and n("slow") == retries + 1 and n("cut") == retries + 1
    assert n("loop") + sum(c for p, c in hits.items() if p.startswith("/loop2/")) == FAST["max_redirects"] + 1
    assert not any(key_of(p) == trouble["nourl"] for p in hits)
    with state.lock:
        busy = [t for t, p, _, _ in state.log if p.startswith("/busy/")]
        # While the host said Retry-After: 1, no request went to it (0.3 s left for those already on their
        # way before the client read the 429).
        during = [t for t, _, _, _ in state.log if busy[0] + 0.3 < t < busy[0] + 0.95]
    assert busy[1] - busy[0] >= 1.0 and during == []


def test_politeness_per_host_limit_user_agent_and_connection_reuse(scenario):
    state = scenario["server"].state
    assert state.peak == FAST["per_host"]  # reached, never exceeded
    version = metadata.version("fairskin")
    with state.lock:
        agents = {ua for _, _, ua, _ in state.log}
        connections = {c for _, _, _, c in state.log}
    assert len(agents) == 1 and f"FairSkin-engine/{version}" in agents.pop()
    assert len(connections) < len(state.log) / 2


def test_summary_counts_and_missing_table(scenario):
    s = scenario["summary"]
    failed = {
        "http_404": 1,
        "timeout": 1,
        "truncated": 1,
        "not_image": 1,
        "too_many_redirects": 1,
        "too_large": 2,
        "bad_redirect": 1,
        "no_url": 1,
    }
    assert (s.listed, s.fetched, s.verified, s.md5_mismatch, s.skipped_existing) == (35, 25, 25, 1, 0)
    assert s.failed == failed and s.listed == s.verified + s.md5_mismatch + sum(s.failed.values())
    assert s.below_minimum == [("African", "lichen planus", 2)]
    assert len(s.warnings) == 1 and "African / lichen planus" in s.warnings[0] and f"={MIN_COUNT}" in s.warnings[0]
    table = pd.read_csv(scenario["out"] / TABLE_FILE)
    paper = pd.read_csv(REFERENCE_COUNTS).set_index(["group", "disease"])["count"]
    assert len(table) == 6
    for row in table.to_dict("records"):
        assert row["paper"] == paper[(row["group"], row["disease"])]
        if (row["group"], row["disease"]) == ("African", "lichen planus"):
            assert (row["listed"], row["verified"], row["md5_mismatch"], row["failed"]) == (12, 2, 1, 9)
            assert {r: row[r] for r in failed} == failed and row["below_minimum"]
        else:
            listed = 5 if (row["group"], row["disease"]) == ("Caucasian", "psoriasis") else 4
            assert (row["listed"], row["verified"], row["failed"], row["missing"]) == (listed, listed, 0, 0)
            assert not row["below_minimum"]


def test_fetched_folder_feeds_prepare_at_smoke_size(scenario, tmp_path):
    from fairskin.data.prepare import MANIFEST_FILE, prepare_dataset

    config = build_config(
        "smoke",
        overrides=[
            "data.source=fitzpatrick17k",
            f"data.csv_path={scenario['csv']}",
            f"data.image_root={scenario['out']}",
            f"data.diseases=[{', '.join(DISEASES)}]",
            f"data.min_subclass_count={MIN_COUNT}",
            "data.on_bad_image=skip",
            f"runtime.runs_root={tmp_path / 'runs'}",
        ],
    )
    out = tmp_path / "prepared"
    out.mkdir()
    summary = prepare_dataset(config, out)
    manifest = pd.read_parquet(out / MANIFEST_FILE)
    # The 21 good rows of the five full subclasses; African / lichen planus (2 verified) is dropped.
    subset = {r["md5hash"] for r in scenario["rows"] if r["label"] in DISEASES and r["fitzpatrick_scale"] > 0}
    want = {
        k
        for k, (status, _, _) in scenario["expect"].items()
        if status == "verified" and k in subset and k not in (scenario["trouble"]["flaky"], scenario["trouble"]["busy"])
    }
    assert len(want) == 21 and set(manifest["id"]) == want
    assert summary["report"]["subclasses_below_minimum"] == [["African", "lichen planus", 2]]
    assert (out / "shards").is_dir() and summary["rows"] == 21


def test_rerun_skips_done_rows_and_retries_only_transient_failures(scenario, tmp_path):
    out = tmp_path / "images"
    shutil.copytree(scenario["out"], out)
    trouble, expect = scenario["trouble"], scenario["expect"]
    verified = sorted(k for k, (s, _, _) in expect.items() if s == "verified" and k not in trouble.values())
    adopted, deleted = verified[0], verified[1]
    # A kill between an image's rename and its ledger line: the image is there, the line is not; a
    # torn half line; temporary files of writes cut short; and an image removed by hand.
    lines = (out / LEDGER_FILE).read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["id"] != adopted]
    (out / LEDGER_FILE).write_text("\n".join(kept) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (out / f".fetch-{adopted}-deadbeef.part").write_bytes(b"half an image")
    (out / f".{TABLE_FILE}.tmp-1-deadbeef@host").write_text("group,disease\n")
    (out / expect[deleted][2]).unlink()
    state = scenario["server"].state
    since = len(state.log)
    summary = fetch_images(scenario["csv"], out, data=data_config(), **FAST)
    again = Counter(key_of(p) for p in state.paths(since))
    retries = FAST["retries"]
    assert again == {trouble["slow"]: retries + 1, trouble["cut"]: retries + 1, deleted: 1}
    assert (summary.fetched, summary.skipped_existing, summary.verified) == (1, 24, 25)
    ledger = read_ledger(out / LEDGER_FILE)
    assert {i: (e["status"], e["reason"], e["file"]) for i, e in ledger.items()} == expect
    assert ledger[adopted]["detail"] == "found on disk"
    assert folder_files(out).keys() == folder_files(scenario["out"]).keys()
    # One new line per row that needed one (the adopted image, the refetched one, the two retried),
    # none for rows skipped; the torn half line is gone.
    after = (out / LEDGER_FILE).read_text().splitlines()
    assert len(after) == len(kept) + 4 and after[: len(kept)] == kept


# --------------------------------------------------------------------------- kill and rerun


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    with serving() as (server, base):
        state = server.state
        rows = []
        for i in range(16):
            body = image_bytes(100 + i, "PNG" if i % 2 else "JPEG")
            state.bodies[md5(body)] = body
            rows.append(csv_row(md5(body), f"{base}/img/{md5(body)}?d=0.15", "psoriasis", 1 + i % 6))
        state.bodies["mm"] = image_bytes(999, "PNG")
        rows += [
            csv_row(md5(b"m"), f"{base}/img/mm", "psoriasis", 2),
            csv_row(md5(b"404"), f"{base}/e404/x", "psoriasis", 3),
            csv_row(md5(b"html"), f"{base}/html/x", "psoriasis", 4),
            csv_row(md5(b"none"), "", "psoriasis", 5),
        ]
        csv = write_csv(tmp_path / "meta.csv", rows)
        killed = tmp_path / "killed"
        cmd = [
            sys.executable,
            "-m",
            "fairskin",
            "data",
            "fetch",
            "--csv",
            str(csv),
            "--out",
            str(killed),
            "--workers",
            "2",
            "--per-host",
            "2",
            "--rate",
            "0",
            "--timeout",
            "2",
            "--retries",
            "1",
            "--min-count",
            "1",
            "--no-progress",
            "--json",
        ]
        env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = [e for e in read_ledger(killed / LEDGER_FILE).values() if e["status"] == "verified"]
            if len(done) >= 4:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = {i for i, e in read_ledger(killed / LEDGER_FILE).items() if e["status"] == "verified"}
        since = len(state.log)
        assert 4 <= len(finished) < 16
        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        after = [key_of(p) for p in state.paths(since)]
        assert not finished & set(after)  # nothing that had finished was requested again
        lines = rerun.stdout.strip().splitlines()
        assert len(lines) == 1
        summary = json.loads(lines[0])
        keys = {"listed", "fetched", "verified", "md5_mismatch", "failed", "skipped_existing", "seconds"}
        assert keys <= set(summary)
        assert summary["listed"] == 20 and summary["verified"] == 16 and summary["md5_mismatch"] == 1
        assert summary["failed"] == {"http_404": 1, "not_image": 1, "no_url": 1}
        assert summary["skipped_existing"] >= len(finished) and summary["fetched"] + summary["skipped_existing"] == 16
        assert isinstance(summary["seconds"], float) and summary["seconds"] > 0
        whole = tmp_path / "whole"
        fetch_images(
            csv,
            whole,
            workers=2,
            per_host=2,
            rate=0,
            timeout=2,
            retries=1,
            progress=False,
            data=build_config("demo", overrides=["data.min_subclass_count=1"]).data,
        )

    def state_of(folder):
        files = {k: v for k, v in folder_files(folder).items() if k != LEDGER_FILE}
        return files, {i: (e["status"], e["reason"], e["file"]) for i, e in read_ledger(folder / LEDGER_FILE).items()}

    assert state_of(killed) == state_of(whole)
    # The prepare stage's key reads data.image_root (its non-hidden top-level files): the ledgers differ
    # (times, more lines after the kill), the key does not.
    from fairskin.fingerprints import content_fingerprint

    assert content_fingerprint(killed, recursive=False) == content_fingerprint(whole, recursive=False)
    assert (killed / LEDGER_FILE).read_bytes() != (whole / LEDGER_FILE).read_bytes()
    assert len([k for k in state_of(whole)[0] if k.endswith((".png", ".jpg"))]) == 17


# --------------------------------------------------------------------------- rate


def test_rate_spaces_request_starts_per_host(tmp_path):
    with serving() as (server, base):
        rows = []
        for i in range(8):
            body = image_bytes(200 + i, "PNG")
            server.state.bodies[md5(body)] = body
            rows.append(csv_row(md5(body), f"{base}/img/{md5(body)}", "psoriasis", 1))
        csv = write_csv(tmp_path / "meta.csv", rows)
        fetch_images(csv, tmp_path / "out", workers=4, per_host=4, rate=10, timeout=2, progress=False)
        times = sorted(t for t, _, _, _ in server.state.log)
    # The client spaces request starts 0.1 s apart; arrivals add a latency that varies with the machine's
    # load, so check spans, not single gaps (with no limit the 8 arrive within a few milliseconds).
    times = np.asarray(times)
    assert len(times) == 8 and times[-1] - times[0] >= 0.6, np.diff(times)
    assert (times[2:] - times[:-2]).min() >= 0.1, np.diff(times)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["no_url_column", "no_md5_column", "short_md5", "path_md5", "out_is_a_file"])
def test_bad_input_is_refused_before_any_request(case, tmp_path, capsys):
    with serving() as (server, base):
        body = image_bytes(1, "PNG")
        server.state.bodies[md5(body)] = body
        rows = [
            csv_row(md5(body), f"{base}/img/{md5(body)}", "psoriasis", 1),
            csv_row(md5(b"2"), f"{base}/img/{md5(body)}", "psoriasis", 1),
        ]
        out = tmp_path / "out"
        expect = {
            "no_url_column": r"missing column(s) ['url']",
            "no_md5_column": "missing column(s) ['md5hash']",
            "short_md5": "line 3, column md5hash: got 'abc123'",
            "path_md5": "line 3, column md5hash: got '../x'",
            "out_is_a_file": f"{out}: exists and is not a folder",
        }[case]
        if case == "no_url_column":
            rows = [{k: v for k, v in r.items() if k != "url"} for r in rows]
        elif case == "no_md5_column":
            rows = [{k: v for k, v in r.items() if k != "md5hash"} for r in rows]
        elif case == "short_md5":
            rows[1]["md5hash"] = "abc123"
        elif case == "path_md5":
            rows[1]["md5hash"] = "../x"
        else:
            out.write_text("a file, not a folder")
        csv = write_csv(tmp_path / "bad.csv", rows)
        with pytest.raises(SystemExit) as exit_:
            main(["data", "fetch", "--csv", str(csv), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expect in err and err.startswith("error: "), err
        if case != "out_is_a_file":
            assert str(csv) in err and not out.exists()
        if case == "path_md5":
            assert "path" in err
        assert server.state.log == []


def test_cli_prints_the_table_the_warnings_and_the_next_command(tmp_path, capsys):
    with serving() as (server, base):
        rows = []
        for i in range(3):
            body = image_bytes(300 + i, "PNG")
            server.state.bodies[md5(body)] = body
            rows.append(csv_row(md5(body), f"{base}/img/{md5(body)}", "psoriasis", 1))
        rows.append(csv_row(md5(b"gone"), f"{base}/e404/gone", "psoriasis", 1))
        csv = write_csv(tmp_path / "meta.csv", rows)
        assert (
            main(
                [
                    "data",
                    "fetch",
                    "--csv",
                    str(csv),
                    "--out",
                    str(tmp_path / "img"),
                    "--min-count",
                    "4",
                    "--rate",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "4 rows: 3 verified (3 fetched now, 0 already there), 0 md5 mismatch" in out and "http_404 1" in out
    assert (
        "warning: Caucasian / psoriasis: 3 verified image(s) of 4 listed (paper: 412), under "
        "data.min_subclass_count=4" in out
    )
    assert (
        f"next: python jobs/full_pipeline.py --preset paper data.source=fitzpatrick17k data.csv_path={csv} "
        f"data.image_root={tmp_path / 'img'} data.on_bad_image=skip"
    ) in out


def test_real_csv_lists_the_paper_table_and_41_rows_without_url():
    data = build_config("demo").data
    rows, subset = read_fetch_rows(FITZPATRICK_CSV, data)
    assert len(rows) == 16577 and sum(not r.url for r in rows) == 41
    paper_rows, _ = read_fetch_rows(FITZPATRICK_CSV, data, only_paper_subset=True)
    table = subclass_fetch_table(subset, {}, data)
    reference = pd.read_csv(REFERENCE_COUNTS).set_index(["group", "disease"])["count"]
    assert {(r.group, r.disease): r.listed for r in table.itertuples()} == reference.to_dict()
    assert len(paper_rows) == reference.sum() == 2575
    assert (table["paper"] == table["listed"]).all() and table["below_minimum"].all()  # nothing fetched yet


# --------------------------------------------------------------------------- pure helpers


def test_backoff_and_retry_after_by_hand():
    # min(cap, base * 2**(attempt-1)), half fixed and half jitter: attempt 3 of base 1 -> 4 s -> [2, 4].
    delays = [backoff_delay(3, 1.0, 60.0) for _ in range(200)]
    assert 2.0 <= min(delays) and max(delays) <= 4.0 and max(delays) - min(delays) > 1.0
    assert all(5.0 <= backoff_delay(10, 1.0, 10.0) <= 10.0 for _ in range(50))
    assert parse_retry_after("120") == 120.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
