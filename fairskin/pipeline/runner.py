"""The runner: the plan of stages, the runs-root lock, MLflow's parent and child runs, keys computed once.

    prepare -> vae -> base | control_base | reference | judge -> finetune -> generate -> evaluate -> tune -> report

One MLflow parent run per invocation, one child run per stage (also for skipped stages, tagged so). Stages run
in this order, one at a time, except a ``background`` stage (``base``: its work is a Ray task), which runs while
the runner goes on to the next stages that do not take it as input (``base | ...``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fairskin.pipeline.stages  # noqa: F401  (registers every stage, in run order)
from fairskin.config import FairSkinConfig, dump_config, flatten
from fairskin.lock import holding_runs_root
from fairskin.pipeline.keyed import StageResult, is_finished, run_stage, stage_dir, stage_key
from fairskin.pipeline.stage import STAGES, Stage, StageContext, external_fingerprints
from fairskin.provenance import TAG_PIPELINE, TAG_STAGE_KEY
from fairskin.tracking import Tracker
from fairskin.versioning import record_environment


@dataclass
class PipelineRun:
    """What one invocation did: each stage's result and the tracking handles."""

    results: dict[str, StageResult] = field(default_factory=dict)
    parent_run_id: str = ""
    tracker: Tracker | None = None


def _ordered(names: Sequence[str] | None, config: FairSkinConfig) -> list[Stage]:
    chosen = list(STAGES) if not names else list(names)
    unknown = [n for n in chosen if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    order = list(STAGES)
    stages = [STAGES[n] for n in sorted(chosen, key=order.index)]
    return [s for s in stages if s.presets is None or config.preset in s.presets]


def _with_inputs(stages: list[Stage]) -> list[Stage]:
    """Add every stage the chosen ones depend on, in pipeline order."""
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name in needed:
            return
        needed.add(name)
        for dep in STAGES[name].inputs:
            visit(dep)

    for s in stages:
        visit(s.name)
    return [STAGES[n] for n in STAGES if n in needed]


def forced_stages(plan: Sequence[Stage], force: Sequence[str]) -> set[str]:
    """The stages of ``plan`` to recompute: those named in ``force`` and every stage of the plan that
    depends on one of them (directly or through others); ``"all"``: every stage."""
    if "all" in force:
        return {s.name for s in plan}
    forced = set(force)
    for stage in plan:  # pipeline order: inputs come first
        if forced.intersection(stage.inputs):
            forced.add(stage.name)
    return forced & {s.name for s in plan}


def run_in_order(plan: Sequence[Stage], run_one: Callable[[Stage], None]) -> None:
    """Call ``run_one(stage)`` for each stage of ``plan`` (pipeline order). A ``background`` stage runs on a
    thread while the next stages go on; a stage that takes it as input waits for it first. When anything
    fails, the stages still running are waited for (what they finish is kept, so a rerun skips it) and the
    first error is raised. On an interrupt (Ctrl-C, SIGTERM) they are told to stop instead
    (:data:`fairskin.runtime.background_stop`), and their unfinished work is dropped."""
    from fairskin.runtime import background_stop

    background_stop.clear()
    running: dict[str, Any] = {}
    with ThreadPoolExecutor(
        max_workers=max(1, sum(s.background for s in plan)), thread_name_prefix="fairskin-stage"
    ) as pool:
        try:
            for stage in plan:
                for name in stage.inputs:
                    if name in running:
                        running.pop(name).result()
                if stage.background:
                    running[stage.name] = pool.submit(run_one, stage)
                else:
                    run_one(stage)
        except (KeyboardInterrupt, SystemExit):
            background_stop.set()
            raise
        finally:
            errors = []
            for future in running.values():
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001 - the main path's error, if any, comes first
                    errors.append(exc)
        if errors:
            raise errors[0]


def _run_tracked(
    stage: Stage, config: FairSkinConfig, inputs: dict, tracker: Tracker, parent, tags: dict, force: bool
) -> tuple[StageResult, float]:
    """Run ``stage`` (or skip it when its folder is done) in its MLflow child run of ``parent``: its key computed
    once and handed to the body with its resume folder, its params, skip tag, seconds and log, and the provenance
    tags it gives every later run. Returns (its result, wall seconds)."""
    external = external_fingerprints(stage, config)
    reads = stage.reads_for(config)
    key = stage_key(stage.name, config, reads, inputs, stage.version, external)
    parent.set_tags({f"fairskin.key.{stage.name}": key})
    with tracker.run(
        stage.name, parent=parent, tags={"fairskin.stage": stage.name, TAG_STAGE_KEY: key, **tags}
    ) as child:
        child.inherit[TAG_STAGE_KEY] = key
        started = time.time()
        resume = stage.resume_dir(config, key) if stage.resume_dir else None
        redo = force and is_finished(stage_dir(config, stage.name, key))
        result = run_stage(
            config,
            stage.name,
            reads,
            lambda out: stage.body(StageContext(config, out, inputs, child, key, resume=resume, redo=redo)),
            inputs=inputs,
            force=force,
            version=stage.version,
            external=external,
        )
        elapsed = time.time() - started
        child.log_params(
            {
                "stage.key": result.key,
                "stage.path": str(result.path),
                **{f"external.{k}": v for k, v in external.items()},
                **{f"reads.{k}": v for k, v in flatten({p: config.section(p) for p in reads}).items()},
            }
        )
        child.set_tags({"fairskin.skipped": result.skipped})
        child.log_metrics({"stage_seconds": elapsed})
        if stage.provenance is not None:
            provenance = dict(stage.provenance(result))
            parent.inherit.update(provenance)
            parent.set_tags(provenance)
            child.set_tags(provenance)
        if stage.log is not None:
            stage.log(child, result)
    return result, elapsed


@holding_runs_root
def run_pipeline(
    config: FairSkinConfig,
    stages: Sequence[str] | None = None,
    force: Sequence[str] = (),
    echo: Callable[[str], None] = print,
    parent_run: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> PipelineRun:
    """Run the chosen stages (default: all) and the stages they need; ``force`` names stages to redo,
    and every stage of this run downstream of one is redone too (``force=["all"]``: every stage).
    ``parent_run``: an MLflow run id to nest this invocation's run under (a look of
    :mod:`fairskin.pipeline.conclusive`); ``tags``: more tags for this invocation's run.

    The runs root is locked for the call (:mod:`fairskin.lock`; re-entrant in one process), and
    the MLflow store is opened (a SQLite schema created) under that lock before anything else writes.
    """
    plan = _with_inputs(_ordered(stages, config))
    force_set = set(force)
    unknown = force_set - set(STAGES) - {"all"}
    if unknown:
        raise ValueError(f"--force names unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    force_set = forced_stages(plan, sorted(force_set))
    tracker = Tracker.from_config(config)
    outcome = PipelineRun(tracker=tracker)
    config.runtime.runs_root.mkdir(parents=True, exist_ok=True)
    dump_config(config, config.runtime.runs_root / "last_config.yaml")
    run_tags = {"fairskin.kind": "pipeline", "fairskin.preset": config.preset}
    with tracker.run(f"pipeline-{config.preset}", parent=parent_run, tags={**run_tags, **(tags or {})}) as parent:
        outcome.parent_run_id = parent.run_id
        parent.inherit = {TAG_PIPELINE: parent.run_id}  # every run below carries it (provenance)
        parent.set_tags({TAG_PIPELINE: parent.run_id})
        parent.log_config(config)
        record_environment(parent)  # engine version, git commit, installed packages (reproducibility)

        def run_one(stage: Stage) -> None:
            inputs = {name: outcome.results[name] for name in stage.inputs}
            echo(f"[{stage.name}] ...")
            result, elapsed = _run_tracked(stage, config, inputs, tracker, parent, run_tags, stage.name in force_set)
            outcome.results[stage.name] = result
            for later in plan:
                if later.check is not None and later.check_after == stage.name:
                    later.check(config, result)
            state = "skipped (already done)" if result.skipped else f"done in {elapsed:.1f} s"
            echo(f"[{stage.name}] {state}: {result.path}")

        if any(stage.needs_ray for stage in plan):
            from fairskin.runtime import init_ray

            init_ray(config)  # here, not in a background stage's thread
        run_in_order(plan, run_one)
        outcome.results = {stage.name: outcome.results[stage.name] for stage in plan}
    return outcome
