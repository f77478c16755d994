"""The ``report`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.pipeline.stages.tune import study_of
from fairskin.tracking import RunHandle


def _report_body(ctx: StageContext) -> Mapping[str, Any]:
    """Table 1, Table 2 and the figures, rebuilt from MLflow for the pipeline's study."""
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    from fairskin.report import build_report

    r = config.report
    report = build_report(
        config.tracking_uri(),
        out,
        config.data.group_names,
        study=study_of(inputs["tune"]),
        baseline=r.baseline,
        level=r.level,
        declaration=config.declaration(),
    )
    counts = report.verdicts["verdict"].value_counts() if len(report.verdicts) else {}
    return {
        "rows_table1": len(report.table1),
        "figures": len(report.figures),
        "figures_missing": len(report.missing),
        **{
            f"verdicts_{v}": int(counts.get(v, 0))
            for v in ("better", "worse", "equivalent", "inconclusive", "untestable")
        },
    }


def _report_log(run: RunHandle, result: StageResult) -> None:
    run.log_metrics(result.summary)
    for path in sorted(result.path.iterdir()):
        if path.suffix in (".md", ".csv", ".png"):
            run.log_artifact(path, "report")


register_stage(
    Stage(
        "report",
        reads=("data.groups", "report"),
        inputs=("reference", "evaluate", "tune"),
        version=2,
        body=_report_body,
        log=_report_log,
    )
)


def report_path(result: StageResult) -> Path:
    return result.path / "report.md"
