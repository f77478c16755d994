"""Repeats until conclusive: the pipeline run look by look, adding batches of generator repeats until every primary
verdict is better, worse or equivalent (``report.until_conclusive``).

    looks n_1 < n_2 < ... < n_J = diffusion.max_repeats      n_1 = max(3, len(diffusion.repeat_seeds))
    look j: run_pipeline(config with the first n_j repeat seeds) -> repeats.csv -> sequential verdicts -> stop?

The repeat seeds continue the configured list (max + 1, max + 2, ...), so a rerun makes the same generators. Each
look is an ordinary pipeline run: its finetune and generate stages link the generators and pools the earlier
looks made (:mod:`fairskin.pipeline.store`) and fit and sample only the new batch; the tune stage trains only the
new batch's classifier trials and replays the others' (:mod:`fairskin.tune.trial_memo`), the evaluate stage
scores only the new pools (:func:`fairskin.pipeline.store.evaluation_key`); the report runs again over all
repeats. After each look every compared variant that is not a control gets the
group-sequential verdicts of its primary endpoints (:func:`fairskin.metrics.sequential.sequential_verdicts`: alpha
/ m per endpoint spent over the looks with O'Brien-Fleming-type boundaries, a verdict kept from the look that
decided it). The run stops when every such verdict is decided, at the cap, or when the next batch would pass
``report.budget_hours``. The controls are judged by the last look's report, as in a fixed design.

A kill loses at most the look in progress: a rerun replays the finished looks (their stages are skipped, their
verdicts recomputed from the same data) and goes on. Everything is logged to one MLflow run
(``until-conclusive-<preset>``) with each look's pipeline run nested under it, per-look metrics
(``<variant>.<endpoint>.t`` and ``.verdict_code`` at step n) and ``sequential_looks.csv`` / ``.md`` / ``.png``;
the same files are written to ``<runs root>/conclusive/<preset>-<config hash>/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.pipeline.runner import PipelineRun, run_pipeline

CONCLUSIVE_DIR = "conclusive"
LOOKS_FILE = "sequential_looks.csv"
RUN_RECORD = "mlflow_run.json"
# MLflow metrics take numbers: a verdict as a code (the sign says which way a decided difference went).
VERDICT_CODES = {"better": 1, "worse": -1, "equivalent": 2, "inconclusive": 0, "untestable": -9}


@dataclass
class Look:
    """One look: its repeats, the verdicts of every compared method's primary endpoints, and whether to stop."""

    n: int
    seeds: list[int]
    verdicts: pd.DataFrame  # "variant" then fairskin.metrics.sequential.SEQUENTIAL_COLUMNS
    stop: bool
    pipeline_run: str
    report: Path
    seconds: float


@dataclass
class ConclusiveRun:
    """What a run until conclusive did: its looks, why it stopped, its MLflow run and folder."""

    looks: list[Look] = field(default_factory=list)
    reason: str = ""  # "conclusive", "cap" or "budget"
    run_id: str = ""
    folder: Path | None = None
    last_pipeline: PipelineRun | None = None  # the last look's pipeline run (its stages' results)


def repeat_seeds(config: FairSkinConfig) -> list[int]:
    """The seeds of every repeat the run may make: ``diffusion.repeat_seeds`` continued with max + 1, max + 2, ...
    up to ``diffusion.max_repeats`` seeds."""
    d = config.diffusion
    seeds = list(d.repeat_seeds)
    while len(seeds) < int(d.max_repeats):
        seeds.append(max(seeds) + 1)
    return seeds


def design(config: FairSkinConfig) -> list[int]:
    """The looks: repeat counts n_1 = max(3, len(repeat_seeds)), then ``diffusion.repeat_batch`` more at a time,
    the last one ``diffusion.max_repeats`` (:func:`fairskin.metrics.sequential.looks`)."""
    from fairskin.metrics.sequential import looks

    d = config.diffusion
    return looks(max(3, len(d.repeat_seeds)), d.repeat_batch, int(d.max_repeats))


def look_config(config: FairSkinConfig, n: int) -> FairSkinConfig:
    """``config`` with the first ``n`` repeat seeds of :func:`repeat_seeds`."""
    return config.model_copy(
        update={"diffusion": config.diffusion.model_copy(update={"repeat_seeds": repeat_seeds(config)[:n]})}
    )


def compared_variants(config: FairSkinConfig) -> list[str]:
    """The variants whose primary verdicts decide when to stop: every one but the baseline and the controls."""
    from fairskin.diffusion.variants import is_control

    r = config.report
    return [v for v in config.diffusion.variants if v != r.baseline and not is_control(v)]


def look_verdicts(units: pd.DataFrame, config: FairSkinConfig, n: int) -> tuple[pd.DataFrame, bool]:
    """The sequential verdicts at the look of ``n`` repeats, from a report's ``repeats.csv`` frame ``units``.

    Each compared variant (:func:`compared_variants`) is one family over the declared primary endpoints, its
    paired differences d_r = variant_r - baseline_r (metric units) in repeat order 0..n-1; a repeat without a
    value gives NaN (untestable). Returns (one row per variant and endpoint: ``variant`` then
    ``SEQUENTIAL_COLUMNS``, stop: every family decided, or n is the last look)."""
    from fairskin.metrics.endpoints import DIRECTIONS
    from fairskin.metrics.sequential import sequential_verdicts
    from fairskin.report.differences import primary_values

    declaration = config.declaration()
    r, looks_ = config.report, design(config)
    frames, stops = [], []
    for variant in compared_variants(config):
        differences = {}
        for endpoint in declaration.primary:
            treated = primary_values(units, variant, endpoint, declaration.mode).reindex(range(n))
            base = primary_values(units, r.baseline, endpoint, declaration.mode).reindex(range(n))
            differences[endpoint] = (treated - base).to_numpy(float)
        frame, stop = sequential_verdicts(
            differences,
            {e: DIRECTIONS[e] for e in declaration.primary},
            declaration.margins,
            {e: declaration.resolution(e) for e in declaration.primary},
            alpha=declaration.alpha,
            n_max=looks_[-1],
            looks=looks_,
            power=declaration.power,
        )
        frames.append(frame.assign(variant=variant))
        stops.append(stop)
    out = pd.concat(frames, ignore_index=True)
    return out[["variant", *[c for c in out.columns if c != "variant"]]], all(stops)


def run_until_conclusive(
    config: FairSkinConfig, echo: Callable[[str], None] = print, force: Sequence[str] = ()
) -> ConclusiveRun:
    """Run the pipeline look by look (module doc) and return the looks; ``force`` applies to the first look only
    (the later ones then rebuild on what it redid)."""
    from fairskin.tracking import Tracker

    looks_ = design(config)
    folder = conclusive_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    tracker = Tracker.from_config(config)
    handle = _conclusive_run(tracker, config, folder, looks_)
    outcome = ConclusiveRun(run_id=handle.run_id, folder=folder)
    logged = set(looks_of(folder)["n"]) if (folder / LOOKS_FILE).is_file() else set()  # a rerun replays these
    started = time.time()
    status = "FAILED"
    try:
        for j, n in enumerate(looks_):
            echo(f"[until conclusive] look {j + 1}/{len(looks_)}: {n} repeats")
            look_started = time.time()
            run = run_pipeline(
                look_config(config, n),
                force=force if j == 0 else (),
                echo=echo,
                parent_run=handle.run_id or None,
                tags={"fairskin.look": str(n), "fairskin.until_conclusive": handle.run_id},
            )
            outcome.last_pipeline = run
            report = run.results["report"].path
            verdicts, stop = look_verdicts(pd.read_csv(report / "repeats.csv"), config, n)
            look = Look(
                n, repeat_seeds(config)[:n], verdicts, stop, run.parent_run_id, report, time.time() - look_started
            )
            outcome.looks.append(look)
            _record_look(handle, folder, outcome.looks, looks_, log_metrics=n not in logged)
            for line in look_lines(look, j, len(looks_)):
                echo(line)
            if stop:
                outcome.reason = "cap" if n == looks_[-1] and not _all_decided(verdicts) else "conclusive"
                break
            if _over_budget(config, started, outcome.looks, looks_[j + 1] - n):
                outcome.reason = "budget"
                break
        handle.set_tags({"fairskin.stopped": outcome.reason, "fairskin.looks": str(len(outcome.looks))})
        handle.log_metrics({"repeats_used": outcome.looks[-1].n, "looks": len(outcome.looks)})
        echo(f"[until conclusive] stopped ({outcome.reason}) at {outcome.looks[-1].n} repeats: {folder / LOOKS_FILE}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(handle, status)
    return outcome


def conclusive_folder(config: FairSkinConfig) -> Path:
    """``<runs root>/conclusive/<preset>-<hash>``: the hash of the configuration (as the report's declaration
    stamps it), so a rerun of the same command finds its looks and MLflow run."""
    return config.runtime.runs_root / CONCLUSIVE_DIR / f"{config.preset}-{config.declaration().config_hash[:12]}"


def _conclusive_run(tracker, config: FairSkinConfig, folder: Path, looks_: Sequence[int]):
    """The MLflow run of this study: the one recorded in ``folder`` (a rerun after a kill), else a new one."""
    from fairskin.io import atomic_write_json

    record = folder / RUN_RECORD
    if tracker.client is not None and record.is_file():
        try:
            return tracker.resume(json.loads(record.read_text())["run_id"])
        except Exception:  # another tracking store, or the run was deleted: start a new one
            pass
    handle = tracker.start(
        f"until-conclusive-{config.preset}",
        tags={"fairskin.kind": "until_conclusive", "fairskin.preset": config.preset},
    )
    handle.log_config(config)
    handle.log_params({"looks": ",".join(map(str, looks_)), "compared": ",".join(compared_variants(config))})
    if handle.run_id:
        atomic_write_json(record, {"run_id": handle.run_id})
    return handle


def _all_decided(verdicts: pd.DataFrame) -> bool:
    return bool(verdicts["verdict"].isin(["better", "worse", "equivalent"]).all())


def _over_budget(config: FairSkinConfig, started: float, done: Sequence[Look], batch: int) -> bool:
    """Whether the next ``batch`` repeats would pass ``report.budget_hours``: the wall time so far plus the batch at
    the wall seconds per new repeat of the looks so far (the first look's repeats included)."""
    budget = config.report.budget_hours
    if budget is None:
        return False
    elapsed = time.time() - started
    return elapsed + elapsed / done[-1].n * batch > budget * 3600


def look_lines(look: Look, index: int, total: int) -> list[str]:
    """The console lines of a look: one per compared variant and endpoint, then whether it goes on."""
    lines = []
    for row in look.verdicts.itertuples():
        decided = f" (decided at {row.decided_at})" if not pd.isna(row.decided_at) else ""
        lines.append(
            f"  {row.variant} {row.endpoint}: {row.verdict}{decided}; d = {row.mean_diff:+.4g} "
            f"[{row.low:+.4g}, {row.high:+.4g}], |t| = {abs(row.t):.2f} vs {row.boundary:.2f}, "
            f"TOST {row.t_tost:.2f} vs {row.equivalence_boundary:.2f}, MDE {row.mde:.3g}"
        )
    lines.append(f"[until conclusive] look {index + 1}/{total} at {look.n} repeats: {'stop' if look.stop else 'go on'}")
    return lines


def _record_look(handle, folder: Path, done: Sequence[Look], looks_: Sequence[int], log_metrics: bool) -> None:
    """Every look so far into ``folder`` (csv, markdown, the t statistics against their boundaries) and MLflow
    (the files as artifacts; the last look's metrics at step n unless ``log_metrics`` is False: a replayed look
    logged them before the kill)."""
    from fairskin.io import atomic_write_text
    from fairskin.metrics.plots import plot_sequential_looks

    look = done[-1]
    metrics = {}
    for row in look.verdicts.itertuples():
        stem = f"{row.variant}.{row.endpoint}"
        metrics[f"{stem}.verdict_code"] = VERDICT_CODES[row.verdict]
        for name in ("t", "mean_diff", "t_tost"):
            if not pd.isna(getattr(row, name)):
                metrics[f"{stem}.{name}"] = float(getattr(row, name))
    if log_metrics:
        handle.log_metrics({**metrics, "repeats": look.n, "look_seconds": look.seconds}, step=look.n)
    table = pd.concat([lk.verdicts.assign(pipeline_run=lk.pipeline_run) for lk in done], ignore_index=True)
    atomic_write_text(folder / LOOKS_FILE, table.to_csv(index=False))
    atomic_write_text(folder / "sequential_looks.md", looks_markdown(done, looks_))
    figure = plot_sequential_looks(table, looks_, folder / "sequential_looks.png")
    for path in (folder / LOOKS_FILE, folder / "sequential_looks.md", figure):
        handle.log_artifact(path)


def looks_markdown(done: Sequence[Look], looks_: Sequence[int]) -> str:
    """The looks as a markdown table: per look, each compared variant's verdict on each endpoint."""
    lines = [
        f"# Repeats until conclusive: looks at {', '.join(map(str, looks_))} repeats",
        "",
        "| repeats | variant | endpoint | verdict | d | interval | \\|t\\| / boundary | TOST / boundary | MDE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for look in done:
        for row in look.verdicts.itertuples():
            lines.append(
                f"| {look.n} | {row.variant} | {row.endpoint} | {row.verdict} | {row.mean_diff:+.4g} | "
                f"[{row.low:+.4g}, {row.high:+.4g}] | {abs(row.t):.2f} / {row.boundary:.2f} | "
                f"{row.t_tost:.2f} / {row.equivalence_boundary:.2f} | {row.mde:.3g} |"
            )
    return "\n".join(lines) + "\n"


def looks_of(folder: Path) -> pd.DataFrame:
    """The recorded looks of a run until conclusive (``sequential_looks.csv`` in its folder)."""
    return pd.read_csv(Path(folder) / LOOKS_FILE)
