"""Each pool's evaluation is kept under its own key (``<runs root>/evaluations/``): a later evaluate stage over
the same pools (the next look of a run until conclusive, which adds pools) scores only the pools no earlier run
scored, and writes the same tables, byte for byte, as the run that scored them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fairskin.config import build_config

TABLES = ("generation_table.csv", "per_subclass.csv", "generation_table.md", "judge_real_accuracy.csv")


def _evaluate(root: Path):
    from fairskin.pipeline import run_pipeline

    for stage in (root / "stages").glob("evaluate-*"):
        shutil.rmtree(stage)
    config = build_config("smoke", overrides=[f"runtime.runs_root={root}"])
    return run_pipeline(config, stages=["evaluate"], echo=lambda *_: None).results["evaluate"]


@pytest.mark.ray
def test_a_rerun_reuses_each_pools_evaluation_and_a_changed_pool_is_scored_again(smoke_job, tmp_path):
    job = smoke_job[0]
    (scored,) = list((job / "stages").glob("evaluate-*"))  # the smoke job scored its pools (the reference)
    root = tmp_path / "runs"
    shutil.copytree(job, root, copy_function=os.link)

    reused = _evaluate(root)
    assert reused.summary["pools_scored"] == 0
    for name in TABLES:
        assert (reused.path / name).read_bytes() == (scored / name).read_bytes(), name
    pools = sorted(p.name for p in scored.iterdir() if p.is_dir())
    assert pools and all(
        (reused.path / p / "summary.json").read_bytes() == (scored / p / "summary.json").read_bytes() for p in pools
    )
    # The table read back from the kept rows holds what each pool's summary.json says (written straight from the
    # scored report, not through the kept row): every figure, exactly.
    import pandas as pd

    table = pd.read_csv(reused.path / "generation_table.csv", float_precision="round_trip").set_index("variant")
    for p in pools:
        summary = json.loads((scored / p / "summary.json").read_text())
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers and all(
            table.loc[p, k] == v or (pd.isna(table.loc[p, k]) and v != v) for k, v in numbers.items()
        ), p

    # Without the kept evaluations every pool is scored again, to the same tables.
    shutil.rmtree(root / "evaluations")
    again = _evaluate(root)
    assert again.summary["pools_scored"] == len(pools)
    for name in TABLES:
        assert (again.path / name).read_bytes() == (scored / name).read_bytes(), name

    # A pool whose images change is scored again (its key follows its content, not its name); the others are not.
    provenance = next((root / "stages").glob("generate-*")) / "provenance.json"
    record = json.loads(provenance.read_text())
    record[pools[0]]["pool"] = "0" * 16  # as if its shards had been regenerated with other images
    provenance.unlink()  # a hard link to the job's file: replace it, do not write through it
    provenance.write_text(json.dumps(record))
    changed = _evaluate(root)
    assert changed.summary["pools_scored"] == 1
