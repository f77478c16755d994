"""Two Ray nodes under test (issue 16): the fine-tune with its two workers placed one per node, the
second node lost (SIGKILL of its processes) after a checkpoint, a fresh node started in its place,
and the fit ending from the last checkpoint with every step logged once.

The cluster (``tests/cluster.py``) is this module's own: a head {"node_a": 1} and a node
{"node_b": 1}, 1 CPU each, separate ``ray start`` processes with their own temp dirs and ports, ended
by their own PIDs. The pipeline runs as a subprocess driver whose ``RAY_ADDRESS`` is that cluster's,
so the session's head and this process's ``RAY_ADDRESS`` stay untouched. The runs root (stage
folders, checkpoints, the MLflow store) is the one path both nodes share, as on a real cluster.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import Cluster, wait_for
from conftest import REPO
from mlflow import MlflowClient

from fairskin.diffusion.finetune import latest_state

pytestmark = pytest.mark.ray

STEPS = 8
SETTINGS = [
    "diffusion.variants=[vanilla]",
    f"diffusion.max_steps={STEPS}",
    "diffusion.checkpoint_every=2",
    "diffusion.num_workers=2",
    "diffusion.cpus_per_worker=0.5",
    "diffusion.placement_strategy=STRICT_SPREAD",
    "diffusion.max_failures=1",
    "diffusion.keep_checkpoints=true",
]


@pytest.fixture(scope="module")
def two_nodes():
    with Cluster(names=("node_a", "node_b"), num_cpus=1) as cluster:
        yield cluster


def _recorded_step(folder: Path) -> int:
    """Step of the latest checkpoint in Ray Train's snapshot (0: none yet)."""
    try:
        found = latest_state(folder, while_written=True)
    except (OSError, ValueError):  # being written
        return 0
    return found[1]["step"] if found else 0


def test_fine_tune_across_two_nodes_survives_losing_one(two_nodes, tmp_path, smoke_stages):
    cluster = two_nodes
    # The fine-tune's inputs (prepare, vae, base, control_base) are the session's smoke stages, copied: skipped here.
    root, log = smoke_stages(tmp_path / "runs"), tmp_path / "pipeline.log"
    cmd = [
        sys.executable,
        "tests/with_faults.py",
        "--step-pause",
        "0.5",
        "--",
        "jobs/full_pipeline.py",
        "--preset",
        "smoke",
        "--stages",
        "finetune",
        f"runtime.runs_root={root}",
        *SETTINGS,
    ]
    with open(log, "ab") as fh:  # a driver on the two-node cluster (RAY_ADDRESS), its own process group
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=cluster.driver_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        folder_of = lambda: next((root / "checkpoints").glob("finetune-*/vanilla"), None)  # noqa: E731
        folder = wait_for(
            lambda: (f := folder_of()) is not None and _recorded_step(f) >= 2 and f,
            400,
            proc,
            "a checkpoint recorded by Ray Train",
            log,
        )
        # One Ray Train worker on each node (STRICT_SPREAD).
        node_a, node_b = cluster.nodes["node_a"], cluster.nodes["node_b"]
        assert len(node_a.actor_pids("RayTrainWorker")) == 1 and len(node_b.actor_pids("RayTrainWorker")) == 1

        node_b.kill()  # the node is lost: raylet, agents and its Train worker, all SIGKILLed
        cluster.wait_for_nodes(timeout=30)  # the GCS has declared it dead (short health checks)
        killed_at = _recorded_step(folder)
        assert 2 <= killed_at < STEPS
        fresh = cluster.replace("node_b")  # as an autoscaler would

        # The restarted worker group is spread again, over node_a and the fresh node.
        wait_for(
            lambda: fresh.actor_pids("RayTrainWorker") and node_a.actor_pids("RayTrainWorker"),
            300,
            proc,
            "Ray Train workers on both nodes again",
            log,
        )
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)

    # Resumed from the checkpoint recorded when the node was lost: its next step first, by step numbers.
    state = latest_state(folder)[1]
    assert state["step"] == STEPS
    assert state["starts"] == [
        {"attempt": 1, "from_step": 0, "first_step": 1},
        {"attempt": 2, "from_step": killed_at, "first_step": killed_at + 1},
    ]
    stage = next((root / "stages").glob("finetune-*"))
    assert json.loads((stage / "_stage.json").read_text())["summary"]["vanilla_attempts"] == 2
    # Every step in MLflow exactly once, in the generator's one run, which finished.
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run_id = json.loads((folder / "mlflow_run.json").read_text())["run_id"]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, STEPS + 1)), steps
    assert client.get_run(run_id).info.status == "FINISHED"
