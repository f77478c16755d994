"""Fault injection, from the test side: hooks the tests register with the engine's extension points
(``fairskin.diffusion.finetune.STEP_HOOKS`` / ``finetune_variant(step_hooks=...)``, ``GeneratorInputs.step_hooks``,
``fairskin.diffusion.generate.ITEM_HOOKS``). Nothing in the engine sleeps or fails on purpose.

The hooks run in Ray workers, which do not import this folder: the module is pickled by value.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ray import cloudpickle  # Ray's own copy: what serialises a fit's config and Tune's inputs

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class StepPause:
    """Sleep ``seconds`` before every fine-tune step, so that a kill lands mid-fit."""

    seconds: float

    def __call__(self, step: int, rank: int) -> None:
        time.sleep(self.seconds)


@dataclass(frozen=True)
class FailOnceAt:
    """Raise once, on rank 0, before 0-based step ``step`` (after the checkpoint at ``step`` steps done, when
    ``step`` is a checkpoint step), in the first attempt: ``marker`` is written then, and a retry finds it."""

    step: int
    marker: str

    def __call__(self, step: int, rank: int) -> None:
        if rank == 0 and step == self.step and not Path(self.marker).exists():
            Path(self.marker).write_text(f"failed at step {step}")
            raise RuntimeError(f"injected failure at step {step}")


@dataclass(frozen=True)
class ItemPause:
    """Sleep ``seconds`` before every pool item, so that a node can be lost mid-pool."""

    seconds: float

    def __call__(self, item) -> None:
        time.sleep(self.seconds)


@dataclass(frozen=True)
class HookStateProbe:
    """Before every step, append this worker's method-hook state (every live ``TrainingHook`` with a ``sigma``,
    found among the process's objects) to ``folder/rank<r>.jsonl``: what a test compares across Ray Train workers,
    which log nothing but rank 0's metrics."""

    folder: str

    def __call__(self, step: int, rank: int) -> None:
        import gc
        import json

        from fairskin.methods.hooks import TrainingHook

        hooks = [o for o in gc.get_objects() if isinstance(o, TrainingHook) and hasattr(o, "sigma")]
        with open(Path(self.folder) / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "sigma": [h.sigma.tolist() for h in hooks]}) + "\n")
