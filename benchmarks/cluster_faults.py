"""Faults on a two-node Ray cluster (issue 16): a pool and a study each lose a node and still end right.

    python benchmarks/cluster_faults.py [--quick] [--runs-root DIR] [--keep]

On one machine, a private cluster (``tests/cluster.py``, the same code as tests/test_cluster.py):
a head {"node_a": 1} and a node {"node_b": 1}, 1 CPU each, separate ``ray start`` processes with their
own temp dirs and ports, Ray's token authentication on (a fresh token unless RAY_AUTH_TOKEN_PATH /
RAY_AUTH_TOKEN is set). Every engine command runs as a subprocess driver on that cluster; the runs
root is the one shared path. The smoke preset's stages up to ``finetune`` run first, without faults.

(b) ``generate``: its actor pool (1 CPU per actor: one actor per node) runs on both nodes; once the
actor on node_b has written items, node_b's processes are SIGKILLed and a fresh node_b is started in
its place. The stage must finish with every item; then the node is lost again, not replaced, and the
pool is made again (``--force generate``) on the one remaining node: each shard file must be equal,
byte for byte (sha256 per file and ``shard_fingerprint`` per pool).

(a) a study (``python -m fairskin.tune --space ethnic_ratio --preset smoke``, ``tune.max_failures=2``,
1 CPU per trial: one trial per node), node_b SIGKILLed while a trial runs on it, a fresh node_b
started; MLflow must end with exactly the planned child runs under the study's parent, each
FINISHED, and Tune must have recorded the lost trial's failure (it was retried, not dropped).

``--quick``: one variant (fairskin_s) instead of the smoke preset's two. The last line printed is
one JSON object: {"ok": ..., "generate": {...}, "study": {...}, "seconds": ...}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the private cluster and the fault launcher live with the tests

from cluster import Cluster, wait_for  # noqa: E402  (tests/cluster.py)

from fairskin.provenance import shard_fingerprint  # noqa: E402


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _ensure_token() -> None:
    """Token authentication on: a private token for this run unless the caller gave one."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    folder = Path(tempfile.mkdtemp(prefix="fsk-auth-"))
    path = folder / "auth_token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    import atexit

    atexit.register(shutil.rmtree, folder, True)


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _run(cmd: list[str], env: dict, log: Path, timeout: float = 1200) -> None:
    proc = _start(cmd, env, log)
    if proc.wait(timeout=timeout):
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{log.read_text()[-3000:]}")


def _shards(root: Path) -> dict[str, str]:
    """Pool shard files of the generate stage (relative path -> sha256), finished or in progress."""
    out = {}
    for stage in (root / "stages").glob("generate-*"):
        for path in sorted(stage.rglob("*.parquet")):
            if ".tmp" not in path.name:
                out[str(path.relative_to(stage))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _pool_fingerprints(root: Path) -> dict[str, str]:
    stage = next((root / "stages").glob("generate-*"))
    return {p.parent.name: shard_fingerprint(p.parent) for p in sorted(stage.glob("*/index.json"))}


def generate_scenario(cluster: Cluster, root: Path, pipeline: list[str], log: Path) -> dict:
    node_b = cluster.nodes["node_b"]
    env = cluster.driver_env()
    # A second before each item (tests/with_faults.py registers the pause): the loss lands mid-pool.
    paused = [pipeline[0], str(REPO / "tests" / "with_faults.py"), "--item-pause", "1.0", "--", *pipeline[1:]]
    proc = _start([*paused, "generation.cpus_per_actor=1", "--stages", "generate"], env, log)
    try:
        # Both nodes hold a pool actor, and node_b's has had time to write items.
        wait_for(
            lambda: (
                cluster.nodes["node_a"].actor_pids("ItemGenerator")
                and node_b.actor_pids("ItemGenerator")
                and len(_shards(root)) >= 4
            ),
            900,
            proc,
            "pool actors on both nodes",
            log,
        )
        before = len(_shards(root))
        node_b.kill()
        cluster.wait_for_nodes(timeout=30)
        _log(f"generate: node_b lost after {before} item(s); starting a fresh node_b")
        cluster.replace("node_b")
        if proc.wait(timeout=900):
            raise RuntimeError(f"generate after a lost node exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    two_node, two_node_fp = _shards(root), _pool_fingerprints(root)
    _log(f"generate: {len(two_node)} items after the loss ({before} before it)")

    # The same pool on one node: node_b lost again and not replaced.
    cluster.nodes["node_b"].kill()
    cluster.wait_for_nodes(timeout=30)
    _run([*pipeline, "generation.cpus_per_actor=1", "--stages", "generate", "--force", "generate"], env, log)
    one_node, one_node_fp = _shards(root), _pool_fingerprints(root)
    cluster.replace("node_b")
    return {
        "items": len(two_node),
        "items_before_loss": before,
        "identical_files": sum(one_node.get(k) == v for k, v in two_node.items()),
        "pools_equal": two_node == one_node and two_node_fp == one_node_fp,
        "pool_fingerprints": two_node_fp,
    }


def _trial_pids(node) -> list[int]:
    return node.actor_pids("ImplicitFunc")


def study_scenario(cluster: Cluster, root: Path, common: list[str], log: Path) -> dict:
    from mlflow import MlflowClient

    node_b = cluster.nodes["node_b"]
    out = root.parent / "study.json"
    cmd = [
        sys.executable,
        "-m",
        "fairskin.tune",
        "--space",
        "ethnic_ratio",
        "--json",
        *common,
        "tune.max_failures=2",
        "tune.cpus_per_trial=1",
    ]
    with open(log, "ab") as fh, open(out, "wb") as stdout:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=cluster.driver_env(), stdout=stdout, stderr=fh, start_new_session=True
        )
    try:
        wait_for(lambda: _trial_pids(node_b), 900, proc, "a trial on node_b", log)
        time.sleep(3)  # mid-trial
        on_b = len(_trial_pids(node_b))
        node_b.kill()
        cluster.wait_for_nodes(timeout=30)
        _log(f"study: node_b lost with {on_b} trial(s) on it; starting a fresh node_b")
        cluster.replace("node_b")
        if proc.wait(timeout=900):
            raise RuntimeError(f"study after a lost node exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs(
        [summary["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'"
    )
    planned = json.loads((Path(summary["path"]) / "study.json").read_text()).get("trials")
    # Tune's own record: each trial's failure count (a retried trial keeps its id).
    failures = 0
    for state in (Path(summary["path"]) / "trials").glob("experiment_state*.json"):
        failures += sum(int(n) for n in re.findall(r'num_failures\\?"?:\s*(\d+)', state.read_text()))
    return {
        "planned_trials": planned,
        "trials": summary["trials"],
        "child_runs": len(children),
        "child_statuses": sorted(r.info.status for r in children),
        "parent_status": parent.info.status,
        "trial_failures_recorded": failures,
        "trials_on_lost_node": on_b,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one variant instead of two")
    parser.add_argument("--runs-root", default=None, help="default: a temporary folder, removed unless --keep")
    parser.add_argument("--keep", action="store_true", help="keep the runs root and the log")
    args = parser.parse_args(argv)
    started = time.time()
    _ensure_token()
    os.environ.pop("RAY_ADDRESS", None)  # this script's clusters only
    work = Path(args.runs_root).resolve() if args.runs_root else Path(tempfile.mkdtemp(prefix="fsk-faults-"))
    root, log = work / "runs", work / "commands.log"
    if root.exists():  # finished stages would be skipped: nothing would run to lose a node under
        parser.error(f"--runs-root {work}: it already holds runs/; give a new folder")
    work.mkdir(parents=True, exist_ok=True)
    common = ["--preset", "smoke", f"runtime.runs_root={root}"]
    if args.quick:
        common.append("diffusion.variants=[fairskin_s]")
    pipeline = [sys.executable, "jobs/full_pipeline.py", *common]
    result: dict = {"quick": args.quick}
    try:
        with Cluster(names=("node_a", "node_b"), num_cpus=1) as cluster:
            _log(f"cluster up at {cluster.address}; log in {log}")
            _run([*pipeline, "--stages", "finetune"], cluster.driver_env(), log)
            _log("stages up to finetune done")
            result["generate"] = generate_scenario(cluster, root, pipeline, log)
            _log(f"generate: {result['generate']}")
            result["study"] = study_scenario(cluster, root, common, log)
            _log(f"study: {result['study']}")
        g, s = result["generate"], result["study"]
        result["ok"] = bool(
            g["pools_equal"]
            and g["identical_files"] == g["items"]
            and g["items_before_loss"] < g["items"]
            and s["child_runs"] == s["planned_trials"] == s["trials"]
            and set(s["child_statuses"]) == {"FINISHED"}
            and s["parent_status"] == "FINISHED"
            and s["trial_failures_recorded"] >= 1
        )
    except Exception as exc:  # noqa: BLE001 - reported in the JSON line
        result.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-1500:]}")
    finally:
        if not args.keep and not args.runs_root and result.get("ok"):
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, default=str))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
