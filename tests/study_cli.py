"""Driving a study's command line (``python -m fairskin.tune``) from a test: start it, signal it once a condition
on its files holds, and read which trials it has finished."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def finished_trials(runs_file: Path) -> dict[str, str]:
    """trial id -> MLflow run id of every finished trial in a study's ``mlflow_runs.json`` ({}: none yet, or the
    file is being written)."""
    try:
        return {t: e["run_id"] for t, e in json.loads(runs_file.read_text()).items() if e["state"] == "finished"}
    except (OSError, ValueError):
        return {}


def signal_when(
    cmd: list[str], env: dict, log: Path, done: Callable[[], bool], sig: int, what: str, timeout: float = 240
) -> int:
    """Start the study CLI ``cmd`` (output to ``log``), send ``sig`` to it (our own child, by its PID) once
    ``done()`` holds, and return its exit code. Fails with the tail of its output if it ends first or ``done()``
    does not hold within ``timeout`` seconds."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None and not done():
                time.sleep(0.05)
            assert proc.poll() is None and done(), f"{what}: not before the study ended\n{log.read_text()[-3000:]}"
            os.kill(proc.pid, sig)
            return proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
