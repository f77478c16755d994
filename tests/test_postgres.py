"""MLflow on a real PostgreSQL server (issue 16, point 3): a study, the report, and two pipelines
started at once on two runs roots, all against one ``postgresql://`` store.

The server (tests/postgres_server.py) runs from pgserver's bundled binaries (the ``dev`` extra) or
the system's PostgreSQL, on a free loopback port, with password authentication; the password is
only in a ``PGPASSFILE`` (never in the URI), which is how README recommends passing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("psycopg", reason="the postgres extra's driver: pip install -e '.[postgres]'")
from postgres_server import PostgresServer, find_bin  # noqa: E402

if find_bin() is None:
    pytest.skip("no PostgreSQL server programs (pip install -e '.[dev]' installs pgserver's)", allow_module_level=True)

GROUPS = ("African", "Asian", "Caucasian")


@pytest.fixture(scope="module")
def pg():
    """One server for the module; PGPASSFILE names its password file (this process and subprocesses)."""
    server = PostgresServer(databases=("mlflow", "pipelines")).start()
    before = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(server.passfile)
    try:
        yield server
    finally:
        if before is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = before
        pid = server.pid
        server.stop()
        assert pid is not None and not Path(f"/proc/{pid}").exists()  # stopped by its own PID


def test_the_password_comes_from_pgpassfile_not_the_uri(pg):
    import psycopg

    from fairskin.secrets import has_secret

    uri = pg.uri()
    assert pg.password not in uri and not has_secret(uri)
    env_file = os.environ.pop("PGPASSFILE")
    try:
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(uri, connect_timeout=5, passfile=os.devnull).close()
    finally:
        os.environ["PGPASSFILE"] = env_file
    psycopg.connect(uri, connect_timeout=5).close()  # libpq reads PGPASSFILE


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only as root does the server run as another user (postgres or "
    "nobody), whose reach into a root-only folder is what this tests",
)
def test_a_server_whose_programs_sit_in_a_root_only_folder_starts_and_leaves_nothing_behind(tmp_path):
    """Issue 31: a clone in a 0700 folder owned by root (``mktemp -d``, /root) holds pgserver's
    programs out of the server user's reach; the server must still start, take the password from
    its password file only, and leave no temporary folder once stopped."""
    import shutil

    import psycopg

    install = find_bin().parent  # pgserver's: site-packages/pgserver/pginstall/{bin,lib,share}
    site = install.parent.parent
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    clone_site = private / "venv" / "site-packages"  # as a clone's .venv would hold it
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, clone_site / install.parent.name / install.name / part, symlinks=True)
    for libs in site.glob("*.libs"):  # the wheel's bundled shared libraries, found through an RPATH
        shutil.copytree(libs, clone_site / libs.name, symlinks=True)
    private.chmod(0o700)
    assert private.stat().st_uid == 0 and private.stat().st_mode & 0o777 == 0o700
    before = set(Path("/tmp").glob("fsk-pg-*"))

    server = PostgresServer(bin_dir=clone_site / install.parent.name / install.name / "bin", databases=("mlflow",))
    server.start()
    try:
        made = {server.folder, server.private, server.programs}
        assert server.programs is not None and private not in server.programs.parents  # ran from a reachable copy
        with server.connect("mlflow") as conn:  # the password from the password file
            assert conn.execute("select current_user").fetchone() == ("fairskin",)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(server.uri("mlflow"), connect_timeout=5, passfile=os.devnull).close()
    finally:
        pid = server.pid
        server.stop()
    assert not Path(f"/proc/{pid}").exists()
    assert not any(folder.exists() for folder in made)
    assert set(Path("/tmp").glob("fsk-pg-*")) <= before


@pytest.mark.ray
def test_study_and_report_on_postgres(pg, ray_session, prepared_smoke, tmp_path):
    from mlflow import MlflowClient

    from fairskin.config import build_config
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.report import build_report
    from fairskin.tracking import PARENT_TAG
    from fairskin.tune import run_study
    from fairskin.tune.study import experiment_name

    config = build_config(
        "smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}", f"tracking.tracking_uri={pg.uri('mlflow')}"]
    )
    pool = write_synthetic_pool(config, tmp_path / "pool", per_subclass=20)
    result = run_study(
        config, "ethnic_ratio", {"vanilla": pool}, prepared_smoke[1].path / "shards", trials=3, echo=lambda *_: None
    )
    assert not result.interrupted and set(result.trials["state"]) == {"finished"}
    assert not (config.runtime.runs_root / "mlflow.db").exists()  # nothing went to the SQLite default

    client = MlflowClient(pg.uri("mlflow"))
    exp = client.get_experiment_by_name(experiment_name(config, result.name))
    assert exp.artifact_location.startswith((config.runtime.runs_root / "mlartifacts").as_uri())
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert len(children) == 3 and {c.data.tags[PARENT_TAG] for c in children} == {result.parent_run_id}
    assert all(c.info.status == "FINISHED" and c.data.tags["fairskin.kind"] == "tune" for c in children)
    assert all([m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")] == [1, 2] for c in children)
    assert all(pg.password not in str(c.data.params) for c in runs)

    report = build_report(pg.uri("mlflow"), tmp_path / "report", GROUPS, study=result.name)
    text = report.markdown.read_text()
    assert f"Study: `{result.name}`" in text and result.name in text
    assert "figure5_proportion_search" in report.figures  # the study's 3 trials, read back from PostgreSQL
    assert list(report.units["variant"]) == ["vanilla"] and pg.password not in text  # one repeat of one variant


def test_two_pipelines_at_once_on_two_runs_roots_share_one_postgres_store(pg, tmp_path):
    """Started together on a fresh database: each holds its own runs root's lock, both write to the
    one store (its tables created once, under the store's advisory lock), and both finish."""
    from mlflow import MlflowClient

    from fairskin.tracking import PARENT_TAG

    uri = pg.uri("pipelines")
    roots = [tmp_path / "runs-a", tmp_path / "runs-b"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), PGPASSFILE=str(pg.passfile))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "jobs" / "full_pipeline.py"),
                "--preset",
                "smoke",
                "--stages",
                "prepare",
                f"runtime.runs_root={root}",
                f"tracking.tracking_uri={uri}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for root in roots
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fairskin")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.info.run_name == "pipeline-smoke"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    by_root = {}
    for parent in parents:
        kids = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        assert [k.info.run_name for k in kids] == ["prepare"]  # the smoke stage that is quick and logs artifacts
        assert all(k.info.status == "FINISHED" for k in kids)
        paths = {Path(k.data.params["stage.path"]) for k in kids}
        (root,) = {r for r in roots if all(r in p.parents for p in paths)}  # one run, one runs root
        by_root[root] = parent.info.run_id
    assert set(by_root) == set(roots)
    for root in roots:
        assert (root / "stages").is_dir() and not (root / ".fairskin.lock").exists()
        assert not (root / "mlflow.db").exists()
        assert pg.password not in (root / "last_config.yaml").read_text()
        assert uri in (root / "last_config.yaml").read_text()
    assert not (tmp_path / "mlruns").exists()  # artifacts under a runs root, not ./mlruns
    assert exp.artifact_location in {(r / "mlartifacts").as_uri() for r in roots}
