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

A generator study (issue 17) confirms with the same runner: each chosen point and vanilla is
fine-tuned again from the base under ``tune.confirm_seeds`` new generator seeds (salts
:func:`confirm_salts`, seed = ``salted_seed(repeat_seeds[0], salt)``, never the search's), scored
on a pool of ``tune.confirm_pool_per_subclass`` images per subclass, and each point is paired with
vanilla by seed (:func:`generator_confirmation_table`, :func:`plot_generator_confirmations`):
``confirm/confirmed.csv`` and ``confirm/confirmed_tradeoff.png``. Any search kind, grids included
(every trial of a generator study ran on one generator seed).

Below the pipeline: the classifier study (:func:`fairskin.tune.classifier.confirm_classifier`) uses this
module, and nothing here imports the generator trainable; a generator study's confirmations
(:func:`fairskin.tune.generator_study.confirm_generators`) pass it in (``train``, ``variant_name``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.io import atomic_write_json
from fairskin.metrics.paired import t_interval

CONFIRM_DIR = "confirm"
RESULTS_FILE = "results.json"


def chosen_points(
    best: Mapping[str, Any] | None,
    front: pd.DataFrame,
    configs: Mapping[str, dict],
    *,
    limit: int | None = None,
    metrics: Sequence[str] = (),
    modes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The points to confirm: the best trial, then the Pareto points, each distinct setting once
    (trials that tried the same setting, as a discrete space's TPE often does, are one point).

    ``configs``: trial id -> the trial's config. Given ``metrics`` and ``modes`` (the study's objectives,
    columns of ``front``), the Pareto points come in :func:`front_order`: each objective's best point
    first, so that ``limit`` (at most this many distinct settings; None: all) keeps the front's ends.
    Returns ``[{"trial_id", "role", "config"}]``."""
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
    for tid in front_order(front, metrics, modes):
        if tid in configs:
            add(tid, "pareto")
    chosen = list(points.values())
    return chosen if limit is None else chosen[:limit]


def front_order(front: pd.DataFrame, metrics: Sequence[str] = (), modes: Sequence[str] = ()) -> list[str]:
    """The front's trial ids, ends first: each objective's best point (in the order of ``metrics``), then
    each objective's second best not yet listed, and so on. Without objectives (or without their
    columns in ``front``): the front's own row order."""
    ids = front.get("trial_id", pd.Series(dtype=str)).tolist()
    ranked = [
        front.sort_values(metric, ascending=mode == "min", kind="stable", na_position="last")["trial_id"].tolist()
        for metric, mode in zip(metrics, modes)
        if metric in front
    ]
    if not ranked:
        return ids
    order: list[str] = []
    for depth in range(len(ids)):
        for ranking in ranked:
            if ranking[depth] not in order:
                order.append(ranking[depth])
    return order


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
    data = lambda: load_trial_data(inputs, config["variant"])  # noqa: E731  (not read when the trial is replayed)
    run_trial(config, data, inputs.space, inputs.classifier, reports.append, memo=inputs.memo)
    return reports


def run_confirmations(
    folder: Path,
    points: list[dict[str, Any]],
    seeds: Sequence[int],
    inputs,
    *,
    resources: Mapping[str, float],
    parent,
    tags: Mapping[str, str],
    pool_fingerprints: Mapping[str, str],
    echo: Callable[[str], None] = print,
    train: Callable[[dict[str, Any], Any], list[dict[str, Any]]] | None = None,
    seed_key: str = "seed",
    unit: str = "classifier seed",
    extra_params: Callable[[dict[str, Any], int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run every (point, seed) not yet recorded in ``folder/confirm/results.json``; returns all records.

    ``parent``: the study's parent :class:`~fairskin.tracking.RunHandle` (confirmation runs are
    its children); ``resources``: a trial's ``{"CPU": .., "GPU": ..}``. Each job is the Ray task
    ``train({**point["config"], seed_key: seed}, inputs)`` returning its reports (dicts of figures,
    the last one final); a classifier study's default is one re-training per classifier seed. A
    generator study passes :func:`fairskin.tune.generator.confirm_generator` with ``seed_key =
    "seed_salt"`` (``seeds`` are then generator-seed salts). ``extra_params(point, seed)``: more
    params of the job's run, also kept in its record under ``params``. A last report's ``preview`` /
    ``variant_file`` paths (generator jobs) are logged to the run under ``pool/`` / ``generator/``.

    Records: ``{"trial_id", "role", "seed" (the value of seed_key), "run_id", "figures": {name: float}
    [, "params"]}``, written atomically after each finished job, so a killed study redoes only the
    jobs that had not finished.
    """
    import ray

    out = Path(folder) / CONFIRM_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    done: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    have = {(d["trial_id"], d["seed"]) for d in done}
    todo = [(p, s) for p in points for s in seeds if (p["trial_id"], s) not in have]
    if not todo:
        return done
    echo(
        f"confirming {len(points)} point(s) with {len(seeds)} new {unit}(s) each: {len(todo)} job(s) "
        f"({len(points) * len(seeds) - len(todo)} already done)"
    )
    task = ray.remote(num_cpus=resources.get("CPU", 1.0), num_gpus=resources.get("GPU", 0.0))(train or _train)
    pending = {task.remote({**p["config"], seed_key: s}, inputs): (p, s) for p, s in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        point, seed = pending.pop(ready[0])
        reports = ray.get(ready[0])
        extra = dict(extra_params(point, seed)) if extra_params else {}
        done.append(_log_job(parent, point, seed, reports, extra, tags, pool_fingerprints, seed_key))
        atomic_write_json(path, done)
    return done


def _log_job(
    parent,
    point: dict[str, Any],
    seed: int,
    reports: list[dict[str, Any]],
    extra: dict[str, Any],
    tags: Mapping[str, str],
    pool_fingerprints: Mapping[str, str],
    seed_key: str,
) -> dict[str, Any]:
    """One finished confirmation job as a child run of ``parent`` (params, every report's figures, the last
    report's preview / variant file); returns its record for ``results.json``."""
    from fairskin.tune.mlflow_callback import flatten_trial_config, trial_provenance

    label = "seed" if seed_key == "seed" else seed_key
    run = parent.child(
        f"confirm-{point['trial_id']}-{label}{seed}",
        tags={
            **tags,
            "fairskin.kind": "confirm",
            "fairskin.confirms": point["trial_id"],
            "fairskin.role": point["role"],
            "fairskin.mode": str(point["config"].get("mode", "")),
            **trial_provenance(point["config"], pool_fingerprints, tags),
        },
    )
    run.log_params(
        {
            **flatten_trial_config(point["config"]),
            f"trial.{seed_key}": seed,
            **{f"confirm.{k}": v for k, v in extra.items()},
        }
    )
    for epoch, figures in enumerate(reports, start=1):
        run.log_metrics({k: v for k, v in figures.items() if isinstance(v, (int, float))}, step=epoch)
    for key, artifact_dir in (("preview", "pool"), ("variant_file", "generator")):
        if reports and isinstance(reports[-1].get(key), str) and Path(reports[-1][key]).is_file():
            run.log_artifact(Path(reports[-1][key]), artifact_dir)
    run.end()
    record = {
        "trial_id": point["trial_id"],
        "role": point["role"],
        "seed": seed,
        "run_id": run.run_id,
        "figures": {k: float(v) for k, v in reports[-1].items() if isinstance(v, (int, float))},
    }
    if extra:
        record["params"] = extra
    return record


def confirmation_table(
    records: list[dict[str, Any]], trials: pd.DataFrame, metrics: Sequence[str], level: float = 0.95
) -> pd.DataFrame:
    """One row per confirmed point: its search-time value of each objective, and the confirmed
    validation and test figures (mean, low, high over the confirmation seeds).

    Columns: ``trial_id``, ``role``, ``seeds``, ``<metric>_search``, ``<metric>`` / ``_low`` / ``_high``
    (validation), and the same for ``test_<metric without val_>``."""
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(
        [{"trial_id": r["trial_id"], "role": r["role"], "seed": r["seed"], **r["figures"]} for r in records]
    )
    searched = trials.set_index("trial_id") if "trial_id" in trials else pd.DataFrame()
    rows = []
    for tid, part in frame.groupby("trial_id", sort=False):
        row: dict[str, Any] = {"trial_id": tid, "role": part["role"].iloc[0], "seeds": int(part["seed"].nunique())}
        for metric in metrics:
            test = "test_" + metric.removeprefix("val_")
            row[f"{metric}_search"] = (
                float(searched.loc[tid, metric]) if tid in searched.index and metric in searched else np.nan
            )
            for key in (metric, test):
                iv = t_interval(part[key].to_numpy(float) if key in part else np.array([]), level)
                row[key], row[f"{key}_low"], row[f"{key}_high"] = iv.mean, iv.low, iv.high
                row[f"{key}_note"] = iv.reason  # why there is no interval: no spread over the seeds, or n < 2
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


# --------------------------------------------------------------------------- generator studies

CONFIRMED_CSV = "confirmed.csv"  # confirm/: one row per (point, objective) of a generator study
CONFIRMED_PLOT = "confirmed_tradeoff.png"  # confirm/: worst-group skin tone vs disease fidelity, vanilla's band
REFERENCE = "vanilla"  # the generator every confirmed point is paired with
CONFIRM_SALT_BASE = 1000  # confirmation k (1, 2, ...) uses seed_salt CONFIRM_SALT_BASE + k

GENERATOR_COLUMNS = (
    "point",
    "role",
    "settings",
    "metric",
    "mode",
    "search",
    "mean",
    "low",
    "high",
    "n",
    "diff_vs_vanilla",
    "diff_low",
    "diff_high",
    "p",
    "p_holm",
    "vs_vanilla",
    "salts",
    "generator_seeds",
    "note",
)  # note: why an interval or p is missing (no spread, too few seeds)


def confirm_salts(repeat_seeds: Sequence[int], count: int) -> list[int]:
    """``count`` generator-seed salts for confirmations: ``CONFIRM_SALT_BASE + k`` (k = 1, 2, ...), skipping
    any whose seed (:func:`~fairskin.diffusion.variants.salted_seed` of ``repeat_seeds[0]``, the search's
    seed) equals a seed of ``repeat_seeds`` (the search's and the pipeline's repeats) or an earlier salt's.
    A salt, not a plain new seed, so that a confirmation's generator is a ``VariantSpec`` with that
    ``seed_salt``: the pipeline trains it under the same seed."""
    from fairskin.diffusion.variants import salted_seed

    taken, salts, salt = {int(s) for s in repeat_seeds}, [], CONFIRM_SALT_BASE
    while len(salts) < count:
        salt += 1
        seed = salted_seed(repeat_seeds[0], salt)
        if seed not in taken:
            taken.add(seed)
            salts.append(salt)
    return salts


def generator_points(
    points: list[dict[str, Any]],
    fixed: Mapping[str, Any],
    vanilla: Mapping[str, Any],
    seed: int,
    variant_name: Callable[[str], str],
) -> list[dict[str, Any]]:
    """Chosen trial points (:func:`chosen_points`) as confirmation jobs of a generator study, then the
    reference ``vanilla`` (role ``reference``). Each job's config is ``{"seed": worker seed, "generator":
    VariantSpec fields}``: the trial's generator (:func:`fairskin.tune.spaces.variant_from_trial` over the
    space's ``fixed`` settings; named ``variant_name(trial id)``, the study's
    :func:`fairskin.tune.generator.trial_variant_name`) or vanilla's own fields (``vanilla``: the registered
    spec as the config resolves it, with ``diffusion.learning_rate`` / ``max_steps``, as the pipeline
    trains it; the space's fixed settings do not apply to it)."""
    from fairskin.tune.spaces import variant_from_trial

    jobs = []
    for p in points:
        spec = variant_from_trial(p["config"], variant_name(p["trial_id"]), fixed)
        jobs.append(
            {
                "trial_id": p["trial_id"],
                "role": p["role"],
                "config": {
                    "seed": int(p["config"].get("seed", seed)),
                    "generator": spec.model_dump(mode="json", exclude_none=True),
                },
            }
        )
    spec = {**dict(vanilla), "name": REFERENCE}
    jobs.append({"trial_id": REFERENCE, "role": "reference", "config": {"seed": int(seed), "generator": spec}})
    return jobs


def _verdict(low: float, high: float, mode: str) -> str:
    """better / worse than vanilla when the difference's interval excludes 0 (the objective's way), else
    'within noise'; 'n/a' without an interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    if low > 0 or high < 0:
        up = low > 0
        return "better" if up == (mode == "max") else "worse"
    return "within noise"


def generator_confirmation_table(
    records: list[dict[str, Any]],
    trials: pd.DataFrame,
    metrics: Sequence[str],
    modes: Sequence[str],
    settings: Mapping[str, str],
    seed_of: Mapping[int, int],
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per (confirmed point, objective) of a generator study (columns ``GENERATOR_COLUMNS``).

    ``records``: :func:`run_confirmations` records (``seed`` = the salt), vanilla's under ``trial_id``
    ``"vanilla"``; ``trials``: the study's trials table (the search-time value: the trial's last report,
    at generator seed ``repeat_seeds[0]``; NaN for vanilla, which the search never ran); ``settings``:
    point -> a one-line description; ``seed_of``: salt -> generator seed.

    mean, low, high: the objective over the point's n confirmation seeds with its ``level`` t-interval
    (:func:`~fairskin.metrics.paired.t_interval`; the metric's own units: agreement and fidelity are
    fractions, FID variance is FID units squared); diff_vs_vanilla, diff_low, diff_high, p: point minus
    vanilla paired by salt (the same generator seed for both:
    :func:`~fairskin.metrics.paired.paired_difference`; p is the paired t-test's, NaN below 3 pairs) and
    vs_vanilla its reading (better / worse when the interval excludes 0 in the objective's direction,
    else within noise). p_holm: p Holm-adjusted over the confirmed points, per objective (the study picked
    them from many trials, and each is compared with vanilla: the family is every point on that
    objective). Vanilla's own rows have no difference (NaN, 'n/a')."""
    from fairskin.metrics.paired import holm

    if not records:
        return pd.DataFrame(columns=list(GENERATOR_COLUMNS))
    frame = pd.DataFrame(
        [{"point": r["trial_id"], "role": r["role"], "salt": int(r["seed"]), **r["figures"]} for r in records]
    )
    searched = trials.set_index("trial_id") if "trial_id" in trials else pd.DataFrame()
    base = frame[frame["point"] == REFERENCE].set_index("salt")
    order = [p for p in dict.fromkeys(frame["point"]) if p != REFERENCE] + ([REFERENCE] if len(base) else [])
    rows = []
    for point in order:
        part = frame[frame["point"] == point].set_index("salt").sort_index()
        for metric, mode in zip(metrics, modes):
            searched_value = (
                float(searched.loc[point, metric]) if point in searched.index and metric in searched else np.nan
            )
            rows.append(_generator_row(point, part, base, metric, mode, searched_value, settings, seed_of, level))
    table = pd.DataFrame(rows, columns=list(GENERATOR_COLUMNS))
    for metric in metrics:
        family = (table["metric"] == metric) & (table["point"] != REFERENCE)
        if family.any():
            table.loc[family, "p_holm"] = holm(table.loc[family, "p"].to_numpy(float))
    return table


def _generator_row(
    point: str,
    part: pd.DataFrame,
    base: pd.DataFrame,
    metric: str,
    mode: str,
    search: float,
    settings: Mapping[str, str],
    seed_of: Mapping[int, int],
    level: float,
) -> dict[str, Any]:
    """One (point, objective) row of :func:`generator_confirmation_table`: ``part`` and ``base`` (vanilla) are
    the point's and vanilla's records indexed by salt; ``search`` the search-time value; ``p_holm`` left NaN."""
    from fairskin.metrics.paired import paired_difference

    values = part[metric] if metric in part else pd.Series(np.nan, index=part.index)
    iv = t_interval(values.to_numpy(float), level)
    row = {
        "point": point,
        "role": part["role"].iloc[0],
        "settings": settings.get(point, ""),
        "metric": metric,
        "mode": mode,
        "search": search,
        "mean": iv.mean,
        "low": iv.low,
        "high": iv.high,
        "n": iv.n,
        "diff_vs_vanilla": np.nan,
        "diff_low": np.nan,
        "diff_high": np.nan,
        "p": np.nan,
        "p_holm": np.nan,
        "vs_vanilla": "n/a",
        "salts": " ".join(map(str, part.index)),
        "generator_seeds": " ".join(str(seed_of.get(int(s), "")) for s in part.index),
        "note": iv.reason,
    }
    if point != REFERENCE and len(base) and metric in base:
        diff = paired_difference(values, base[metric], level)
        row.update(
            diff_vs_vanilla=diff.mean,
            diff_low=diff.low,
            diff_high=diff.high,
            p=diff.p_t,
            vs_vanilla=_verdict(diff.low, diff.high, mode),
            note="; ".join(r for r in (iv.reason, diff.reason and f"difference: {diff.reason}") if r),
        )
    return row


def _bar(mean: float, low: float, high: float) -> np.ndarray:
    """Error-bar lengths (2, 1) of an interval around its mean: 0 where a bound is missing (n < 2)."""
    return np.maximum(np.nan_to_num([[mean - low], [high - mean]]), 0.0)


def plot_generator_confirmations(
    table: pd.DataFrame,
    path: Path,
    title: str,
    x_metric: str = "skin_tone_agreement_worst_group",
    y_metric: str = "disease_fidelity_worst_group",
) -> Path:
    """Left: each confirmed point's worst-group skin-tone agreement (x) and disease fidelity (y), confirmed
    means with their intervals as error bars, the search-time value as a cross, vanilla's intervals as
    shaded bands. Right, one axis per objective (their units differ): each point minus vanilla, paired by
    generator seed, with its interval, and 0."""
    from fairskin.metrics.plots import _pyplot

    plt = _pyplot()
    diffs = table[table["point"] != REFERENCE]
    objectives = list(dict.fromkeys(diffs["metric"])) or [None]
    fig = plt.figure(figsize=(12, max(4.8, 1.6 * len(objectives))))
    grid = fig.add_gridspec(len(objectives), 2)
    ax = fig.add_subplot(grid[:, 0])
    wide = {m: part.set_index("point") for m, part in table.groupby("metric", sort=False)}
    colors = {p: "k" if p == REFERENCE else f"C{i}" for i, p in enumerate(dict.fromkeys(table["point"]))}
    if x_metric in wide and y_metric in wide:
        xs, ys = wide[x_metric], wide[y_metric]
        if (
            REFERENCE in xs.index
            and np.isfinite(xs.loc[REFERENCE, ["low", "high"]].to_numpy(float)).all()
            and np.isfinite(ys.loc[REFERENCE, ["low", "high"]].to_numpy(float)).all()
        ):
            ax.axvspan(
                xs.loc[REFERENCE, "low"], xs.loc[REFERENCE, "high"], color="0.85", zorder=0, label="vanilla's interval"
            )
            ax.axhspan(ys.loc[REFERENCE, "low"], ys.loc[REFERENCE, "high"], color="0.85", zorder=0)
        for point in xs.index:
            x, y = xs.loc[point], ys.loc[point]
            xerr = _bar(x["mean"], x["low"], x["high"])
            yerr = _bar(y["mean"], y["low"], y["high"])
            color = colors[point]
            ax.errorbar(
                x["mean"],
                y["mean"],
                xerr=xerr,
                yerr=yerr,
                fmt="s" if point == REFERENCE else "o",
                capsize=3,
                color=color,
                label=f"{point} ({x['role']}), n={int(x['n'])}",
            )
            if np.isfinite(x["search"]) and np.isfinite(y["search"]):
                ax.plot(x["search"], y["search"], "x", color=color)
        ax.plot([], [], "x", color="0.3", label="search-time value (seed repeat_seeds[0])")
        ax.set_xlabel("skin-tone agreement, worst group (confirmed mean, 95% CI)")
        ax.set_ylabel("disease fidelity, worst group (confirmed mean, 95% CI)")
        ax.legend(fontsize=7)
    for i, metric in enumerate(objectives):  # one axis per objective: their units differ
        bx = fig.add_subplot(grid[i, 1])
        part = diffs[diffs["metric"] == metric]
        for y, (_, row) in enumerate(part.iterrows()):
            mean = row["diff_vs_vanilla"]
            err = _bar(mean, row["diff_low"], row["diff_high"])
            bx.errorbar(mean, y, xerr=err, fmt="o", capsize=3, color=colors[row["point"]])
        bx.axvline(0, color="k", lw=0.8)
        bx.set_yticks(range(len(part)), list(part["point"]), fontsize=7)
        bx.set_ylim(-0.5, len(part) - 0.5)
        bx.invert_yaxis()
        if metric is not None:
            bx.set_title(f"{metric} ({part['mode'].iloc[0]}): point - vanilla, paired by seed (95% CI)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    temp = Path(path).with_name(f".{Path(path).stem}.tmp.png")
    fig.savefig(temp, dpi=110)  # then renamed: a killed study never leaves half a figure
    plt.close(fig)
    temp.replace(path)
    return Path(path)
