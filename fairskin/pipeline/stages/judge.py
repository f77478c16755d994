"""The ``judge`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.tracking import RunHandle

JUDGE_READS = (
    "data",
    "classifier",
    "generation.judge_images_per_subclass",
    "generation.judge_batch_size",
    "runtime.seed",
)


def _judge_body(ctx: StageContext) -> Mapping[str, Any]:
    """The disease-fidelity judge, a classifier that never saw the FID reference images
    (:mod:`fairskin.classify.judge`). synthetic: trained on a fresh balanced procedural set (seed
    namespace ``judge``), tested on the prepare stage's val + test images; it also gives the
    evaluate stage its feature space. fitzpatrick17k: records that the reference classifier is
    reused (it saw the train images; its real baseline is the test split)."""
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    from fairskin.classify.judge import judge_info, train_judge

    info = judge_info(config.data.source)
    if info.kind != "independent":
        info.write(out)
        return {"judge_saw_train_images": 1}
    return train_judge(config, out, inputs["prepare"].path / "shards", reporter=ctx.progress("judge"))


def _judge_log(run: RunHandle, result: StageResult) -> None:
    from fairskin.classify.judge import IDS_FILE, JUDGE_FILE, REAL_ACCURACY_FILE, JudgeInfo

    run.log_metrics({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
    run.set_tags({"fairskin.judge": JudgeInfo.read(result.path).description})
    for name in (JUDGE_FILE, IDS_FILE, REAL_ACCURACY_FILE, "history.csv", "test_report.json"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "judge")


register_stage(Stage("judge", reads=JUDGE_READS, inputs=("prepare",), body=_judge_body, log=_judge_log))
