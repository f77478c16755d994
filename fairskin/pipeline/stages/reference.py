"""The ``reference`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.tracking import RunHandle


def _reference_body(ctx: StageContext) -> Mapping[str, Any]:
    """The no-augmentation classifier (the paper's Figure 3a baseline), kept as the feature
    extractor for IS and t-SNE."""
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    from fairskin.classify.train import load_classifier_data, train_classifier
    from fairskin.metrics.plots import plot_group_accuracy

    data = load_classifier_data(inputs["prepare"].path / "shards")
    result = train_classifier(
        data,
        config.classifier,
        mode="random",
        seed=config.runtime.seed,
        out_dir=out,
        progress=config.runtime.progress,
        reporter=ctx.progress("reference"),
    )
    plot_group_accuracy(
        result.test, data.groups, out / "group_accuracy.png", title="Reference classifier (real data only)"
    )
    return {f"test_{k}": v for k, v in result.test.items() if not k.endswith("_ci")}


def _reference_log(run: RunHandle, result: StageResult) -> None:
    import pandas as pd

    run.log_metrics(result.summary)
    if not result.skipped and (result.path / "history.csv").exists():
        for _, row in pd.read_csv(result.path / "history.csv").iterrows():
            run.log_metrics(row.to_dict(), step=int(row["epoch"]))
    for name in ("group_accuracy.png", "test_report.json", "history.csv"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "reference")


register_stage(
    Stage(
        "reference",
        reads=("classifier", "runtime.seed"),
        inputs=("prepare",),
        body=_reference_body,
        log=_reference_log,
        external=("classifier.model",),
    )
)
