"""Issue 16.5: every pipeline and study parent run records the engine's version, its git commit and the installed
package versions (tags + an `environment.txt` artifact). No Ray: the prepare-only pipeline is enough."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO
from mlflow import MlflowClient

from fairskin.pipeline import run_pipeline
from fairskin.tracking import Tracker
from fairskin.versioning import COMMIT_ENV, git_commit


def _artifact(client: MlflowClient, run_id: str, path: str) -> str:
    import mlflow.artifacts

    return mlflow.artifacts.load_text(f"{client.get_run(run_id).info.artifact_uri}/{path}")


def _assert_recorded(client: MlflowClient, run_id: str, commit: str, prefix: str = "") -> None:
    tags = client.get_run(run_id).data.tags
    assert tags[f"fairskin.{prefix}git_commit"] == commit
    assert tags[f"fairskin.{prefix}version"] == metadata.version("fairskin")
    assert tags[f"fairskin.{prefix}pkg.ray"] == metadata.version("ray")
    assert tags[f"fairskin.{prefix}pkg.torch"] == metadata.version("torch")
    text = _artifact(client, run_id, f"environment/{prefix}environment.txt")
    assert f"git_commit: {commit}" in text
    for package in ("ray", "mlflow", "diffusers", "torch", "pydantic", "optuna"):
        assert f"{package}=={metadata.version(package)}" in text.splitlines()


def test_pipeline_parent_run_records_version_commit_and_packages(prepared_smoke, monkeypatch):
    config, _ = prepared_smoke  # prepare is done there: this invocation only makes its runs
    monkeypatch.setenv(COMMIT_ENV, "0123abc-from-submission")  # what the README's job recipe passes
    outcome = run_pipeline(config, ["prepare"], echo=lambda *_: None)
    client = MlflowClient(outcome.tracker.tracking_uri)
    _assert_recorded(client, outcome.parent_run_id, "0123abc-from-submission")


def test_commit_comes_from_the_checkout_when_not_given(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert git_commit().removesuffix("-dirty") == head.stdout.strip()


def test_study_parent_run_records_it_and_a_resume_adds_its_own(smoke_config, tmp_path, monkeypatch):
    from fairskin.tune.study import _parent_run

    folder = tmp_path / "study"
    folder.mkdir()
    monkeypatch.setenv(COMMIT_ENV, "first")
    tracker, parent = _parent_run(smoke_config, "s", folder, {"fairskin.study": "s"}, False, {"a": 1})
    monkeypatch.setenv(COMMIT_ENV, "second")
    _, resumed = _parent_run(smoke_config, "s", folder, {"fairskin.study": "s"}, True, {"a": 1})
    assert resumed.run_id == parent.run_id
    client = MlflowClient(tracker.tracking_uri)
    _assert_recorded(client, parent.run_id, "first")  # the first record stays
    _assert_recorded(client, parent.run_id, "second", prefix="resumed.")
    assert isinstance(tracker, Tracker)


def test_a_model_folders_fingerprint_follows_its_weights_and_settings_not_where_it_was_loaded_from(tmp_path):
    """Two runs that write the same weights (a fine-tune's UNet saved from checkpoints named by their time) get the
    same fingerprint; another weight byte or another setting changes it (issue 28: found comparing pools)."""
    import json

    from fairskin.provenance import folder_fingerprint

    def unet(name: str, loaded_from: str, weights: bytes, channels: int = 32) -> Path:
        folder = tmp_path / name / "unet"
        folder.mkdir(parents=True)
        config = {"_class_name": "UNet2DConditionModel", "_name_or_path": loaded_from, "block_out_channels": [channels]}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(weights)
        return folder

    a = unet("a", "/runs/checkpoints/finetune-1/vanilla/fit/checkpoint_2026-12-06_18-33-22/unet", b"\x01" * 64)
    b = unet("b", "/other/checkpoints/finetune-2/vanilla/fit/checkpoint_2026-12-06_18-38-31/unet", b"\x01" * 64)
    assert folder_fingerprint(a) == folder_fingerprint(b)
    assert folder_fingerprint(unet("c", "x", b"\x01" * 63 + b"\x02")) != folder_fingerprint(a)
    assert folder_fingerprint(unet("d", "x", b"\x01" * 64, channels=64)) != folder_fingerprint(a)
