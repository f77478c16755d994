"""The pipeline's stages, one module each; importing this package registers them in run order.

``reference`` and ``judge`` need only ``prepare``: they come after ``base`` so that they run while the
base's UNet, a background Ray task of one CPU, trains beside them.
"""

from fairskin.pipeline.stage import STAGES
from fairskin.pipeline.stages import (  # noqa: F401  (each module registers its stage)
    base,
    control_base,
    evaluate,
    finetune,
    generate,
    judge,
    prepare,
    reference,
    report,
    tune,
    vae,
)

RUN_ORDER = (
    "prepare",
    "vae",
    "base",
    "control_base",
    "reference",
    "judge",
    "finetune",
    "generate",
    "evaluate",
    "tune",
    "report",
)
assert set(RUN_ORDER) == set(STAGES), f"RUN_ORDER {RUN_ORDER} must name every stage {list(STAGES)}"
_ordered = {name: STAGES[name] for name in RUN_ORDER}
STAGES.clear()
STAGES.update(_ordered)  # the registry iterates in run order (each stage after its inputs)
