"""Score a generated pool as the evaluate stage does: skin-tone agreement and the judge's disease accuracy.

Shared by the benchmarks that compare generators on a finished runs root (``noise_schedule.py``,
``sampling_settings.py``): the real train images give each group's ITA band, the judge's own held-out
real images give its real accuracy (the fidelity's denominator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fidelity_ceiling import _one

from fairskin.metrics.generation import disease_fidelity, judge_accuracy, judge_predictions
from fairskin.metrics.references import load_references
from fairskin.metrics.skin_tone import ReferenceBands, image_ita, skin_tone_report

KEPT = ("skin_tone_agreement", "judge_accuracy_generated")


@dataclass
class PoolScorer:
    judge: Any
    image_size: int
    groups: list[str]
    diseases: list[str]
    bands: ReferenceBands
    judge_real: pd.DataFrame

    @classmethod
    def from_runs_root(cls, root: Path, config, judge_folder: str | None = None) -> PoolScorer:
        """The runs root's ``prepare`` shards and ``judge`` stage (``judge_folder``: one named explicitly)."""
        shards = _one(root, "prepare-*", None, "--runs-root") / "shards"
        refs = load_references(config, shards, _one(root, "judge-*", judge_folder, "--judge"), None)
        groups, diseases = list(config.data.group_names), list(config.data.diseases)
        judge, size, bands, judge_real = refs.judge, config.classifier.image_size, refs.bands, refs.judge_real
        return cls(judge, size, groups, diseases, bands, judge_real)

    def score(self, pixels: np.ndarray, meta: pd.DataFrame) -> dict[str, float]:
        """uint8 (N, H, W, 3) images with ``group`` / ``disease`` columns -> skin-tone agreement and judge
        accuracy, overall and per group (shares in [0, 1]), rounded to 4 digits."""
        _, _, tone, _ = skin_tone_report(
            image_ita(pixels), meta["group"].to_numpy(), meta["disease"].to_numpy(), self.bands
        )
        _, fidelity = disease_fidelity(
            judge_accuracy(
                judge_predictions(self.judge, pixels, self.image_size, self.diseases), meta, self.groups, self.diseases
            ),
            self.judge_real,
            self.groups,
        )
        return {
            k: round(float(v), 4)
            for k, v in {**tone, **fidelity}.items()
            if k.startswith(KEPT) and isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
        }
