"""Search efficiency (by replay) and Tune's overhead, measured side by side in one run on `demo`.

    python benchmarks/search.py [--quick] [--seeds 5] [--tune-trials N] [--runs-root runs/bench-search]

(b) Overhead: N trials of the ``ethnic_ratio`` space through :func:`fairskin.tune.run_study`
    (Tuner + OptunaSearch + the MLflow callback, data decoded once and put in the object
    store) against the same N trainings (the same proportions) as plain Ray tasks with the
    same resources and concurrency, outside Tune. Both timings include decoding the data.
    The study runs without confirmations (``tune.confirm_seeds=0``; the demo preset's 3 would
    re-train the best and Pareto trials 3 times each, trainings the other side does not do).
    Printed beside the ratio: the study's phases (``StudyResult.timings``: Ray join, decode,
    Tune's start, until the first trial's actor is up, the trials, the tail, the report) and
    the outside side's decode and trainings. Target: Tune / outside <= 1.1.
(a) Search efficiency by replay: every point of a fixed grid over the ``ethnic_ratio``
    simplex (step 1/n, inside the pool's bounds) is trained once, deterministically
    (seed 0, one thread per training), recording its per-epoch validation curve. Then
    Ray's own ``OptunaSearch`` (seeded TPE, or Optuna's random sampler) and ``ASHAScheduler``
    objects are driven against that table exactly as Tune drives them with one trial at a
    time (a suggestion is snapped to the nearest grid point; an ASHA stop hands the
    searcher the trial's last result). Reported: the mean trial-epochs each arm needs until
    a trial that ran every epoch ends within 1% of the grid's best final value, over
    ``--seeds`` seeds, against the grid's total trial-epochs. Target: <= 1/3.

The objective is ``val_essp_fairseg`` (FairSeg's ESSP on the validation split, max). The
pool is the procedural stand-in (``fairskin.tune.inputs.standin_pool``): the benchmark
measures the search machinery, not the generator. ``--quick`` shrinks data and epochs
(32 px, a quarter of the demo images, 4 epochs, grid step 1/5) to run in about a minute.

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fairskin.config import build_config  # noqa: E402
from fairskin.pipeline import run_pipeline  # noqa: E402
from fairskin.runtime import init_ray  # noqa: E402
from fairskin.tune.inputs import standin_pool  # noqa: E402
from fairskin.tune.spaces import DefineByRun, Scheduler, load_space  # noqa: E402
from fairskin.tune.study import PHASES, check_study, max_concurrency, run_study  # noqa: E402
from fairskin.tune.trainable import put_inputs, run_trial  # noqa: E402

METRIC = "val_essp_fairseg"
VARIANT = "standin"


# --------------------------------------------------------------------------- training outside Tune


def _train_task(config, real, pool, space, classifier):
    """One training as a plain Ray task (same code path as a Tune trial, minus Tune)."""
    import warnings

    from fairskin.classify.train import ClassifierData
    from fairskin.runtime import configure_worker

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    configure_worker(int(config["seed"]))
    history: list[dict] = []
    run_trial(config, ClassifierData(*real, pool=pool), space, classifier, history.append)
    return history


def run_outside(configs, inputs, concurrency: int, cpus: float) -> list[list[dict]]:
    """Train every config as a Ray task, at most ``concurrency`` at once; histories in input order."""
    import ray

    task = ray.remote(num_cpus=cpus)(_train_task)
    pending, results, queue = {}, {}, list(enumerate(configs))
    while queue or pending:
        while queue and len(pending) < concurrency:
            i, cfg = queue.pop(0)
            ref = task.remote(cfg, inputs.real, inputs.pools[cfg["variant"]], inputs.space, inputs.classifier)
            pending[ref] = i
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
    return [results[i] for i in range(len(configs))]


# --------------------------------------------------------------------------- the grid and the replay


def simplex_grid(n: int, lows, highs) -> list[tuple[float, ...]]:
    """Points (i, j, k) / n on the 3-simplex inside [lows, highs]."""
    points = []
    for i, j in itertools.product(range(n + 1), repeat=2):
        k = n - i - j
        if k < 0:
            continue
        p = (i / n, j / n, k / n)
        if all(lo - 1e-9 <= x <= hi + 1e-9 for x, lo, hi in zip(p, lows, highs)):
            points.append(p)
    return points


def replay(
    curves: np.ndarray,
    points: np.ndarray,
    groups,
    space,
    arm: str,
    seed: int,
    epochs: int,
    max_trials: int,
    target: float,
) -> dict:
    """Drive OptunaSearch (+ ASHA) against the table; trial-epochs until a full trial reaches ``target``."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher_kind, use_asha = arm.split("+")[0], arm.endswith("+asha")
    if searcher_kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=space.startup_trials or 10)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    searcher = OptunaSearch(space=DefineByRun(space), metric=METRIC, mode="max", sampler=sampler)
    scheduler = None
    if use_asha:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=METRIC,
            mode="max",
            max_t=epochs,
            grace_period=space.scheduler.grace_period,
            reduction_factor=space.scheduler.reduction_factor,
        )
    used = 0
    for t in range(max_trials):
        tid = f"t{t:05d}"
        config = searcher.suggest(tid)
        p = np.array([config["proportions"][g] for g in groups])
        row = int(np.argmin(((points - p) ** 2).sum(1)))
        trial = SimpleNamespace(trial_id=tid)
        if scheduler:
            scheduler.on_trial_add(None, trial)
        result = {}
        for e in range(1, epochs + 1):
            used += 1
            result = {"training_iteration": e, METRIC: float(curves[row, e - 1])}
            decision = scheduler.on_trial_result(None, trial, result) if scheduler else TrialScheduler.CONTINUE
            if decision == TrialScheduler.STOP:
                break
            searcher.on_trial_result(tid, result)
        searcher.on_trial_complete(tid, result)
        if scheduler:
            scheduler.on_trial_complete(None, trial, result)
        if result["training_iteration"] == epochs and result[METRIC] >= target:
            return {"trial_epochs": used, "trials": t + 1, "reached": True}
    return {"trial_epochs": used, "trials": max_trials, "reached": False}


def _measure(args, config, spec, pools, shards, resolved, points, groups, n_tune, summary) -> np.ndarray:
    """(b) Tune vs outside Tune, then (a) train the grid; returns the curves (G, epochs)."""
    epochs = config.classifier.epochs
    cluster = init_ray(config)
    concurrency = max_concurrency(config, cluster)
    cpus = config.tune.cpus_per_trial
    print(
        f"demo{' (quick)' if args.quick else ''}: {epochs} epochs, concurrency {concurrency} x {cpus} CPU, "
        f"ethnic_ratio total {resolved.dim('proportions').total}",
        flush=True,
    )

    # (b) N trials through Tune vs the same N trainings outside Tune.
    t0 = time.perf_counter()
    study = run_study(
        config,
        spec,
        pools,
        shards,
        variant=VARIANT,
        trials=n_tune,
        name=f"bench-overhead-{int(time.time())}",
        echo=lambda *_: None,
    )
    tune_seconds = time.perf_counter() - t0
    phases = {k: round(float(study.timings.get(k, 0.0)), 2) for k in PHASES}
    same = [
        {
            "proportions": {g: float(r[f"proportions.{g}"]) for g in groups},
            "mode": r["mode"],
            "variant": r["variant"],
            "seed": int(r["seed"]),
        }
        for _, r in study.trials.iterrows()
    ]
    t0 = time.perf_counter()
    inputs = put_inputs(shards, pools, resolved, config.classifier)
    outside_decode = time.perf_counter() - t0
    run_outside(same, inputs, concurrency, cpus)
    outside_seconds = time.perf_counter() - t0
    outside_trainings = outside_seconds - outside_decode
    ratio = tune_seconds / outside_seconds
    print(
        f"(b) {n_tune} trials: Tune {tune_seconds:.1f} s, outside Tune {outside_seconds:.1f} s, "
        f"ratio {ratio:.3f} (target <= 1.1)",
        flush=True,
    )
    print(f"    outside Tune: decode + put {outside_decode:.2f} s, trainings {outside_trainings:.2f} s", flush=True)
    print(
        "    Tune (run_study's phases; fit.trials = first trial start to last trial end): "
        + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        + f"; unaccounted {tune_seconds - sum(phases.values()):.2f} s",
        flush=True,
    )
    print(
        f"    Tune beyond its trials' span: {tune_seconds - phases['fit.trials']:.1f} s, of which until the first "
        f"trial's actor is up {phases['fit.tune_start'] + phases['fit.to_first_trial']:.1f} s (the outside "
        f"side's worker start-up falls inside its trainings)",
        flush=True,
    )

    # (a) the grid, trained once.
    configs = [
        {
            "proportions": dict(zip(groups, p)),
            "mode": resolved.fixed["mode"],
            "variant": VARIANT,
            "seed": resolved.fixed["seed"],
        }
        for p in points
    ]
    t0 = time.perf_counter()
    histories = run_outside(configs, inputs, concurrency, cpus)
    grid_seconds = time.perf_counter() - t0
    curves = np.array([[h[METRIC] for h in hist] for hist in histories])  # (G, epochs)
    table = pd.DataFrame(
        [
            {
                "point": i,
                **{f"p_{g}": x for g, x in zip(groups, p)},
                "epoch": e + 1,
                METRIC: curves[i, e],
                "val_accuracy": histories[i][e]["val_accuracy"],
            }
            for i, p in enumerate(points)
            for e in range(epochs)
        ]
    )
    out = Path(config.runtime.runs_root) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    table.to_csv(out / f"grid{suffix}.csv", index=False)
    print(
        f"(a) grid of {len(points)} points x {epochs} epochs trained in {grid_seconds:.1f} s "
        f"({out / f'grid{suffix}.csv'})",
        flush=True,
    )
    summary.update(
        {
            "concurrency": concurrency,
            "cpus_per_trial": cpus,
            "tune_trials": n_tune,
            "tune_seconds": round(tune_seconds, 2),
            "outside_seconds": round(outside_seconds, 2),
            "tune_overhead_ratio": round(ratio, 3),
            "grid_seconds": round(grid_seconds, 1),
            "outside_decode_seconds": round(outside_decode, 2),
            "outside_training_seconds": round(outside_trainings, 2),
            **{f"tune_{k.replace('.', '_')}_seconds": v for k, v in phases.items()},
        }
    )
    return curves


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data, 4 epochs, grid step 1/5 (about a minute)")
    parser.add_argument("--seeds", type=int, default=5, help="replay seeds per arm (>= 5)")
    parser.add_argument("--grid", type=int, default=None, help="grid step 1/n (default 8; quick 5)")
    parser.add_argument("--tune-trials", type=int, default=None, help="N for (b) (default 6; quick 4)")
    parser.add_argument("--runs-root", default="runs/bench-search")
    parser.add_argument(
        "--table",
        default=None,
        help="replay only, against a grid CSV written by an earlier run "
        "(same --quick setting); skips (b) and the training",
    )
    args = parser.parse_args()

    # No confirmations: (b) compares N trials with N trainings (see the docstring).
    overrides = [
        f"runtime.runs_root={Path(args.runs_root).resolve()}",
        "runtime.progress=false",
        "tune.confirm_seeds=0",
    ]
    if args.quick:
        overrides += [
            "data.image_size=32",
            "data.synthetic_scale=0.25",
            "classifier.image_size=32",
            "classifier.epochs=4",
            "classifier.bootstrap_samples=50",
        ]
    config = build_config("demo", overrides=overrides)
    n_grid = args.grid or (5 if args.quick else 8)
    n_tune = args.tune_trials or (4 if args.quick else 6)
    epochs = config.classifier.epochs
    started = time.time()

    shards = run_pipeline(config, stages=["prepare"], echo=lambda *_: None).results["prepare"].path / "shards"
    pools = {VARIANT: standin_pool(config, echo=lambda *_: None)}
    spec = load_space("ethnic_ratio")
    resolved = check_study(config, spec, pools, shards, variant=VARIANT)
    groups = resolved.dim("proportions").groups
    d = resolved.dim("proportions")
    points = simplex_grid(n_grid, d.lows, d.highs)
    summary: dict = {"preset": "demo", "quick": bool(args.quick), "epochs": epochs}
    if args.table:
        table = pd.read_csv(args.table)
        curves = table.pivot(index="point", columns="epoch", values=METRIC).sort_index().to_numpy()
        points = [tuple(r) for r in table.groupby("point")[[f"p_{g}" for g in groups]].first().sort_index().to_numpy()]
        print(f"replaying {args.table}: {len(points)} points x {curves.shape[1]} epochs", flush=True)
    else:
        curves = _measure(args, config, spec, pools, shards, resolved, points, groups, n_tune, summary)
    epochs = curves.shape[1]
    # Replay: Ray's OptunaSearch and ASHAScheduler against the table.
    best = float(curves[:, -1].max())
    total = len(points) * epochs
    grace = max(1, epochs // 4)
    space = replace(
        resolved,
        metrics=(METRIC,),
        modes=("max",),
        scheduler=Scheduler(kind="asha", grace_period=grace, reduction_factor=3),
    )
    pts = np.array(points)
    summary.update(
        {"grid_points": len(points), "grid_trial_epochs": total, "grid_best": round(best, 4), "seeds": args.seeds}
    )
    for tol in (0.01, 0.10):  # 1% is the target's criterion; 10% for context
        target = best * (1 - tol)
        near = int((curves[:, -1] >= target).sum())
        # A blind walk through the grid without replacement, every trial to the end: E (G + 1) / (K + 1).
        perm = epochs * (len(points) + 1) / (near + 1) / total
        print(
            f"(a) within {tol:.0%} of the best final {METRIC} ({best:.4f}): {near} of {len(points)} grid points; "
            f"a blind walk through the grid needs {perm:.3f} of it",
            flush=True,
        )
        tag = f"{round(tol * 100)}pct"
        summary[f"grid_points_within_{tag}"] = near
        summary[f"grid_permutation_fraction_{tag}"] = round(perm, 3)
        for arm in ("tpe+asha", "tpe", "random"):
            runs = [
                replay(curves, pts, groups, space, arm, seed, epochs, 3 * len(points), target)
                for seed in range(args.seeds)
            ]
            used = [r["trial_epochs"] for r in runs]
            reached = sum(r["reached"] for r in runs)
            print(
                f"    {arm:9s}: mean {np.mean(used):6.1f} trial-epochs = {np.mean(used) / total:.3f} of the grid "
                f"(reached in {reached}/{args.seeds} seeds, else stopped at 3x the grid; per seed {used})",
                flush=True,
            )
            key = arm.replace("+", "_")
            summary[f"{key}_fraction_{tag}"] = round(float(np.mean(used) / total), 3)
            summary[f"{key}_reached_{tag}"] = reached
    summary["seconds"] = round(time.time() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
