"""Input validation (issue 14, points 6-8): finite numbers, safe names, one-paragraph errors, no leaked secrets.

Fast and without Ray: the command-line tests fail before any stage or Ray starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from fairskin.config import ConfigError, FairSkinConfig, build_config, dump_config

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-Sup3r"
SECRET_URI = f"postgresql+psycopg://fairskin:{SECRET}@db.example:5432/mlflow?sslmode=require"
REDACTED_URI = "postgresql+psycopg://***:***@db.example:5432/mlflow?sslmode=require"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


# --------------------------------------------------------------------------- 6. finite numbers


@pytest.mark.parametrize("field", ["diffusion.learning_rate", "tune.count_scale", "generation.guidance_scale"])
@pytest.mark.parametrize("value", ["inf", ".inf", "nan", ".nan"])
def test_float_fields_refuse_inf_and_nan_naming_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        build_config("smoke", overrides=[f"{field}={value}"])
    text = str(err.value)
    assert f"{field} = " in text and "finite" in text


def _float_fields(model: type, prefix: str = "") -> list[str]:
    """Dotted paths of every float field of the typed config (sections recursed)."""
    out = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation) or (annotation,)
        section = next((a for a in args if isinstance(a, type) and hasattr(a, "model_fields")), None)
        if section is not None and typing.get_origin(annotation) is not list:
            out += _float_fields(section, f"{prefix}{name}.")
        elif typing.get_origin(annotation) is dict:
            continue  # a mapping of floats (report.margins): its entries are checked below
        elif float in args:
            out.append(f"{prefix}{name}")
    return out


@pytest.mark.parametrize("field", ["report.margins.essp", "report.resolutions.essp"])
def test_declared_margins_and_resolutions_refuse_infinity_and_nonsense(field):
    with pytest.raises(ConfigError, match=rf"{field} = Infinity: Input should be a finite number"):
        build_config("smoke", overrides=[f"{field}=.inf"])
    with pytest.raises(ConfigError, match="must be"):
        build_config("smoke", overrides=[f"{field}=-1"])


def test_every_float_field_of_the_config_refuses_infinity():
    fields = _float_fields(FairSkinConfig)
    assert {
        "diffusion.learning_rate",
        "tune.count_scale",
        "generation.guidance_scale",
        "data.synthetic_scale",
        "runtime.num_cpus",
    } <= set(fields)
    for field in fields:
        with pytest.raises(ConfigError, match=rf"{field} = Infinity: Input should be a finite number"):
            build_config("smoke", overrides=[f"{field}=.inf"])


@pytest.mark.parametrize(
    "proportions",
    [
        {"African": float("nan"), "Asian": 0.5, "Caucasian": 0.5},
        {"African": float("inf"), "Asian": 0.0, "Caucasian": 0.0},
    ],
)
def test_augment_plan_refuses_non_finite_proportions(proportions):
    from pydantic import ValidationError

    from fairskin.classify.augment import AugmentPlan

    with pytest.raises(ValidationError, match="finite"):
        AugmentPlan(kind="group_proportions", total=30, proportions=proportions)
    with pytest.raises(ValidationError, match="finite"):
        AugmentPlan(kind="per_subclass", per_subclass=float("inf"))


def test_a_search_space_refuses_an_infinite_bound(tmp_path):
    from fairskin.tune.spaces import SpaceError, load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        "search: random\ntrials: 2\nobjectives: [{metric: val_accuracy}]\n"
        "parameters: [{name: classifier.learning_rate, kind: float, low: 1.0e-5, high: .inf}]\n"
    )
    with pytest.raises(SpaceError, match=r"parameters\.0\.high: Input should be a finite number"):
        load_space(path)


def test_tune_cli_refuses_trials_below_one_before_any_stage(tmp_path):
    for trials in ("-1", "0"):
        started = time.time()
        out = _cli(
            "-m",
            "fairskin.tune",
            "--space",
            "ethnic_ratio",
            "--preset",
            "smoke",
            "--trials",
            trials,
            f"runtime.runs_root={tmp_path / 'runs'}",
        )
        assert out.returncode == 2, out.stderr
        assert "--trials" in out.stderr and "Traceback" not in out.stderr
        assert time.time() - started < 60
    assert _files_under(tmp_path) == []  # no runs root, no stage folder, no MLflow store


# --------------------------------------------------------------------------- 8. names under the runs root


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "/abs", ".hidden", "a..b", "x" * 101, ""])
def test_unsafe_names_are_refused(name):
    from fairskin.names import name_problem

    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["ethnic_ratio-fairskin_s-smoke", "ablation-demo-0123abcd4567", "A.1_b-2"])
def test_safe_names_pass(name):
    from fairskin.names import name_problem

    assert name_problem(name) is None


def test_tune_cli_refuses_an_unsafe_study_name_and_writes_nothing(tmp_path):
    root = tmp_path / "deep" / "runs"
    out = _cli(
        "-m",
        "fairskin.tune",
        "--space",
        "ethnic_ratio",
        "--preset",
        "smoke",
        "--study",
        "../../x",
        f"runtime.runs_root={root}",
    )
    assert out.returncode == 2, out.stderr
    assert "--study" in out.stderr and "Traceback" not in out.stderr
    assert _files_under(tmp_path) == []


def test_a_space_named_outside_the_runs_root_is_refused(tmp_path):
    from fairskin.tune.spaces import SpaceError, load_space

    path = tmp_path / "evil.yaml"
    path.write_text(
        "name: ../evil\nsearch: random\ntrials: 2\nobjectives: [{metric: val_accuracy}]\n"
        "parameters: [{name: per_subclass, kind: int, low: 0, high: 100}]\n"
    )
    with pytest.raises(SpaceError, match=r"name: '\.\./evil' is not a safe name"):
        load_space(path)
    out = _cli(
        "-m", "fairskin.tune", "--space", str(path), "--preset", "smoke", f"runtime.runs_root={tmp_path / 'runs'}"
    )
    assert out.returncode == 2 and "../evil" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "evil").exists()


def test_run_study_refuses_an_unsafe_name_before_creating_a_folder(smoke_config, tmp_path):
    from fairskin.tune.spaces import load_space
    from fairskin.tune.study import StudyError, run_study, study_dir

    with pytest.raises(StudyError, match="study name"):
        study_dir(smoke_config, "../../outside")
    with pytest.raises(StudyError, match="study name"):
        run_study(smoke_config, load_space("ethnic_ratio"), {}, tmp_path / "shards", name="../outside")
    with pytest.raises(StudyError, match="study name"):  # the default name holds --variant
        run_study(smoke_config, load_space("ethnic_ratio"), {}, tmp_path / "shards", variant="../../v")
    assert not smoke_config.runtime.runs_root.exists() and not (tmp_path / "outside").exists()


def test_ablation_job_refuses_an_unsafe_study_name(tmp_path):
    out = _cli("jobs/ablation.py", "--preset", "smoke", "--study", "../../x", f"runtime.runs_root={tmp_path / 'r'}")
    assert out.returncode == 2 and "--study" in out.stderr and "Traceback" not in out.stderr
    assert _files_under(tmp_path) == []


# --------------------------------------------------------------------------- 6. one paragraph, exit 2


@pytest.mark.parametrize("module", ["fairskin.classify.models", "fairskin.diffusion.models"])
def test_a_missing_model_folder_ends_in_one_paragraph(module, capsys):
    import importlib

    from fairskin.cli import input_errors, run_or_exit

    error = importlib.import_module(module).ModelNotFoundError

    def missing():
        raise error("classifier.model '/models/none' is not a local folder and downloads are off")

    with pytest.raises(SystemExit) as stop:
        run_or_exit(missing)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: classifier.model '/models/none'") and "Traceback" not in err
    with pytest.raises(error):  # --debug: the original error, traceback and all
        with input_errors(debug=True):
            missing()


def test_build_classifier_without_the_folder_is_an_input_error(capsys):
    from fairskin.classify.models import build_classifier
    from fairskin.cli import run_or_exit

    with pytest.raises(SystemExit) as stop:
        run_or_exit(build_classifier, "/nonexistent/vit", ["a", "b"], 32)
    assert stop.value.code == 2 and "classifier.model '/nonexistent/vit'" in capsys.readouterr().err


def test_error_messages_are_redacted_and_bugs_keep_their_traceback(capsys):
    from fairskin.cli import input_errors

    with pytest.raises(SystemExit):
        with input_errors():
            raise ConfigError(f"cannot reach {SECRET_URI}")
    err = capsys.readouterr().err
    assert SECRET not in err and "***" in err
    with pytest.raises(KeyError):  # not an input error: a bug, shown as such
        with input_errors():
            raise KeyError("x")


def test_debug_flag_shows_the_traceback():
    quiet = _cli("-m", "fairskin", "config", "diffusion.learning_rate=inf")
    assert quiet.returncode == 2 and quiet.stderr.startswith("error: invalid configuration")
    assert "Traceback" not in quiet.stderr
    loud = _cli("-m", "fairskin", "config", "--debug", "diffusion.learning_rate=inf")
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr


# --------------------------------------------------------------------------- 7. secrets


@pytest.mark.parametrize(
    "text,expected",
    [
        ("postgresql+psycopg://fairskin:s3cr%40t@db:5432/mlflow", "postgresql+psycopg://***:***@db:5432/mlflow"),
        ("postgresql://u:pa/ss?w#rd@db/mlflow", "postgresql://***:***@db/mlflow"),
        ("mysql://root:toor@127.0.0.1:3306/mlflow", "mysql://***:***@127.0.0.1:3306/mlflow"),
        ("mysql+pymysql://root:toor@db/mlflow?charset=utf8", "mysql+pymysql://***:***@db/mlflow?charset=utf8"),
        ("https://alice:tok3n@mlflow.example.org/api", "https://***:***@mlflow.example.org/api"),
        ("http://bob:@host:5000", "http://***:***@host:5000"),
        (
            "postgresql://db/mlflow?user=u&password=s3cret&sslmode=require",
            "postgresql://db/mlflow?user=u&password=***&sslmode=require",
        ),
        ("host=db user=u password=s3cret dbname=mlflow", "host=db user=u password=*** dbname=mlflow"),
        ("see 'postgresql://u:p@db/x' and http://a:b@h", "see 'postgresql://***:***@db/x' and http://***:***@h"),
    ],
)
def test_redact_blanks_passwords_and_users(text, expected):
    from fairskin.secrets import redact

    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////tmp/runs/mlflow.db",
        "http://127.0.0.1:5000/#/experiments/1/runs",
        "postgresql://user@db/mlflow",
        "file:///tmp/x",
        "plain words: a=b",
        None,
    ],
)
def test_redact_leaves_credential_free_text_alone(text):
    from fairskin.secrets import redact

    assert redact(text) == text


def _secret_config(tmp_path) -> FairSkinConfig:
    return build_config(
        "smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}", f"tracking.tracking_uri={SECRET_URI}"]
    )


def test_dumped_config_and_its_file_hold_no_secret(tmp_path):
    config = _secret_config(tmp_path)
    text = dump_config(config, tmp_path / "last_config.yaml")
    assert SECRET not in text and SECRET not in (tmp_path / "last_config.yaml").read_text()
    assert yaml.safe_load(text)["tracking"]["tracking_uri"] == REDACTED_URI
    assert config.tracking_uri() == SECRET_URI  # the connection still gets the real one
    out = _cli("-m", "fairskin", "config", "--preset", "smoke", f"tracking.tracking_uri={SECRET_URI}")
    assert out.returncode == 0 and SECRET not in out.stdout and "***" in out.stdout


def test_logged_params_hold_no_secret(tmp_path):
    from mlflow import MlflowClient

    from fairskin.tracking import Tracker, loggable_params

    config = _secret_config(tmp_path)
    params = loggable_params(config)
    assert params["tracking.tracking_uri"] == REDACTED_URI
    assert not any(SECRET in str(v) for v in params.values())
    # The real path: Tracker.log_config into a SQLite store (the config's URI is only logged, not used).
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "secrets")
    with tracker.run("parent") as run:
        run.log_config(config)
    logged = MlflowClient(tracker.tracking_uri).get_run(run.run_id).data.params
    assert logged["tracking.tracking_uri"] == REDACTED_URI
    assert not any(SECRET in v for v in logged.values())


def test_tracker_prints_a_redacted_uri():
    from fairskin.tracking import Tracker

    tracker = Tracker(SECRET_URI, "x", enabled=False)
    assert tracker.tracking_uri == SECRET_URI
    assert SECRET not in tracker.display_uri and SECRET not in tracker.ui_command()


def test_mlflow_parent_json_holds_no_secret(tmp_path, monkeypatch):
    import fairskin.tune.study as study
    from fairskin.tracking import Tracker

    class ServerTracker(Tracker):
        """A SQLite store standing in for a server whose URI carries a password."""

        def __init__(self, uri, experiment, enabled=True, runs_root=None):
            super().__init__(uri, experiment, enabled, runs_root)
            self.tracking_uri = SECRET_URI
            self.display_uri = REDACTED_URI

    monkeypatch.setattr(study, "Tracker", ServerTracker)
    config = build_config("smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}"])
    folder = tmp_path / "study"
    folder.mkdir()
    _, parent = study._parent_run(
        config, "s1", folder, {"fairskin.kind": "tune"}, False, {"tracking.tracking_uri": REDACTED_URI}
    )
    text = (folder / "mlflow_parent.json").read_text()
    assert SECRET not in text and json.loads(text)["tracking_uri"] == REDACTED_URI
    assert json.loads(text)["run_id"] == parent.run_id


def test_study_callback_pickles_without_the_secret_and_resumes_with_the_configs_uri(tmp_path):
    import ray.cloudpickle as cloudpickle

    from fairskin.tune.mlflow_callback import StudyMLflowCallback, remember_tracking_uri

    folder = tmp_path / "study"
    folder.mkdir()
    callback = StudyMLflowCallback(
        folder, SECRET_URI, "exp", {"fairskin.kind": "tune"}, {"tracking.tracking_uri": SECRET_URI, "runtime.seed": 0}
    )
    assert SECRET not in json.dumps(callback.base_params)
    blob = cloudpickle.dumps(callback)  # what Tune writes to trials/tuner.pkl
    assert SECRET.encode() not in blob
    restored = cloudpickle.loads(blob)
    assert restored.tracking_uri == REDACTED_URI
    # On --resume the study registers the configuration's URI; setup() connects with it.
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    remember_tracking_uri(folder, sqlite)
    restored.setup()
    assert restored.tracking_uri == sqlite and restored._client.get_experiment_by_name("exp") is not None
