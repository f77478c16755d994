"""A study's results once Tune is done: the trials table and the report folder (best trial, Pareto front, plots).

:func:`trials_table` reads Tune's results and the MLflow callback's run map into one row per trial;
:func:`summarise` writes ``report/`` (``trials.csv``, ``pareto_front.csv``, ``best_trial.json``,
``space.json``, the plots, the kind's own plots and best variant), logs them to the parent run and returns
the :class:`~fairskin.tune.kinds.StudyResult`. Used by :func:`fairskin.tune.study.run_study`; below the
pipeline, like the study.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.io import atomic_write_json
from fairskin.tracking import RunHandle, Tracker
from fairskin.tune.kinds import REPORT_DIR, StudyResult, TrialKind
from fairskin.tune.mlflow_callback import read_run_map
from fairskin.tune.resolved import ResolvedSpace


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A trial's nested config as ``{"a.b": value}`` (the trials table's config columns)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trial_id_of(res) -> tuple[str, re.Match | None]:
    """(trial id, match of the folder name) of one Tune result."""
    # Trial folders are named <trainable>_<trial id>_<number>_<tag>: the number is the start order.
    found = re.search(r"_([0-9a-f]{8})_(\d+)_", Path(str(res.path)).name)
    return (res.metrics or {}).get("trial_id") or (found.group(1) if found else Path(str(res.path)).name), found


def trials_table(folder: Path, results) -> pd.DataFrame:
    """One row per trial: trial id, run id, state, flattened config, last reported figures."""
    runs = read_run_map(folder)
    rows = []
    for res in results:
        metrics = dict(res.metrics or {})
        tid, found = trial_id_of(res)
        entry = runs.get(tid, {})
        row = {
            "trial": int(found.group(2)) if found else len(rows) + 1,
            "trial_id": tid,
            "run_id": entry.get("run_id", ""),
            "state": entry.get("state", "error" if res.error else ("finished" if metrics else "pending")),
            "error": str(res.error) if res.error else "",
        }
        row.update(flat_config(res.config or {}))
        row.update(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "config"
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("trial").reset_index(drop=True)
    return table


def summarise(
    config: FairSkinConfig,
    kind: TrialKind,
    name: str,
    folder: Path,
    space: ResolvedSpace,
    tracker: Tracker,
    parent: RunHandle,
    trials: pd.DataFrame,
    seconds: float,
) -> StudyResult:
    """Write the study's ``report/`` folder from its trials table, log it to the ``parent`` run (with the best
    trial's objectives and the Pareto front's size) and return the :class:`StudyResult` (``interrupted`` when a
    trial did not end or the study has fewer trials than the space expects)."""
    from fairskin.tune.analysis import best_trial, pareto_front, plot_objectives_by_trial, plot_ternary

    report = folder / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    metrics, modes = list(space.metrics), list(space.modes)
    done = kind.completed(trials, config)
    if not all(m in done for m in metrics):  # no trial reported its objectives (e.g. every trial failed)
        done = done.iloc[0:0].reindex(columns=[*done.columns, *(m for m in metrics if m not in done)])
    best = best_trial(done, metrics, modes)
    front = pareto_front(done, metrics, modes)
    interrupted = trials.empty or bool((~trials["state"].isin(["finished", "failed"])).any())
    if len(trials) < space.expected_trials:
        interrupted = True
    paths, best_dict = write_tables(report, space, trials, best, front)
    if not trials.empty and all(m in trials for m in metrics):
        paths.append(
            plot_objectives_by_trial(
                trials, metrics, modes, report / "objective_by_trial.png", title=f"{name}: objectives by trial"
            )
        )
    simplex = space.dim("proportions")
    if simplex is not None and len(simplex.groups) == 3 and not done.empty:
        key = "val_essp_fairseg" if "val_essp_fairseg" in done else metrics[0]
        paths.append(
            plot_ternary(
                done, simplex.groups, key, report / "proportions_ternary.png", title=f"{name}: proportions vs {key}"
            )
        )
    paths.extend(kind.plots(config, name, report, space, done, front))
    best_variant = None if best is None else kind.best_variant(folder, str(best["trial_id"]))
    if best_variant is not None:
        paths.append(best_variant)
    for p in paths:
        parent.log_artifact(p, "study")
    if best is not None:
        parent.log_metrics({f"best_{m}": float(best[m]) for m in metrics})
        parent.set_tags({"fairskin.best_trial": best["trial_id"], "fairskin.best_run": best.get("run_id", "")})
    parent.log_metrics({"pareto_size": len(front)})
    return StudyResult(
        name=name,
        path=folder,
        space=space,
        experiment_id=tracker.experiment_id,
        parent_run_id=parent.run_id,
        trials=trials,
        best=best_dict,
        pareto=front,
        interrupted=interrupted,
        seconds=seconds,
        artifacts=paths,
        best_variant=best_variant,
    )


def write_tables(
    report: Path, space: ResolvedSpace, trials: pd.DataFrame, best: pd.Series | None, front: pd.DataFrame
) -> tuple[list[Path], dict[str, Any] | None]:
    """``trials.csv``, ``pareto_front.csv``, ``best_trial.json`` and ``space.json`` in ``report``: (their paths,
    the best trial as a dict or None)."""
    metrics, modes = list(space.metrics), list(space.modes)
    paths = []
    trials.to_csv(report / "trials.csv", index=False)
    paths.append(report / "trials.csv")
    front.to_csv(report / "pareto_front.csv", index=False)
    paths.append(report / "pareto_front.csv")
    best_dict = None if best is None else json.loads(best.to_json())
    atomic_write_json(
        report / "best_trial.json",
        {
            "objectives": dict(zip(metrics, modes)),
            "best": best_dict,
            "pareto_front": json.loads(front.to_json(orient="records")),
        },
    )
    paths.append(report / "best_trial.json")
    atomic_write_json(report / "space.json", {"resolved": space.describe()})
    paths.append(report / "space.json")
    return paths, best_dict
