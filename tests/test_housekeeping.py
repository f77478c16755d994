"""``python -m fairskin runs`` (issue 16, point 6): list what a runs root holds, tell what the current
configuration uses, remove the rest on request, never while another process holds the runs root."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from fairskin.config import build_config


def _config(root: Path, seed: int):
    return build_config("smoke", overrides=[f"runtime.runs_root={root}", f"runtime.seed={seed}"])


def _folder(path: Path, *files: str, size: int = 1000) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in files or ("data.bin",):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"x" * size)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def runs_root(tmp_path):
    """A runs root holding the folders of two configurations (seed 0: current, seed 1: old), named by
    the keys each computes, plus a hand-named study, caches, temporaries and the MLflow store."""
    from fairskin.housekeeping import current_keys, current_study
    from fairskin.io import host_tag
    from fairskin.tune.inputs import standin_key

    root = tmp_path / "runs"
    made = {}
    for seed, label in ((0, "current"), (1, "old")):
        config = _config(root, seed)
        keys, unknown = current_keys(config)
        assert {"prepare", "finetune", "generate", "tune"} <= set(keys), unknown
        study = current_study(config, keys)
        made[label] = {
            "prepare": _folder(root / "stages" / f"prepare-{keys['prepare']}", "_stage.json", "shards/a.parquet"),
            "generate": _folder(
                root / "stages" / f"generate-{keys['generate']}",
                "_stage.json",
                "vanilla/index.json",
                "vanilla/part-0.parquet",
                "fairskin_s/index.json",
            ),
            "work": _folder(root / "stages" / f"generate-{keys['generate']}.work", "vanilla/item-0.parquet"),
            "checkpoints": _folder(
                root / "checkpoints" / f"finetune-{keys['finetune']}", "vanilla/ckpt.pt", size=50_000
            ),
            "study": _folder(root / "tune" / study, "study.json"),
            "standin": _folder(root / "tune" / "standin-pools" / standin_key(config), "shards/index.json"),
        }
    made["by_hand"] = _folder(root / "tune" / "my-own-study", "study.json")
    made["cache"] = _folder(root / "cache" / "fidelity", "features.npz")
    made["stale"] = _folder(root / "stages" / f".prepare-abc.partial-{_dead_pid()}-0123abcd@{host_tag()}")
    writer = subprocess.Popen(["sleep", "300"])  # a live writer of a temporary folder
    made["running"] = _folder(root / "stages" / f".prepare-abc.partial-{writer.pid}-0123abce@{host_tag()}")
    made["elsewhere"] = _folder(root / "stages" / f".prepare-abc.partial-{_dead_pid()}-0123abcf@other-node")
    (root / "mlflow.db").write_bytes(b"db")
    yield root, made
    writer.kill()
    writer.wait()


def _status(inv) -> dict[Path, str]:
    return {e.path: e.status for e in inv.entries}


def test_listing_tells_what_the_current_configuration_uses(runs_root):
    from fairskin.housekeeping import IN_USE, KEPT, UNUSED, scan

    root, made = runs_root
    inv = scan(_config(root, 0))
    status = _status(inv)
    for kind in ("prepare", "generate", "work", "checkpoints", "study", "standin"):
        assert status[made["current"][kind]] == IN_USE, kind
        assert status[made["old"][kind]] == UNUSED, kind
    # Pools are listed inside their generate stage folder, with its status, and counted once.
    pools = [e for e in inv.entries if e.kind == "pool"]
    assert {(p.path.name, p.part_of, p.status) for p in pools} == {
        (v, made[label]["generate"], IN_USE if label == "current" else UNUSED)
        for label in ("current", "old")
        for v in ("vanilla", "fairskin_s")
    }
    assert not any(p.removable for p in pools)
    for kept in ("by_hand", "cache", "running", "elsewhere"):
        assert status[made[kept]] == KEPT, kept
    assert status[made["stale"]] == UNUSED and status[root / "mlflow.db"] == KEPT
    ckpt = next(e for e in inv.entries if e.path == made["old"]["checkpoints"])
    assert ckpt.size == 50_000 and ckpt.modified > 0
    assert inv.total() == sum(e.size for e in inv.entries if e.part_of is None)
    # The other configuration sees it the other way round.
    status_old = _status(scan(_config(root, 1)))
    assert status_old[made["old"]["prepare"]] == IN_USE and status_old[made["current"]["prepare"]] == UNUSED


def test_current_keys_match_the_pipeline(prepared_smoke):
    from fairskin.housekeeping import current_keys

    config, prepare = prepared_smoke
    assert current_keys(config)[0]["prepare"] == prepare.key


def _cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from fairskin.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(["runs", *args])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue()


def test_remove_unused_dry_run_then_refused_while_locked_then_removes(runs_root):
    root, made = runs_root
    before = sorted(p for p in root.rglob("*"))
    args = ["--preset", "smoke", f"runtime.runs_root={root}", "runtime.seed=0"]
    unused = sorted([*(made["old"][k] for k in made["old"]), made["stale"]])

    code, text = _cli(*args)
    assert code == 0 and "in use" in text and "unused" in text and "prepare-" in text
    code, text = _cli(*args, "--remove-unused", "--dry-run", "--json")
    listed = json.loads(text)
    assert code == 0 and sorted(Path(p) for p in listed["would_remove"]) == unused
    assert sorted(p for p in root.rglob("*")) == before  # a dry run removes nothing

    # Another live process holds the runs root: nothing is removed (exit 2, naming it).
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (root / ".fairskin.lock").write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": holder.pid,
                    "pid_start": "",
                    "boot_id": "",
                    "command": "python jobs/full_pipeline.py --preset smoke",
                    "since": "now",
                    "token": "t",
                }
            )
        )
        code, _ = _cli(*args, "--remove-unused")
        assert code == 2
        assert all(p.exists() for p in unused)
    finally:
        holder.kill()
        holder.wait()
        (root / ".fairskin.lock").unlink()

    code, text = _cli(*args, "--remove-unused")
    assert code == 0 and f"removed {len(unused)} unused item(s)" in text
    assert not any(p.exists() for p in unused)
    for label in ("by_hand", "cache", "running", "elsewhere"):
        assert made[label].exists(), label
    assert all(p.exists() for p in made["current"].values()) and (root / "mlflow.db").exists()
    assert not (root / ".fairskin.lock").exists()  # released
    assert not [p for p in root.rglob("*") if ".old-" in p.name]  # no temporaries left behind
