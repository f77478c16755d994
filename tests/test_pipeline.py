"""The pipeline's `prepare` stage at smoke size: what it writes, what it logs, skip and force."""

import subprocess
import sys

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from conftest import REPO
from fairskin.config import build_config
from fairskin.data.shards import load_decoded, read_index
from fairskin.data.synthetic import scaled_counts
from fairskin.data.prepare import reference_counts
from fairskin.pipeline import run_pipeline
from fairskin.tracking import PARENT_TAG


def test_prepare_writes_manifest_shards_and_counts(prepared_smoke):
    config, prepare = prepared_smoke
    manifest = pd.read_parquet(prepare.path / "manifest.parquet")
    expected = scaled_counts(reference_counts(), config.data.synthetic_scale, config.data.min_subclass_count)
    assert manifest.groupby(["group", "disease"]).size().to_dict() == expected
    pixels, meta = load_decoded(prepare.path / "shards")
    assert pixels.shape[1:] == (32, 32, 3) and len(meta) == len(manifest) == read_index(prepare.path / "shards")["rows"]
    assert list(meta["id"]) == list(manifest["id"]) and list(meta["sha256"]) == list(manifest["sha256"])
    assert set(manifest["source"]) == {"synthetic"} and manifest["seed"].notna().all()
    for name in ("subclass_counts.csv", "subclass_counts.png", "preview.png", "_stage.json"):
        assert (prepare.path / name).is_file()


def test_same_config_same_data_other_seed_other_data(prepared_smoke, tmp_path):
    config, prepare = prepared_smoke
    again = run_pipeline(build_config("smoke", overrides=[f"runtime.runs_root={tmp_path}/a"]), ["prepare"],
                         echo=lambda *_: None).results["prepare"]
    other = run_pipeline(build_config("smoke", overrides=[f"runtime.runs_root={tmp_path}/b", "runtime.seed=1"]),
                         ["prepare"], echo=lambda *_: None).results["prepare"]
    m0, m1, m2 = (pd.read_parquet(r.path / "manifest.parquet") for r in (prepare, again, other))
    assert again.key == prepare.key and m0.equals(m1)  # same split, same pixels (sha256), same ids
    assert other.key != prepare.key and not np.array_equal(m0["sha256"], m2["sha256"])


def test_pipeline_logs_parent_and_child_runs_and_skips_when_done(smoke_config):
    first = run_pipeline(smoke_config, ["prepare"], echo=lambda *_: None)
    second = run_pipeline(smoke_config, ["prepare"], echo=lambda *_: None)
    forced = run_pipeline(smoke_config, ["prepare"], force=["prepare"], echo=lambda *_: None)
    assert not first.results["prepare"].skipped and second.results["prepare"].skipped
    assert not forced.results["prepare"].skipped and forced.results["prepare"].path == first.results["prepare"].path
    client = MlflowClient(first.tracker.tracking_uri)
    for outcome, skipped in ((first, "False"), (second, "True")):
        children = client.search_runs([outcome.tracker.experiment_id],
                                      f"tags.{PARENT_TAG} = '{outcome.parent_run_id}'")
        assert [c.info.run_name for c in children] == ["prepare"]
        assert children[0].data.tags["fairskin.skipped"] == skipped
    child = client.search_runs([first.tracker.experiment_id], f"tags.{PARENT_TAG} = '{first.parent_run_id}'")[0]
    assert child.data.metrics["rows"] > 0 and child.data.params["reads.data.image_size"] == "32"
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "prepare")]
    assert "prepare/subclass_counts.png" in artifacts and "prepare/preview.png" in artifacts
    parent = client.get_run(first.parent_run_id)
    assert parent.data.params["preset"] == "smoke" and parent.info.status == "FINISHED"


def test_job_entry_point_runs_and_reports_where_things_are(tmp_path):
    out = subprocess.run([sys.executable, "jobs/full_pipeline.py", "--preset", "smoke",
                          f"runtime.runs_root={tmp_path / 'runs'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prepare" in out.stdout and f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" in out.stdout
    assert "mlflow server" in out.stdout and "#/experiments/" in out.stdout
    stages = tmp_path / "runs" / "stages"
    config = build_config("smoke")
    pools = sorted(stages.glob("generate-*/*/index.json"))
    assert [p.parent.name for p in pools] == sorted(config.diffusion.variants)
    per_pool = config.generation.images_per_subclass * 15
    assert all(read_index(p.parent)["rows"] == per_pool for p in pools)
    (evaluate,) = stages.glob("evaluate-*")
    table = pd.read_csv(evaluate / "generation_table.csv")
    assert sorted(table["variant"]) == sorted(config.diffusion.variants)
    assert np.isfinite(table[["fid_mean", "kid_mean", "fid_var_subclass", "is_mean"]].to_numpy()).all()
    per_subclass = pd.read_csv(evaluate / "per_subclass.csv")
    assert len(per_subclass) == 15 * len(config.diffusion.variants) and (per_subclass["fid"] >= 0).all()
    for variant in config.diffusion.variants:
        assert (evaluate / variant / "tsne.png").stat().st_size > 0
        assert (evaluate / variant / "fid_heatmap.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "jobs/full_pipeline.py", "--preset", "smoke", "data.image_size=tiny"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "data.image_size" in bad.stderr and '"tiny"' in bad.stderr
