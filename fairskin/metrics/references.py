"""What a generator is scored against, loaded once: the evaluate stage, a generator study's trials and the
benchmarks all read the same references the same way.

From the prepared shards: the real training images (the skin-tone bands' source), the FID reference split
(``generation.real_split``), the held-out real images (val + test: the floors, the judge's real baseline, the
skin-tone ceiling); from the judge folder: the judge and its accuracy on its real baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairskin.config import FairSkinConfig


@dataclass
class References:
    """The real images (uint8 (N, H, W, 3) with their meta: group, disease, split, ...), the judge, and the
    figures derived from them once."""

    train_pixels: np.ndarray
    train_meta: pd.DataFrame
    real_pixels: np.ndarray  # the FID reference: generation.real_split
    real_meta: pd.DataFrame
    held_pixels: np.ndarray  # val + test
    held_meta: pd.DataFrame
    judge: object  # the disease judge (torch module)
    info: object  # fairskin.classify.judge.JudgeInfo: what it saw, its real baseline splits
    judge_real: pd.DataFrame  # its accuracy per (group, disease) on its real baseline
    bands: object  # fairskin.metrics.skin_tone.ReferenceBands of the real training images' ITA per group

    def floors(self, real_split: str) -> tuple[np.ndarray, pd.DataFrame]:
        """The held-out images outside the FID reference (and outside the generators' training split): the
        real-vs-real floor at the same N."""
        rows = self.held_meta["split"].isin([s for s in ("val", "test") if s != real_split]).to_numpy()
        return self.held_pixels[rows], self.held_meta[rows].reset_index(drop=True)


def load_references(
    config: FairSkinConfig, shards: Path, judge_folder: Path, reference_folder: Path | None, device="cpu"
) -> References:
    """The references of ``config`` from the prepared ``shards`` and the judge stage's folder (the reference
    classifier's folder stands in for the judge on real data), the judge on ``device``."""
    from fairskin.classify.judge import load_judge
    from fairskin.data.shards import load_decoded
    from fairskin.metrics.generation import judge_accuracy, judge_predictions
    from fairskin.metrics.skin_tone import ReferenceBands, image_ita

    groups, diseases = config.data.group_names, config.data.diseases
    split = config.generation.real_split
    train_pixels, train_meta = load_decoded(shards, splits=["train"])
    real_pixels, real_meta = (train_pixels, train_meta) if split == "train" else load_decoded(shards, splits=[split])
    held_pixels, held_meta = load_decoded(shards, splits=["val", "test"])
    judge, info = load_judge(judge_folder, reference_folder)
    judge = judge.to(device)
    judge_rows = held_meta["split"].isin(info.real_splits).to_numpy()
    judge_real = judge_accuracy(
        judge_predictions(judge, held_pixels[judge_rows], config.classifier.image_size, diseases),
        held_meta[judge_rows],
        groups,
        diseases,
    )
    bands = ReferenceBands.from_real(image_ita(train_pixels), train_meta["group"].to_numpy())
    return References(
        train_pixels, train_meta, real_pixels, real_meta, held_pixels, held_meta, judge, info, judge_real, bands
    )
