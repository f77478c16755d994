"""The pipeline: keyed stages in order, each skipped when done, tracked in MLflow.

    stage.py     a stage's declaration (:class:`Stage`), the context its body gets, the registry, stage keys
    keyed.py     a keyed folder: written under a temporary name, renamed when complete, skipped when done
    stages/      one module per stage (prepare, vae, base, control_base, reference, judge, finetune,
                 generate, evaluate, tune, report)
    runner.py    the plan, the runs-root lock, MLflow parent and child runs, background stages

``run_pipeline(config)`` runs them; ``python jobs/full_pipeline.py`` is its command line.
"""

from fairskin.pipeline.runner import PipelineRun, forced_stages, run_in_order, run_pipeline
from fairskin.pipeline.stage import STAGES, Stage, StageContext, pipeline_stage_key
from fairskin.pipeline.stages import RUN_ORDER

__all__ = [
    "RUN_ORDER",
    "STAGES",
    "PipelineRun",
    "Stage",
    "StageContext",
    "forced_stages",
    "pipeline_stage_key",
    "run_in_order",
    "run_pipeline",
]
