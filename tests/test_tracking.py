from mlflow import MlflowClient

from fairskin.config import flatten
from fairskin.tracking import PARENT_TAG, Tracker


def test_parent_and_child_runs_with_params_metrics_and_status(smoke_config, tmp_path):
    tracker = Tracker.from_config(smoke_config)
    assert tracker.tracking_uri.startswith("sqlite:///") and str(smoke_config.runtime.runs_root) in tracker.tracking_uri
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    with tracker.run("parent", tags={"fairskin.kind": "test"}) as parent:
        parent.log_config(smoke_config)
        with tracker.run("child", parent=parent) as child:
            child.log_metrics({"loss": 0.5, "nan_is_skipped": float("nan")}, step=3)
            child.log_artifact(artifact, "notes")
        try:
            with tracker.run("broken", parent=parent):
                raise ValueError("x")
        except ValueError:
            pass
    client = MlflowClient(tracker.tracking_uri)
    p = client.get_run(parent.run_id)
    assert p.data.params["data.image_size"] == "32" and p.data.params["preset"] == "smoke"
    assert set(p.data.params) == set(flatten(smoke_config.model_dump(mode="json")))
    children = client.search_runs([tracker.experiment_id], f"tags.{PARENT_TAG} = '{parent.run_id}'")
    assert {c.info.run_name: c.info.status for c in children} == {"child": "FINISHED", "broken": "FAILED"}
    c = client.get_run(child.run_id)
    assert c.data.metrics == {"loss": 0.5}
    assert client.get_metric_history(child.run_id, "loss")[0].step == 3
    assert [a.path for a in client.list_artifacts(child.run_id, "notes")] == ["notes/note.txt"]
    assert (smoke_config.runtime.runs_root / "mlartifacts").is_dir()


def test_disabled_tracking_is_a_no_op(smoke_config):
    tracker = Tracker("sqlite:///unused.db", "x", enabled=False)
    with tracker.run("r") as run:
        run.log_metrics({"a": 1.0})
        run.log_params({"b": 2})
    assert run.run_id == ""
