"""Finding the report's runs in MLflow: the study's trials, the evaluate runs that measured the same
pools, the reference run of the study's own pipeline, and the side studies on the report's pools."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from fairskin.provenance import TAG_POOL, TAG_POOL_SEED, TAG_REAL, TAG_REPEAT, TAG_STAGE_KEY, TAG_VARIANT


def find_runs(tracking_uri: str, filter_string: str) -> pd.DataFrame:
    """All FINISHED runs matching ``filter_string`` in every experiment, as a flat frame
    (columns ``run_id``, ``start_time``, ``tags.*``, ``params.*``, ``metrics.*``)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return pd.DataFrame()
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_ids=ids, filter_string=filter_string, output_format="pandas")
    if len(runs) and "status" in runs:
        runs = runs[runs["status"] == "FINISHED"]
    return runs.reset_index(drop=True)


def tag_column(runs: pd.DataFrame, tag: str, default: str = "") -> pd.Series:
    """The tag ``tag`` of every run as strings, ``default`` where a run lacks it."""
    column = f"tags.{tag}"
    return runs[column].fillna(default).astype(str) if column in runs else pd.Series(default, index=runs.index)


def _children(runs: pd.DataFrame) -> pd.DataFrame:
    if not len(runs) or "tags.mlflow.parentRunId" not in runs:
        return runs.iloc[0:0]
    return runs[runs["tags.mlflow.parentRunId"].notna()]


def latest_study(tracking_uri: str, space: str = "ablation") -> str | None:
    """The most recent study of ``space`` that has trial runs, or None."""
    runs = _children(find_runs(tracking_uri, f"tags.`fairskin.space` = '{space}' and tags.`fairskin.kind` = 'tune'"))
    if not len(runs):
        return None
    return str(runs.sort_values("start_time")["tags.fairskin.study"].iloc[-1])


def _with_units(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant``, ``repeat``, ``generator``, ``mode``, ``seed``, ``pool`` (its fingerprint) and ``pool_seed``
    (which of ``generation.pool_seeds``; 0 for runs made before there were several) columns from tags and params."""
    variant = tag_column(runs, TAG_VARIANT)
    repeat = pd.to_numeric(tag_column(runs, TAG_REPEAT, "0"), errors="coerce").fillna(0).astype(int)
    seed = pd.to_numeric(runs.get("params.trial.seed", pd.Series(0, index=runs.index)), errors="coerce")
    return runs.assign(
        variant=variant,
        repeat=repeat,
        generator=tag_column(runs, "fairskin.generator"),
        mode=tag_column(runs, "fairskin.mode"),
        seed=seed,
        pool=tag_column(runs, TAG_POOL),
        pool_seed=pd.to_numeric(tag_column(runs, TAG_POOL_SEED, "0"), errors="coerce").fillna(0).astype(int),
    )


def trial_runs(tracking_uri: str, study: str) -> pd.DataFrame:
    """Trial (child) runs of one study: one row per trial with ``variant``, ``repeat``, ``mode``,
    ``seed`` and ``pool`` (the fingerprint of the pool it drew from)."""
    runs = _children(find_runs(tracking_uri, f"tags.`fairskin.study` = '{study}' and tags.`fairskin.kind` = 'tune'"))
    return _with_units(runs).reset_index(drop=True) if len(runs) else runs


def study_parent(tracking_uri: str, study: str) -> pd.Series | None:
    """The study's parent run (tags: the pipeline run that launched it, the real-shard fingerprint)."""
    runs = find_runs(tracking_uri, f"tags.`fairskin.study` = '{study}' and tags.`fairskin.kind` = 'tune'")
    if not len(runs):
        return None
    parents = runs[runs["tags.mlflow.parentRunId"].isna()] if "tags.mlflow.parentRunId" in runs else runs
    return parents.sort_values("start_time").iloc[-1] if len(parents) else None


def pipeline_stage_keys(tracking_uri: str, pipeline_run: str) -> dict[str, str]:
    """stage name -> stage key, as the pipeline run ``pipeline_run`` recorded them (empty if unknown)."""
    if not pipeline_run:
        return {}
    from mlflow import MlflowClient

    try:
        tags = MlflowClient(tracking_uri=tracking_uri).get_run(pipeline_run).data.tags
    except Exception:  # deleted, or another store
        return {}
    return {k.removeprefix("fairskin.key."): v for k, v in tags.items() if k.startswith("fairskin.key.")}


def evaluate_runs(tracking_uri: str, pools: set[str], stage_key: str | None = None) -> pd.DataFrame:
    """One ``evaluate`` run per pool fingerprint in ``pools``, indexed by fingerprint.

    Where several runs measured one pool, those of the evaluate stage ``stage_key`` (the
    study's own pipeline) are preferred; among equals the latest wins (same pool, same code).
    """
    runs = _children(find_runs(tracking_uri, "tags.`fairskin.stage` = 'evaluate'"))
    if not len(runs) or f"tags.{TAG_POOL}" not in runs:
        return pd.DataFrame()
    runs = _with_units(runs)
    runs = runs[runs["pool"].isin(pools)]
    if stage_key:
        runs = runs.assign(_own=tag_column(runs, TAG_STAGE_KEY) == stage_key)
    else:
        runs = runs.assign(_own=False)
    runs = runs.sort_values(["_own", "start_time"])
    return runs.groupby("pool").tail(1).set_index("pool")


def reference_run(tracking_uri: str, real: str | None = None, stage_key: str | None = None) -> pd.Series | None:
    """The real-data-only baseline: the ``reference`` stage run with the given stage key (the
    study's pipeline), else the latest on the same real shards (``real`` fingerprint)."""
    runs = find_runs(tracking_uri, "tags.`fairskin.stage` = 'reference'")
    if not len(runs) or "metrics.test_accuracy" not in runs:
        return None
    runs = runs[runs["metrics.test_accuracy"].notna()].sort_values("start_time")
    if stage_key and len(own := runs[tag_column(runs, TAG_STAGE_KEY) == stage_key]):
        return own.iloc[-1]
    if real:
        runs = runs[tag_column(runs, TAG_REAL) == real]
    return runs.iloc[-1] if len(runs) else None


def scoped_studies(tracking_uri: str, space: str, pools: set[str]) -> pd.DataFrame:
    """Trial runs of every ``space`` study whose pools are all among ``pools`` (the report's own),
    with a ``study`` column; studies that drew from any other pool are left out."""
    runs = _children(find_runs(tracking_uri, f"tags.`fairskin.space` = '{space}' and tags.`fairskin.kind` = 'tune'"))
    if not len(runs):
        return runs
    runs = _with_units(runs).assign(study=tag_column(runs, "fairskin.study"))
    keep = runs.groupby("study")["pool"].transform(lambda p: bool(len(p)) and set(p) <= pools and "" not in set(p))
    return runs[keep.astype(bool)].reset_index(drop=True)


def baseline_row(ref: pd.Series | None, groups: Sequence[str]) -> dict[str, float]:
    """The reference run's test figures (accuracy, ESSP, ESSP (FairSeg), DP, accuracy per group); empty without one."""
    if ref is None:
        return {}
    keys = ["accuracy", "essp", "essp_fairseg", "dp"] + [f"accuracy_{g}" for g in groups]
    return {k: float(ref.get(f"metrics.test_{k}", math.nan)) for k in keys}
