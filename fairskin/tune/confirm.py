"""Confirm what a search chose: re-train its best trial and Pareto points with extra classifier seeds.

A TPE or random search reports the trial that won on validation, and a winner's validation
figure is optimistic: it won partly by luck (one classifier seed each). After the search,
each chosen point (the best trial and every Pareto point) is re-trained with
``tune.confirm_seeds`` new classifier seeds on the same pool, and the study reports its
validation and **test** figures as a mean with a t-interval over those seeds, beside the
search-time value. Grid spaces need no confirmation (they repeat seeds themselves).

The re-trainings run as Ray tasks with the trial's resources. Each finished one is recorded
in ``<study>/confirm/results.json`` (temp file + rename) with its MLflow run id, so a killed
study resumes its confirmations without redoing or re-logging a finished one. Confirmation
runs are children of the study's parent run, tagged ``fairskin.kind = confirm`` (classifier
trial queries, which ask for ``kind = tune``, never see them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairskin.io import atomic_write_json
from fairskin.metrics.paired import t_interval

CONFIRM_DIR = "confirm"
RESULTS_FILE = "results.json"


def chosen_points(best: Mapping[str, Any] | None, front: pd.DataFrame, configs: Mapping[str, dict]
                  ) -> list[dict[str, Any]]:
    """The points to confirm: the best trial, then the Pareto points, each distinct setting once
    (trials that tried the same setting, as a discrete space's TPE often does, are one point).

    ``configs``: trial id -> the trial's config. Returns ``[{"trial_id", "role", "config"}]``."""
    points: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}  # setting (config without its seed) -> trial id chosen for it

    def add(tid: str, role: str) -> None:
        setting = json.dumps({k: v for k, v in configs[tid].items() if k != "seed"}, sort_keys=True, default=str)
        tid = seen.setdefault(setting, tid)
        if tid in points:
            if role not in points[tid]["role"]:
                points[tid]["role"] += f", {role}"
        else:
            points[tid] = {"trial_id": tid, "role": role, "config": configs[tid]}

    if best is not None and best.get("trial_id") in configs:
        add(best["trial_id"], "best")
    for tid in front.get("trial_id", pd.Series(dtype=str)).tolist():
        if tid in configs:
            add(tid, "pareto")
    return list(points.values())


def confirm_seeds(search_seeds: Sequence[int], count: int) -> list[int]:
    """``count`` classifier seeds that no search trial used: after the largest search seed."""
    start = max(search_seeds, default=0) + 1
    return list(range(start, start + count))


def _train(config: dict[str, Any], inputs) -> list[dict[str, float]]:
    """One confirmation training (inside a Ray task): every epoch's figures, the last with test figures."""
    import warnings

    from fairskin.runtime import configure_worker
    from fairskin.tune.trainable import load_trial_data, run_trial

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    configure_worker(int(config["seed"]))
    reports: list[dict[str, float]] = []
    run_trial(config, load_trial_data(inputs, config["variant"]), inputs.space, inputs.classifier, reports.append)
    return reports


def run_confirmations(folder: Path, points: list[dict[str, Any]], seeds: Sequence[int], inputs, *,
                      resources: Mapping[str, float], parent, tags: Mapping[str, str],
                      pool_fingerprints: Mapping[str, str], echo: Callable[[str], None] = print
                      ) -> list[dict[str, Any]]:
    """Train every (point, seed) not yet recorded in ``folder/confirm/results.json``; returns all records.

    ``parent``: the study's parent :class:`~fairskin.tracking.RunHandle` (confirmation runs are
    its children); ``resources``: a trial's ``{"CPU": .., "GPU": ..}``.
    """
    import ray

    from fairskin.tune.mlflow_callback import flatten_trial_config, trial_provenance

    out = Path(folder) / CONFIRM_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    done: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    have = {(d["trial_id"], d["seed"]) for d in done}
    todo = [(p, s) for p in points for s in seeds if (p["trial_id"], s) not in have]
    if not todo:
        return done
    echo(f"confirming {len(points)} chosen point(s) with {len(seeds)} new classifier seed(s) each: "
         f"{len(todo)} training(s)")
    task = ray.remote(num_cpus=resources.get("CPU", 1.0), num_gpus=resources.get("GPU", 0.0))(_train)
    pending = {task.remote({**p["config"], "seed": s}, inputs): (p, s) for p, s in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        point, seed = pending.pop(ready[0])
        reports = ray.get(ready[0])
        run = parent.child(f"confirm-{point['trial_id']}-seed{seed}", tags={
            **tags, "fairskin.kind": "confirm", "fairskin.confirms": point["trial_id"], "fairskin.role": point["role"],
            "fairskin.mode": str(point["config"].get("mode", "")),
            **trial_provenance(point["config"], pool_fingerprints, tags)})
        run.log_params({**flatten_trial_config(point["config"]), "trial.seed": seed})
        for epoch, figures in enumerate(reports, start=1):
            run.log_metrics({k: v for k, v in figures.items() if isinstance(v, (int, float))}, step=epoch)
        run.end()
        done.append({"trial_id": point["trial_id"], "role": point["role"], "seed": seed, "run_id": run.run_id,
                     "figures": {k: float(v) for k, v in reports[-1].items() if isinstance(v, (int, float))}})
        atomic_write_json(path, done)
    return done


def confirmation_table(records: list[dict[str, Any]], trials: pd.DataFrame, metrics: Sequence[str],
                       level: float = 0.95) -> pd.DataFrame:
    """One row per confirmed point: its search-time value of each objective, and the confirmed
    validation and test figures (mean, low, high over the confirmation seeds).

    Columns: ``trial_id``, ``role``, ``seeds``, ``<metric>_search``, ``<metric>`` / ``_low`` / ``_high``
    (validation), and the same for ``test_<metric without val_>``."""
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame([{"trial_id": r["trial_id"], "role": r["role"], "seed": r["seed"], **r["figures"]}
                          for r in records])
    searched = trials.set_index("trial_id") if "trial_id" in trials else pd.DataFrame()
    rows = []
    for tid, part in frame.groupby("trial_id", sort=False):
        row: dict[str, Any] = {"trial_id": tid, "role": part["role"].iloc[0], "seeds": int(part["seed"].nunique())}
        for metric in metrics:
            test = "test_" + metric.removeprefix("val_")
            row[f"{metric}_search"] = float(searched.loc[tid, metric]) if tid in searched.index and metric in searched \
                else np.nan
            for key in (metric, test):
                iv = t_interval(part[key].to_numpy(float) if key in part else np.array([]), level)
                row[key], row[f"{key}_low"], row[f"{key}_high"] = iv.mean, iv.low, iv.high
        rows.append(row)
    return pd.DataFrame(rows)


def plot_confirmations(table: pd.DataFrame, metrics: Sequence[str], path: Path, title: str) -> Path:
    """Per objective: each confirmed point's search-time value (x) beside its confirmed validation
    and test means with their intervals (error bars)."""
    from fairskin.metrics.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.6 * len(metrics)), squeeze=False)
    x = np.arange(len(table))
    for ax, metric in zip(axes[:, 0], metrics):
        test = "test_" + metric.removeprefix("val_")
        ax.plot(x - 0.15, table[f"{metric}_search"], "x", color="k", label="search-time (one seed, chosen on it)")
        for key, dx, name in ((metric, 0.0, "validation, confirmed"), (test, 0.15, "test, confirmed")):
            mean = table[key].to_numpy(float)
            err = np.vstack([mean - table[f"{key}_low"].to_numpy(float), table[f"{key}_high"].to_numpy(float) - mean])
            ax.errorbar(x + dx, mean, yerr=np.where(np.isfinite(err), err, 0.0), fmt="o", capsize=3, label=name)
        ax.set_xticks(x, [f"{t}\n({r})" for t, r in zip(table["trial_id"], table["role"])], fontsize=7)
        ax.set_ylabel(metric.removeprefix("val_"))
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
