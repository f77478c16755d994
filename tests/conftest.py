"""Shared fixtures: one Ray head per test session, smoke configs, and a prepared smoke dataset.

The Ray head is started with ``ray start --head`` on its own temp dir and free ports, its
address exported as RAY_ADDRESS (so ``fairskin.runtime.init_ray``, subprocesses and
``ray job submit`` all join it), and ended by killing its own processes. ``ray stop`` is
never used: it would kill every Ray process on the machine.

Ray's token authentication stays on. The session makes its own token in a private temp dir and
points Ray at it with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (set here, before
anything imports Ray), so the head, this process, subprocess tests (they inherit os.environ),
``ray job submit`` and any private local cluster a test starts all use it, and the user's
``~/.ray/auth_token`` is neither read nor written.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FITZPATRICK_CSV = SHARED / "data" / "fitzpatrick17k" / "fitzpatrick17k.csv"
REFERENCE_COUNTS = SHARED / "data" / "fitzpatrick17k" / "subclass_counts_reference.csv"


def _session_auth_token() -> Path:
    """A fresh token for this test session, in a private temp dir removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="fsk-auth-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "auth_token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    return path


# Under pytest-xdist the controller makes the token and starts the head (``pytest_configure``); its workers inherit
# both through the environment, so the whole run shares one token and one head.
AUTH_TOKEN_PATH = (
    Path(os.environ["FAIRSKIN_TEST_AUTH_TOKEN_PATH"])
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("FAIRSKIN_TEST_AUTH_TOKEN_PATH")
    else _session_auth_token()
)
os.environ["FAIRSKIN_TEST_AUTH_TOKEN_PATH"] = str(AUTH_TOKEN_PATH)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(AUTH_TOKEN_PATH)
os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the path
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray Train's controller polls its workers every 2 s by default: it sees a finished fit, a failed worker and a
# reported checkpoint only at its next poll, a second lost on average at each of them in every fit. The tests poll
# every 0.5 s (the driver passes the variable on to the controller; subprocess drivers inherit it). A missed poll
# is still only fatal after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S (10 minutes).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray Train starts a PreemptionWatcher actor (a process of its own, about 1.4 s of CPU to start) with every worker
# group, to act on a cloud provider's preemption notice. No test machine gets one (the two-node test kills a node
# outright, which the health check sees), so the suite does without it: one process fewer per fit and per retry.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: every socket stays bound until all are chosen (ports asked for one at a
    time can repeat: the head's dashboard and its agent once got the same one and `ray start` failed)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pids_of_head(temp_dir: str) -> list[int]:
    """PIDs of our head's processes (marked ``FAIRSKIN_TEST_RAY=<temp dir name>`` or holding files under
    its private temp dir): the same rule as the two-node cluster's nodes."""
    from cluster import node_pids

    return node_pids(temp_dir)


HEAD_CPUS = 2  # logical CPUs of the session's head, under xdist too (a head of four for three workers was slower)


def _start_head() -> dict:
    """Start a private Ray head of ``HEAD_CPUS`` logical CPUs (``ray start --head`` on its own temp dir and free
    ports); its GCS address, dashboard URL, temp dir, token path and CPUs. RAY_ADDRESS names it from here on."""
    # Short path: Ray's unix sockets live under the temp dir and have a ~107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="fsk-ray-", dir="/tmp")
    gcs, dashboard, client, agent, metrics, runtime_env = _free_ports(6)
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        f"--temp-dir={temp_dir}",
        f"--port={gcs}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={HEAD_CPUS}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--disable-usage-stats",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
    ]
    address = f"127.0.0.1:{gcs}"
    # Token auth is on (module top). RAY_ADDRESS in the head's environment reaches every worker: Ray Train's
    # PlacementGroupCleaner looks its controller up with no address, which on a machine running other Ray
    # clusters fails or asks another cluster (and then removes the fit's placement group).
    env = {**os.environ, "FAIRSKIN_TEST_RAY": Path(temp_dir).name, "RAY_ADDRESS": address}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180)
    os.environ["RAY_ADDRESS"] = address
    return {
        "address": address,
        "dashboard": f"http://127.0.0.1:{dashboard}",
        "temp_dir": temp_dir,
        "token_path": str(AUTH_TOKEN_PATH),
        "num_cpus": HEAD_CPUS,
    }


def _stop_head(head: dict) -> None:
    """End the head started by ``_start_head`` by its own PIDs and remove its temp dir."""
    os.environ.pop("RAY_ADDRESS", None)
    # SIGTERM, a short grace (the head's processes that end on it do so within a second or two; the
    # rest waited out the whole grace every session), then SIGKILL.
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        for pid in _pids_of_head(head["temp_dir"]):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while _pids_of_head(head["temp_dir"]) and time.time() < deadline:
            time.sleep(0.2)
    shutil.rmtree(head["temp_dir"], ignore_errors=True)


def _xdist_controller(config) -> bool:
    """Whether this process is the controller of a pytest-xdist run (it spawns the workers, runs no test)."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config):
    # Under xdist one head serves every worker: started here, before the workers are spawned, so that they inherit
    # RAY_ADDRESS and FAIRSKIN_TEST_RAY_HEAD; each worker's ``ray_head`` fixture then joins it.
    if _xdist_controller(config):
        head = _start_head()
        config.stash[_HEAD_KEY] = head
        os.environ["FAIRSKIN_TEST_RAY_HEAD"] = json.dumps(head)


def pytest_unconfigure(config):
    head = config.stash.get(_HEAD_KEY, None)
    if head is not None:
        _stop_head(head)


_HEAD_KEY = pytest.StashKey[dict]()


# autouse: RAY_ADDRESS names the session's head before any test runs, so no test's in-process
# init_ray() ever starts a private local cluster that later tests would stay connected to (two
# clusters on one machine also confuse Ray Train's state-API lookups).
@pytest.fixture(scope="session", autouse=True)
def ray_head():
    """The run's private Ray head: the xdist controller's (joined) or, without xdist, one started for this session;
    yields its GCS address, dashboard URL, temp dir and token path."""
    shared = os.environ.get("FAIRSKIN_TEST_RAY_HEAD") if os.environ.get("PYTEST_XDIST_WORKER") else None
    head = json.loads(shared) if shared else _start_head()
    os.environ["RAY_ADDRESS"] = head["address"]
    head["token_path"] = Path(head["token_path"])
    try:
        yield head
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if not shared:
            _stop_head(head)


@pytest.fixture(scope="session")
def ray_session(ray_head):
    """This process connected to the session's head (through fairskin's own init)."""
    from fairskin.runtime import init_ray

    init_ray()
    return ray_head


@pytest.fixture()
def reap():
    """``reap(proc)`` returns ``proc`` (a driver started in its own session) and SIGKILLs its process group at the
    test's end if it is still running, so that a failed test leaves no pipeline loading the machine under the
    tests that follow."""
    procs: list[subprocess.Popen] = []

    def add(proc: subprocess.Popen) -> subprocess.Popen:
        procs.append(proc)
        return proc

    yield add
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture()
def smoke_config(tmp_path):
    """A fresh smoke config whose runs root is this test's temporary folder."""
    from fairskin.config import build_config

    return build_config("smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}"])


@pytest.fixture(scope="session")
def prepared_smoke(tmp_path_factory):
    """The smoke `prepare` stage, run once per session (tests that only read it share it)."""
    from fairskin.config import build_config
    from fairskin.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("prepared") / "runs"
    config = build_config("smoke", overrides=[f"runtime.runs_root={root}"])
    outcome = run_pipeline(config, stages=["prepare"], echo=lambda *_: None)
    return config, outcome.results["prepare"]


def made_once(tmp_path_factory, name: str, make):
    """``make(folder)`` run once for the whole test run, its JSON-able result returned to every caller.

    Without xdist that is once per session. Under xdist the workers share the run's base temp dir: the first worker
    to ask makes it under a file lock while the others wait, then read its result (pytest-xdist's documented way to
    run a session fixture once). What ``make`` writes is read-only for the tests that share it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    made = folder / "_made.json"
    with FileLock(f"{folder}.lock"):
        if made.exists():
            return json.loads(made.read_text())
        shutil.rmtree(folder, ignore_errors=True)  # a worker that failed while making it
        folder.mkdir()
        result = make(folder)
        made.write_text(json.dumps(result))
        return result


# The smoke preset's upstream stages: what every fine-tune, generator study and full smoke pipeline reads. None
# of them reads diffusion.max_steps / num_workers / cpus_per_worker / max_failures / variants (control_base's key
# follows the dropped groups only) or tune.*, so these keys are those of every smoke config the tests use.
SMOKE_UPSTREAM = ("prepare", "vae", "base", "control_base", "reference", "judge")


@pytest.fixture(scope="session")
def smoke_upstream(tmp_path_factory, ray_session):
    """The smoke preset's upstream stages (``SMOKE_UPSTREAM``), run once per session into a runs root of their own.

    Read-only: tests take a copy of its stage folders (``smoke_stages``), never this root."""
    from fairskin.config import build_config
    from fairskin.pipeline import run_pipeline

    def make(folder: Path) -> str:
        root = folder / "runs"
        config = build_config("smoke", overrides=[f"runtime.runs_root={root}"])
        results = run_pipeline(config, stages=list(SMOKE_UPSTREAM), echo=lambda *_: None).results
        assert sorted(results) == sorted(SMOKE_UPSTREAM)
        return str(root)

    return Path(made_once(tmp_path_factory, "smoke-upstream", make))


@pytest.fixture(scope="session")
def smoke_stages(smoke_upstream):
    """``smoke_stages(root)``: a fresh runs root ``root`` holding a copy of the session's smoke upstream stage
    folders (no MLflow store: the pipeline logs the reused stages as skipped in the copy's own store). A smoke
    pipeline run there skips them (same keys) and runs only its own downstream stages."""

    def copy(root: Path) -> Path:
        root = Path(root)
        shutil.copytree(smoke_upstream / "stages", root / "stages")
        return root

    return copy


@pytest.fixture(scope="session")
def smoke_job(tmp_path_factory, ray_head, smoke_stages):
    """The whole smoke pipeline through its job entry point, once (joins the session's Ray head), in a runs root
    holding a copy of the session's smoke upstream stages (prepare, vae, base, control_base, reference, judge:
    skipped, as on a rerun); finetune, generate, evaluate, tune and report run here. Read-only: its fine-tunes and
    pools (``generators/``, ``pools/``) seed other tests' stores.

    Returns the runs root and the console output as a user sees it (stdout and stderr in one stream, in order).
    """

    def make(folder: Path) -> list[str]:
        root = smoke_stages(folder / "runs")
        out = subprocess.run(
            [sys.executable, "jobs/full_pipeline.py", "--preset", "smoke", f"runtime.runs_root={root}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stdout[-6000:]
        return [str(root), out.stdout]

    root, stdout = made_once(tmp_path_factory, "job", make)
    return Path(root), stdout


SMOKE_JOB_STORES = ("generators", "pools", "evaluations", "trials")


def link_smoke_job_stores(job_root: Path, root: Path) -> None:
    """Hard-link the smoke job's kept generators, pools, evaluations and classifier trials into the runs root
    ``root``, so a pipeline there reuses what the job made under the same keys (the stores write by temporary name
    and rename, never in place, so the job's files stay as they are)."""
    for kind in SMOKE_JOB_STORES:
        shutil.copytree(Path(job_root) / kind, Path(root) / kind, copy_function=os.link, dirs_exist_ok=True)


# Under xdist (``--dist loadscope --no-loadscope-reorder``) whole modules go to the workers in this
# order, so the slowest start first and the short ones fill in behind them. The until-conclusive test is the
# longest chain (smoke upstream stages, then the smoke job, then two looks), so it starts at once; the next two
# modules need no smoke stages and keep the other workers busy while the first one makes them.
SLOW_MODULES_FIRST = (
    "test_conclusive.py",
    "test_classify.py",
    "test_base.py",
    "test_finetune.py",
    "test_cluster.py",
    "test_gensearch.py",
    "test_pipeline.py",
    "test_tune.py",
)


def pytest_collection_modifyitems(session, config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: file order, as always
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
