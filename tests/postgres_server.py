"""A throwaway PostgreSQL server for tests: its own data folder and loopback port, password auth,
started and stopped by its own PID.

The server programs come from, in order: ``$FAIRSKIN_PG_BIN`` (a folder holding ``initdb`` and
``postgres``), the ``pgserver`` wheel's bundled PostgreSQL 16 (the ``dev`` extra installs it, so
``make test`` on a fresh clone has one), or the system's PostgreSQL (``initdb`` on PATH,
``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``). Only the binaries are used: pgserver's own
Python API is not (as root it adds a system user, and it listens on a Unix socket only).

PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` user when one
exists, else ``nobody`` (its data folder is handed to that user). That user must reach the server
programs: a clone in a folder only root may enter (``mktemp -d``, ``/root``, a 0700 home) holds
pgserver's binaries in its ``.venv`` out of its reach, so then the install tree (``bin``, ``lib``,
``share``; ~45 MB) is copied to a temporary folder it can read, removed when the server stops.

The password is never in the URI: it goes into a private ``PGPASSFILE`` (libpq's password file,
which psycopg reads), so ``postgresql://fairskin@127.0.0.1:PORT/mlflow`` connects only with it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fairskin.lock import pid_alive

USER = "fairskin"


def find_bin() -> Path | None:
    """A folder holding PostgreSQL's ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get("FAIRSKIN_PG_BIN"):
        candidates.append(Path(os.environ["FAIRSKIN_PG_BIN"]))
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    if shutil.which("initdb"):
        candidates.append(Path(os.path.realpath(shutil.which("initdb"))).parent)
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


_TMP = "/tmp"
_PREFIX = "fsk-pg-"
_STALE = re.compile(rf"^{_PREFIX}(?:pass-|bin-)?(?P<pid>\d+)-")


def clean_stale_servers() -> list[Path]:
    """Stop and remove the servers of test processes that were killed before their teardown (a
    SIGKILLed pytest): a folder whose creating PID no longer runs. Its postmaster (the PID in its
    ``postmaster.pid``, checked to be a ``postgres`` serving that very folder) gets a fast shutdown."""
    removed = []
    for folder in Path(_TMP).glob(f"{_PREFIX}*"):
        match = _STALE.match(folder.name)
        if not match or pid_alive(int(match["pid"])):
            continue
        try:
            postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            postmaster, cmdline = 0, []
        if postmaster and Path(cmdline[0].decode()).name == "postgres" and str(folder / "data").encode() in cmdline:
            os.kill(postmaster, signal.SIGINT)
            for _ in range(100):
                if not pid_alive(postmaster):
                    break
                time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


def _as_user(who: pwd.struct_passwd) -> dict:
    """subprocess keyword arguments that run a program as ``who`` (and only its own group)."""
    return {"user": who.pw_uid, "group": who.pw_gid, "extra_groups": []}


def reachable_by(who: pwd.struct_passwd, program: Path) -> bool:
    """Whether ``who`` may run ``program``: every folder above it searchable and the file executable
    for that user. Asked of the kernel (``test -x`` run as that user, from ``/``), not worked out
    from permission bits, so ACLs and group membership count as the kernel counts them."""
    check = subprocess.run(
        ["/bin/sh", "-c", 'test -x "$1"', "sh", str(program)], cwd="/", timeout=10, capture_output=True, **_as_user(who)
    )
    return check.returncode == 0


def copy_install_for(who: pwd.struct_passwd, bin_dir: Path) -> Path:
    """Copy the PostgreSQL install tree above ``bin_dir`` (``bin``, ``lib``, ``share``) into a new
    world-readable folder under /tmp, so that ``who`` can run it; returns the copy's root (the
    caller removes it); the programs are then in ``<root>/<package>/<install>/bin``.

    PostgreSQL finds its ``lib`` and ``share`` relative to its programs, and a wheel repaired by
    auditwheel (pgserver's) finds its bundled shared libraries through an RPATH relative to them
    (``$ORIGIN/../../../pgserver.libs``), so the copy keeps that layout: the install folder inside
    its package folder, with every ``*.libs`` folder beside the package. Raises RuntimeError,
    naming the folder and the cause, when the tree has no ``lib`` and ``share`` beside ``bin`` (a
    system install split across /usr) or the copy is still out of the user's reach."""
    install = bin_dir.parent
    parts = [install / name for name in ("bin", "lib", "share")]
    absent = [p.name for p in parts if not p.is_dir()]
    if absent:
        raise RuntimeError(
            f"the PostgreSQL programs in {bin_dir} cannot be run by the user {who.pw_name!r} "
            f"(a folder above them is closed to that user), and {install} has no {absent} "
            "beside bin/ to copy somewhere it can reach: set FAIRSKIN_PG_BIN to an install that user "
            "can enter, or run from a folder it can enter"
        )
    package, site = install.parent, install.parent.parent
    root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}bin-{os.getpid()}-", dir=_TMP))
    try:
        for part in parts:
            shutil.copytree(part, root / package.name / install.name / part.name, symlinks=True)
        for libs in site.glob("*.libs"):
            shutil.copytree(libs, root / libs.name, symlinks=True)
        for folder, _, files in os.walk(root):
            os.chmod(folder, 0o755)
            for name in files:
                path = Path(folder) / name
                if not path.is_symlink():
                    mode = path.stat().st_mode
                    path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))
        programs = root / package.name / install.name / "bin"
        if not reachable_by(who, programs / "initdb"):
            raise RuntimeError(
                f"copied the PostgreSQL install {install} to {root}, and the user {who.pw_name!r} "
                "still cannot run its initdb (is /tmp mounted noexec or closed to that user?)"
            )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


class PostgresServer:
    """``with PostgresServer() as pg: pg.uri("mlflow")`` (``pg.passfile`` holds the password)."""

    def __init__(self, bin_dir: Path | None = None, databases: tuple[str, ...] = ("mlflow",)):
        self.bin_dir = bin_dir or find_bin()
        if self.bin_dir is None:
            raise RuntimeError(
                "no PostgreSQL server programs found: pip install -e '.[dev]' (pgserver), "
                "install the system's PostgreSQL, or set FAIRSKIN_PG_BIN"
            )
        self.databases = databases
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None  # the server's (data, socket, log), owned by the server's user
        self.private: Path | None = None  # ours: the password file
        self.programs: Path | None = None  # a copy of the install the server's user can reach, when one was needed
        self.password = secrets.token_urlsafe(16)

    # ------------------------------------------------------------------ paths and URIs
    @property
    def passfile(self) -> Path:
        assert self.private is not None
        return self.private / "pgpass"

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------------ start / stop
    def _popen_kwargs(self) -> dict:
        who = _run_as()
        return {} if who is None else _as_user(who)

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Start the server and create ``databases``; on any failure, stop and remove what was made."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> PostgresServer:
        who = _run_as()
        clean_stale_servers()
        programs = self.bin_dir
        if who is not None and not reachable_by(who, programs / "initdb"):
            self.programs = copy_install_for(who, programs)
            programs = self.programs / programs.parent.parent.name / programs.parent.name / "bin"
        # Short path: the Unix socket (also made, in the server's folder) has a ~107-byte limit. The names
        # carry this process's PID, so a later run can clean up after a test process that was killed.
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=_TMP))
        self.private = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}pass-{os.getpid()}-", dir=_TMP))
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if who is not None:
            for path in (self.folder, pwfile):
                os.chown(path, who.pw_uid, who.pw_gid)
        log = self.folder / "server.log"
        init = subprocess.run(
            [
                str(programs / "initdb"),
                "-D",
                str(self.folder / "data"),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.folder,
            **self._popen_kwargs(),
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        self.port = free_port()
        # A test server: durability off (fsync, synchronous commit) for speed; loopback TCP only.
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    str(programs / "postgres"),
                    "-D",
                    str(self.folder / "data"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.folder),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=100",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
                **self._popen_kwargs(),
            )
        self.passfile.write_text(f"127.0.0.1:{self.port}:*:{USER}:{self.password}\n")
        self.passfile.chmod(0o600)  # libpq ignores a password file others can read
        self._wait_ready(timeout, log)
        for name in self.databases:
            self.execute(f'CREATE DATABASE "{name}"')
        return self

    def connect(self, database: str = "postgres", **kwargs):
        import psycopg

        return psycopg.connect(self.uri(database), passfile=str(self.passfile), connect_timeout=5, **kwargs)

    def execute(self, sql: str, database: str = "postgres") -> None:
        with self.connect(database, autocommit=True) as conn:
            conn.execute(sql)

    def _wait_ready(self, timeout: float, log: Path) -> None:
        deadline = time.time() + timeout
        last: Exception | None = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with self.connect():
                    return
            except Exception as exc:  # not accepting connections yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections in {timeout:.0f} s ({last})")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, our own child), then SIGKILL; remove its folders."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the postmaster and its backends
                self.proc.wait(10)
        self.proc = None
        for folder in (self.folder, self.private, self.programs):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self.programs = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
