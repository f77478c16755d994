"""A private multi-node Ray cluster on one machine, for tests and benchmarks (not used by the engine).

Each node is its own ``ray start`` (the head with ``--head``, the others with ``--address``), with its
own ``--temp-dir`` (Ray 2.60 takes it per node; without it a second node on the same host would use
the head's temp dir, session folder and log files), free ports, ``--num-cpus`` and a custom resource
naming it (``{"node_a": 1}``, ``{"node_b": 1}``), so work can be placed on a chosen node and a node
can be lost alone: :meth:`RayNode.kill` SIGKILLs that node's own processes (raylet, agents, the
workers it started), found by a marker in their environment or by files they hold open under the
node's temp dir. ``ray stop`` is never used: it kills every Ray process on the machine.

The head's GCS notices a lost node within a few seconds: the health-check period, timeout and
failure threshold are shortened through Ray's ``RAY_<system config>`` environment variables on the
head. Ray's token authentication stays on: the nodes inherit ``RAY_AUTH_MODE`` /
``RAY_AUTH_TOKEN_PATH`` (or ``RAY_AUTH_TOKEN``) from the caller's environment, and so do drivers
started with :meth:`Cluster.driver_env`.

    with Cluster() as cluster:                  # head {"node_a": 1} + {"node_b": 1}, 1 CPU each
        env = cluster.driver_env()              # RAY_ADDRESS of this cluster, for a subprocess driver
        ...
        cluster.nodes["node_b"].kill()          # the node is lost (SIGKILL of its processes)
        cluster.replace("node_b")               # a fresh node in its place, as an autoscaler would
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "FAIRSKIN_TEST_RAY"  # environment marker of a node's processes: its temp dir's name
# A lost node is declared dead after about period x threshold (+ timeout): ~3 s instead of Ray's ~30 s.
HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_pids(temp_dir: str | Path) -> list[int]:
    """PIDs of a node's processes: their environment holds ``FAIRSKIN_TEST_RAY=<temp dir name>``, or
    they hold files open under the node's temp dir (Ray's agents rewrite their process title over
    their environment). The calling process is never listed."""
    temp_dir = str(temp_dir)
    needle = f"{MARKER}={Path(temp_dir).name}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(temp_dir + "/"):
                    pids.append(int(entry.name))
                    break
        except OSError:
            continue
    return pids


class WaitFailed(AssertionError):
    """What :func:`wait_for` raises: the watched process ended first, or the time ran out."""


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str, log: Path, poll_s: float = 0.1):
    """Poll ``predicate()`` until it returns something truthy (returned) while ``proc`` still runs.

    Raises :class:`WaitFailed` naming ``what`` with the tail of ``log`` (the process's output file) when
    ``proc`` exits first or ``timeout`` seconds pass.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise WaitFailed(f"exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(poll_s)
    raise WaitFailed(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class RayNode:
    """One ``ray start`` node of a :class:`Cluster`."""

    name: str  # also its custom resource: {name: 1}
    temp_dir: Path
    head: bool
    num_cpus: float
    killed: bool = False

    def pids(self) -> list[int]:
        return node_pids(self.temp_dir)

    def actor_pids(self, class_name: str) -> list[int]:
        """PIDs of this node's live actors of a class (Ray titles them ``ray::<class name>...``)."""
        return [pid for pid in self.pids() if process_title(pid).startswith(f"ray::{class_name}")]

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> list[int]:
        """Send ``sig`` to every process of this node (SIGKILL: the node is lost, as when a machine
        dies); waits until they are gone. Returns the PIDs signalled."""
        signalled: list[int] = []
        deadline = time.time() + timeout
        while True:
            pids = self.pids()
            if not pids or time.time() > deadline:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    signalled.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.killed = True
        return sorted(set(signalled))

    def stop(self) -> None:
        """End the node (SIGTERM, then SIGKILL) and remove its temp dir."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.pids():
                self.kill(sig, timeout=10.0)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class Cluster:
    """A head and further nodes on this machine (see the module docstring). ``nodes`` maps a node's
    name (its custom resource) to it; the first entry of ``names`` is the head."""

    names: tuple[str, ...] = ("node_a", "node_b")
    num_cpus: float = 1
    object_store_mb: int = 300
    include_dashboard: bool = True  # the dashboard serves the state API Ray Train's controller uses
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every node
    nodes: dict[str, RayNode] = field(default_factory=dict)
    address: str = ""
    dashboard: str = ""
    retired: list[RayNode] = field(default_factory=list)  # lost nodes, ended at stop()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ start

    def _node_env(self, node_name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != MARKER}
        env.update(self.env)
        env.update(HEALTH_CHECK_ENV)
        env[MARKER] = node_name
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Every worker of this cluster knows its own cluster (Ray Train's PlacementGroupCleaner looks its
        # controller up with no address), and imports the engine from this checkout.
        env["RAY_ADDRESS"] = self.address
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        return env

    def _ray_start(self, name: str, head: bool) -> RayNode:
        # Short paths: Ray's unix sockets live under the temp dir (~107-byte limit).
        temp_dir = Path(tempfile.mkdtemp(prefix=f"fsk-{name[-1]}-", dir="/tmp"))
        node = RayNode(name=name, temp_dir=temp_dir, head=head, num_cpus=self.num_cpus)
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_bin),
            "start",
            f"--temp-dir={temp_dir}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.num_cpus:g}",
            f"--resources={json.dumps({name: 1})}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if head:
            gcs, dashboard = free_port(), free_port()
            self.address = f"127.0.0.1:{gcs}"
            cmd += ["--head", f"--port={gcs}", f"--ray-client-server-port={free_port()}"]
            if self.include_dashboard:
                cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
                self.dashboard = f"http://127.0.0.1:{dashboard}"
            else:
                cmd += ["--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}"]
        env = self._node_env(temp_dir.name)
        self.nodes[name] = node  # before it runs: stop() ends a half-started node too
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
        if done.returncode:
            raise RuntimeError(f"`ray start` of {name} failed ({done.returncode}):\n{done.stdout.decode()[-3000:]}")
        return node

    def start(self) -> None:
        for i, name in enumerate(self.names):
            self._ray_start(name, head=i == 0)
        self.wait_for_nodes()

    def replace(self, name: str) -> RayNode:
        """Start a fresh node with ``name``'s resources in place of the lost one (which must be killed)."""
        old = self.nodes[name]
        if not old.killed:
            raise RuntimeError(f"{name} is still up: kill it first")
        self.retired.append(old)
        node = self._ray_start(name, head=False)
        self.wait_for_nodes()
        return node

    # ------------------------------------------------------------------ state

    def alive_nodes(self) -> list[dict]:
        """The GCS's live nodes: [{"node_id", "resources"}], asked without connecting a driver."""
        from ray._raylet import GcsClient

        client = GcsClient(address=self.address)
        out = []
        for node_id, info in client.get_all_node_info(timeout=10).items():
            if info.state == 0:  # ALIVE
                out.append({"node_id": node_id.hex(), "resources": dict(info.resources_total)})
        return out

    def wait_for_nodes(self, timeout: float = 120.0) -> None:
        """Until the GCS sees exactly this cluster's live nodes (each named resource once)."""
        want = sorted(n for n, node in self.nodes.items() if not node.killed)
        deadline, seen = time.time() + timeout, None
        while time.time() < deadline:
            try:
                seen = sorted(r for node in self.alive_nodes() for r in node["resources"] if r in self.nodes)
            except Exception as exc:  # noqa: BLE001 - GCS still starting
                seen = repr(exc)
            if seen == want:
                return
            time.sleep(0.5)
        raise TimeoutError(f"cluster at {self.address}: wanted live nodes {want}, the GCS has {seen}")

    def driver_env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver subprocess on this cluster: its ``RAY_ADDRESS``, the engine from this
        checkout; the caller's token authentication settings are kept. No node marker: killing a
        node never kills the driver."""
        env = {k: v for k, v in os.environ.items() if k != MARKER}
        env["RAY_ADDRESS"] = self.address
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.update(extra)
        return env

    # ------------------------------------------------------------------ stop

    def stop(self, grace: float = 3.0) -> None:
        """End every node this cluster started, by their own PIDs: SIGTERM to all of them at once (workers
        first, the head last), ``grace`` seconds for them to exit, then SIGKILL to what is left, and remove their
        temp dirs. (One node after another, each with its own grace, took some 20 s for a three-node cluster.)"""
        nodes = [
            *self.retired,
            *[n for n in self.nodes.values() if not n.head],
            *[n for n in self.nodes.values() if n.head],
        ]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            for node in nodes:
                for pid in node.pids():
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.time() + wait
            while any(node.pids() for node in nodes) and time.time() < deadline:
                time.sleep(0.2)
        for node in nodes:
            node.killed = True
            shutil.rmtree(node.temp_dir, ignore_errors=True)
