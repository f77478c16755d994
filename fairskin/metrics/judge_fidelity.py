"""Disease fidelity: a judge classifier on generated vs held-out real images (GAN-test).

The judge (:mod:`fairskin.classify.judge`) predicts each image's disease
(:func:`judge_predictions`); :func:`judge_accuracy` counts the hits per (group, disease), and
:func:`disease_fidelity` divides the judge's accuracy on generated images by its accuracy on
held-out real ones (1 = recognised as well as real images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fairskin.metrics.extractors import classifier_logits


def judge_predictions(
    model, pixels: np.ndarray, image_size: int, diseases: Sequence[str], batch_size: int = 256
) -> np.ndarray:
    """The judge's predicted disease names (N,) for uint8 (N, H, W, 3) pixels (argmax of its logits).

    ``diseases`` are the judge's labels in output order (``model.config.id2label``).
    """
    if len(pixels) == 0:
        return np.zeros(0, dtype=object)
    logits = classifier_logits(model, pixels, image_size, batch_size)
    return np.asarray(list(diseases), dtype=object)[logits.argmax(1)]


def judge_accuracy(
    predicted: Sequence[str], meta: pd.DataFrame, groups: Sequence[str], diseases: Sequence[str]
) -> pd.DataFrame:
    """Per (group, disease): ``n`` images, ``correct`` (predicted == the prompted / true disease), ``accuracy``
    (NaN with no images). One row per subclass of ``groups`` x ``diseases``, in that order."""
    predicted = np.asarray(predicted, dtype=object)
    group, disease = meta["group"].to_numpy(), meta["disease"].to_numpy()
    rows = []
    for g in groups:
        for d in diseases:
            hit = (group == g) & (disease == d)
            n, correct = int(hit.sum()), int((predicted[hit] == d).sum())
            rows.append(
                {"group": g, "disease": d, "n": n, "correct": correct, "accuracy": correct / n if n else math.nan}
            )
    return pd.DataFrame(rows)


def _ratio(num: float, den: float) -> float:
    return num / den if np.isfinite(num) and np.isfinite(den) and den > 0 else math.nan


def disease_fidelity(
    generated: pd.DataFrame, real: pd.DataFrame, groups: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Disease fidelity from two :func:`judge_accuracy` tables (generated pool, held-out real).

    Per subclass: ``judge_accuracy_generated``, ``judge_accuracy_real``, ``n_judge_generated``,
    ``n_judge_real`` and ``disease_fidelity`` = generated / real accuracy (NaN where either side
    has no images or the real accuracy is 0). 1 means the judge recognises the generated disease
    as well as it recognises real images of the subclass.

    Summary: over the subclasses measured on both sides, ``judge_accuracy_generated`` and
    ``judge_accuracy_real`` are unweighted means of the subclass accuracies (so the pool's and the
    real set's different subclass mixes do not enter) and ``disease_fidelity`` is their ratio;
    the same per group (``judge_accuracy_generated_<group>``, ``judge_accuracy_real_<group>``,
    ``disease_fidelity_<group>``); ``disease_fidelity_worst_group``: the smallest group figure.
    A ratio of means, not a mean of ratios: a subclass with few held-out images and a near-zero
    real accuracy cannot blow it up.
    """
    table = (
        generated[["group", "disease", "n", "accuracy"]]
        .rename(columns={"n": "n_judge_generated", "accuracy": "judge_accuracy_generated"})
        .merge(
            real[["group", "disease", "n", "accuracy"]].rename(
                columns={"n": "n_judge_real", "accuracy": "judge_accuracy_real"}
            ),
            on=["group", "disease"],
            how="left",
        )
    )
    table["disease_fidelity"] = [
        _ratio(a, b) for a, b in zip(table["judge_accuracy_generated"], table["judge_accuracy_real"])
    ]
    both = table[table["judge_accuracy_generated"].notna() & table["judge_accuracy_real"].notna()]

    def means(rows: pd.DataFrame) -> tuple[float, float]:
        if not len(rows):
            return math.nan, math.nan
        return float(rows["judge_accuracy_generated"].mean()), float(rows["judge_accuracy_real"].mean())

    summary: dict[str, float] = {}
    gen_acc, real_acc = means(both)
    summary.update(
        judge_accuracy_generated=gen_acc, judge_accuracy_real=real_acc, disease_fidelity=_ratio(gen_acc, real_acc)
    )
    per_group = []
    for g in groups:
        gen_g, real_g = means(both[both["group"] == g])
        summary[f"judge_accuracy_generated_{g}"], summary[f"judge_accuracy_real_{g}"] = gen_g, real_g
        summary[f"disease_fidelity_{g}"] = _ratio(gen_g, real_g)
        per_group.append(summary[f"disease_fidelity_{g}"])
    finite = [v for v in per_group if np.isfinite(v)]
    summary["disease_fidelity_worst_group"] = float(min(finite)) if finite else math.nan
    return table, summary
