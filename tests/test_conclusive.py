"""Repeats until conclusive on the smoke pipeline (``report.until_conclusive``): batches of repeats are added, no
generator is fine-tuned or sampled twice, the run stops where the group-sequential rule says, and a SIGKILL between
two batches is continued by the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import link_smoke_job_stores
from mlflow.tracking import MlflowClient

from fairskin.config import ConfigError, build_config

REPO = Path(__file__).resolve().parents[1]
# One primary endpoint the smoke pipeline measures with spread (its classifier endpoints have none), with a margin
# (W1 units) that the smoke data meet at the second look but not at the first: at 3 repeats the TOST statistic is
# about 5.6 against a boundary of 9.4, at 4 repeats about 8.0 against 4.1 (looks 3, 4, 5, 6; alpha 0.05, m = 1).
SETTINGS = [
    "report.until_conclusive=true",
    "diffusion.max_repeats=6",
    "diffusion.repeat_batch=1",
    # Not in any key: the six new generators are fine-tuned in the pipeline's process, one after another, with the
    # weights a Ray Train worker would end with (tests/test_finetune.py), so the smoke job's Ray Train generators
    # serve as repeat 0. Each fit saves Ray Train's processes (some 25 s of CPU on a suite that is CPU-bound);
    # the kill, the resume and the stores are this test's subject, and they are the same under either trainer.
    "diffusion.trainer=in_process",
    # And their pools sampled there too (the same bytes as on an actor: tests/test_generate.py), without an
    # actor's start and model load (some 10 s of CPU a look).
    "generation.executor=in_process",
    "report.primary=[skin_tone_w1_worst]",
    "report.margins={skin_tone_w1_worst: 1.5}",
    # One downstream mode (random), as the study preset's lean table: the rule reads a generation endpoint, and a
    # look's tune stage still shows that it trains the new pools' trials and replays the rest (the smoke job's
    # random-mode trials have the same memo keys: the space's name is not in them).
    "tune.space=ablation_random",
]


def _start(root: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "jobs/full_pipeline.py", "--preset", "smoke", f"runtime.runs_root={root}", *SETTINGS]
    with open(log, "ab") as fh:  # its own process group: the SIGKILL reaches it and its children, not pytest
        return subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _records(root: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "stages").glob(f"{stage}-*/_stage.json"))]


@pytest.mark.ray
@pytest.mark.timeout(1800)  # the session's smoke upstream stages and smoke job are made in its setup when it is first
def test_until_conclusive_adds_batches_reuses_every_generator_stops_by_the_rule_and_resumes_after_sigkill(
    smoke_stages, smoke_job, tmp_path, reap
):
    # The smoke upstream stages, and the store of the smoke job (R = 1: vanilla and fairskin_s of repeat 0 are
    # fine-tuned, sampled and scored there already, under the same keys, and their classifier trials kept: a look
    # reuses them).
    root, log = smoke_stages(tmp_path / "runs"), tmp_path / "pipeline.log"
    link_smoke_job_stores(smoke_job[0], root)
    reused = {"vanilla", "fairskin_s"}
    tail = lambda: log.read_text()[-4000:]  # noqa: E731
    looks_file = lambda: next((root / "conclusive").glob("*/sequential_looks.csv"), None)  # noqa: E731

    # 1. SIGKILL once the first look (3 repeats) is recorded: the second batch has just begun.
    proc = reap(_start(root, log))
    deadline = time.time() + 600
    while looks_file() is None:
        assert proc.poll() is None, f"the job ended ({proc.returncode}) before its first look\n{tail()}"
        assert time.time() < deadline, "no first look in 600 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(pd.read_csv(looks_file())["n"]) == [3]

    # 2. The same command replays the first look from its stages and goes on.
    proc = reap(_start(root, log))
    assert proc.wait(timeout=900) == 0, tail()
    assert "stopped (conclusive) at 4 repeats" in log.read_text(), tail()

    # The rule, recomputed by hand from the last look's paired repeats: (margin - |mean d|) / (sd(d) / sqrt(n)) of
    # the first n differences against the recorded boundary; equivalent at 4, not at 3; the cap 6 never reached.
    looks = pd.read_csv(looks_file())
    assert list(looks["n"]) == [3, 4]
    report = sorted((root / "stages").glob("report-*"), key=lambda p: p.stat().st_mtime)[-1]
    units = pd.read_csv(report / "repeats.csv").drop_duplicates(["variant", "repeat"]).set_index(["variant", "repeat"])
    d = np.array(
        [
            units.loc[("fairskin_s", r), "skin_tone_w1_worst"] - units.loc[("vanilla", r), "skin_tone_w1_worst"]
            for r in range(4)
        ]
    )
    for n, decided in ((3, False), (4, True)):
        row = looks[looks["n"] == n].iloc[0]
        tost = (1.5 - abs(d[:n].mean())) / (d[:n].std(ddof=1) / np.sqrt(n))
        assert row["t_tost"] == pytest.approx(tost, rel=1e-9)
        assert bool(tost > row["equivalence_boundary"]) == decided
        assert row["verdict"] == ("equivalent" if decided else "inconclusive")

    # Every generator fine-tuned once and sampled once over both looks and the kill (stage records and store),
    # with the seeds continuing [0] as 0, 1, 2, 3; those of the smoke job not again.
    generators = {f"{v}{'' if r == 0 else f'-r{r}'}" for v in ("vanilla", "fairskin_s") for r in range(4)}
    assert sum(r["summary"]["generators_fitted"] for r in _records(root, "finetune")) == len(generators - reused)
    assert sum(r["summary"]["pools_generated"] for r in _records(root, "generate")) == len(generators - reused)
    assert {p.name.rsplit("-", 1)[0] for p in (root / "generators").iterdir()} == generators
    assert {p.name.rsplit("-", 1)[0] for p in (root / "pools").iterdir()} == generators
    assert max(r["reads"]["diffusion.repeat_seeds"] for r in _records(root, "finetune")) == [0, 1, 2, 3]
    # Every pool scored once, and every classifier trial trained once (ablation_random: each pool x 1 mode x 1
    # seed): a look's evaluate and tune stages work on the pools no earlier run saw and reuse the rest.
    scored = sorted(r["summary"]["pools_scored"] for r in _records(root, "evaluate"))
    assert scored == [2, 6 - len(reused)], scored
    tunes = sorted((r["summary"]["trials"], r["summary"]["trials_trained"]) for r in _records(root, "tune"))
    assert tunes == [(6, 6 - len(reused)), (8, 2)], tunes

    # MLflow: one fine-tune run per generator; the study's run holds each look's verdict once, at its step.
    uri = build_config("smoke", overrides=[f"runtime.runs_root={root}"]).tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fairskin").experiment_id
    fits = client.search_runs([experiment], "tags.`fairskin.stage` = 'finetune' and tags.`fairskin.generator` != ''")
    fitted = [r.data.tags["fairskin.generator"] for r in fits]
    assert sorted(fitted) == sorted(generators - reused)
    (study,) = client.search_runs([experiment], "tags.`fairskin.kind` = 'until_conclusive'")
    assert study.info.status == "FINISHED" and study.data.tags["fairskin.stopped"] == "conclusive"
    codes = client.get_metric_history(study.info.run_id, "fairskin_s.skin_tone_w1_worst.verdict_code")
    assert sorted((m.step, m.value) for m in codes) == [(3, 0.0), (4, 2.0)]
    artifacts = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"sequential_looks.csv", "sequential_looks.md", "sequential_looks.png"} <= artifacts

    # `python -m fairskin runs` with the same settings keeps every stored generator and pool (a later look uses them).
    from fairskin.housekeeping import IN_USE, scan

    stored = [e for e in scan(build_config("smoke", overrides=[f"runtime.runs_root={root}", *SETTINGS])).entries]
    stored = [e for e in stored if e.kind in ("stored generator", "stored pool")]
    assert len(stored) == 2 * len(generators) and all(e.status == IN_USE for e in stored), stored


def test_until_conclusive_settings_are_checked():
    with pytest.raises(ConfigError, match="needs diffusion.max_repeats"):
        build_config("smoke", overrides=["report.until_conclusive=true"])
    with pytest.raises(ConfigError, match="only with report.until_conclusive"):
        build_config("smoke", overrides=["diffusion.max_repeats=6"])
    with pytest.raises(ConfigError, match="below the first look's 4 repeats"):
        build_config(
            "smoke",
            overrides=["report.until_conclusive=true", "diffusion.max_repeats=3", "diffusion.repeat_seeds=[0,1,2,3]"],
        )


def test_looks_and_seeds_continue_the_configured_repeats():
    from fairskin.pipeline.conclusive import design, look_config, repeat_seeds

    config = build_config(
        "smoke",
        overrides=[
            "report.until_conclusive=true",
            "diffusion.max_repeats=9",
            "diffusion.repeat_batch=3",
            "diffusion.repeat_seeds=[4,7]",
        ],
    )
    assert design(config) == [3, 6, 9]  # at least 3 repeats first
    assert repeat_seeds(config) == [4, 7, 8, 9, 10, 11, 12, 13, 14]  # max + 1, max + 2, ...
    assert look_config(config, 6).diffusion.repeat_seeds == [4, 7, 8, 9, 10, 11]
