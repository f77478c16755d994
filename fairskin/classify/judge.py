"""The judge: a disease classifier that never saw the FID reference images.

It scores disease fidelity (GAN-test: its accuracy on generated images of a subclass beside its
accuracy on held-out real images of that subclass) and, on synthetic data, gives FID / KID / IS a
feature space of their own.

* ``data.source=synthetic``: the procedural generator makes unlimited images, so the judge is
  trained on a fresh set, ``generation.judge_images_per_subclass`` images per (group, disease)
  (balanced), drawn in the seed namespace ``judge`` (no image seed or id is shared with the
  ``prepare`` stage's ``train`` namespace). Every fifth image of a subclass (index 4, 9, ...) is its
  validation split. It trains as ``classifier.*`` says, except for the batch size
  (``generation.judge_batch_size``: small, so a small set still gives enough steps). Its real baseline: the ``prepare`` stage's val + test images (the judge saw
  none of the prepare images; val + test are also unseen by every generator).
* ``data.source=fitzpatrick17k``: no independent real set exists, so the judge *is* the reference
  classifier, which was trained on the train split (the FID reference by default); its real
  baseline is the test split. This is the one exception to the rule, and every table says so
  (``judge_saw_train_images`` = 1).

The ``judge`` stage writes ``judge.json`` (:class:`JudgeInfo`), and for synthetic data
``model/`` (safetensors), ``shards/`` (the judge's images), ``judge_ids.csv`` (id, group,
disease, split, sha256 of every image it trained or validated on), ``real_accuracy.csv``
and the classifier's usual ``history.csv`` / ``test_report.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairskin.config import FairSkinConfig

if TYPE_CHECKING:
    from fairskin.progress import StepProgress

JUDGE_NAMESPACE = "judge"
JUDGE_FILE = "judge.json"
IDS_FILE = "judge_ids.csv"
REAL_ACCURACY_FILE = "real_accuracy.csv"
VAL_EVERY = 5  # every fifth image of a subclass validates
SEED_OFFSET = 1_000_003  # the judge's weights start from another draw than the reference's


@dataclass(frozen=True)
class JudgeInfo:
    """What the ``judge`` stage decided: ``kind`` "independent" (own model in ``model_folder``,
    relative to the stage folder) or "reference" (the reference classifier); which real splits
    are its baseline; whether it saw the train split."""

    kind: str
    real_splits: tuple[str, ...]
    saw_train_images: bool
    model_folder: str | None
    description: str

    @classmethod
    def read(cls, folder: Path) -> JudgeInfo:
        raw = json.loads((Path(folder) / JUDGE_FILE).read_text())
        return cls(**{**raw, "real_splits": tuple(raw["real_splits"])})

    def write(self, folder: Path) -> None:
        from fairskin.io import atomic_write_json

        atomic_write_json(Path(folder) / JUDGE_FILE, asdict(self))


INDEPENDENT = (
    "independent judge: a classifier trained on a fresh, balanced procedural set (seed namespace "
    "'judge'); it never saw the real images"
)
REUSED = (
    "judge = the reference classifier, which DID see the train images (the FID reference): no independent "
    "real set exists for this source; its real baseline is the test split"
)


def judge_info(source: str) -> JudgeInfo:
    """The judge a data source gets (see the module docstring)."""
    if source == "synthetic":
        return JudgeInfo("independent", ("val", "test"), False, "model", INDEPENDENT)
    return JudgeInfo("reference", ("test",), True, None, REUSED)


def judge_seed(seed: int) -> int:
    return int(seed) + SEED_OFFSET


def _subset(decoded, mask: np.ndarray):
    from fairskin.data.stream import DecodedSet

    return DecodedSet(decoded.pixels[mask], decoded.meta[mask].reset_index(drop=True), decoded.groups, decoded.diseases)


def train_judge(
    config: FairSkinConfig, out: Path, real_shards: Path, reporter: StepProgress | None = None
) -> dict[str, Any]:
    """Write and train the independent judge of a synthetic source into ``out`` (see module docstring).

    ``real_shards``: the ``prepare`` stage's shard folder; its ids and checksums must be disjoint
    from the judge's images (raises ``RuntimeError`` otherwise), and its ``judge_info(...).real_splits``
    are the judge's test set. Returns the stage summary: image counts, ``judge_test_accuracy``
    (on held-out real images) with its worst group, the last validation accuracy, and the overlap
    counts (0). ``reporter``: the training's progress (``batch_loss`` per batch over
    ``classifier.epochs`` epochs of ``generation.judge_batch_size`` rows; see
    :func:`fairskin.classify.train.train_classifier`), begun when the training starts (after the judge's
    images are drawn).
    """
    from fairskin.classify.train import ClassifierData, train_classifier
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.data.shards import read_metadata
    from fairskin.data.stream import decode_local
    from fairskin.metrics.generation import judge_accuracy

    info = judge_info(config.data.source)
    if info.kind != "independent":
        raise ValueError(f"an independent judge needs data.source=synthetic, got {config.data.source!r}")
    out = Path(out)
    shards = write_synthetic_pool(
        config, out / "shards", config.generation.judge_images_per_subclass, namespace=JUDGE_NAMESPACE
    )
    images = decode_local(shards, splits=["pool"])
    position = images.meta.groupby(["group", "disease"]).cumcount().to_numpy()
    is_val = position % VAL_EVERY == VAL_EVERY - 1
    ids = images.meta[["id", "group", "disease", "sha256"]].assign(split=np.where(is_val, "val", "train"))
    real = read_metadata(real_shards)
    overlap_ids = int(ids["id"].isin(set(real["id"])).sum())
    overlap_sha = int(ids["sha256"].isin(set(real["sha256"])).sum())
    if overlap_ids or overlap_sha:
        raise RuntimeError(
            f"the judge's images share {overlap_ids} ids and {overlap_sha} checksums with the "
            "prepare stage's images: it must never see them"
        )
    test = decode_local(real_shards, splits=list(info.real_splits))
    data = ClassifierData(train=_subset(images, ~is_val), val=_subset(images, is_val), test=test)
    cfg = config.classifier.model_copy(update={"batch_size": config.generation.judge_batch_size})
    result = train_classifier(
        data,
        cfg,
        mode="random",
        seed=judge_seed(config.runtime.seed),
        out_dir=out,
        progress=config.runtime.progress,
        reporter=reporter,
    )
    ids.to_csv(out / IDS_FILE, index=False)
    pred = result.test_predictions["y_pred"].to_numpy(dtype=object)
    judge_accuracy(pred, test.meta, images.groups, images.diseases).to_csv(out / REAL_ACCURACY_FILE, index=False)
    info.write(out)
    last = result.history[-1] if result.history else {}
    return {
        "judge_images": len(ids),
        "judge_train_images": int((~is_val).sum()),
        "judge_val_images": int(is_val.sum()),
        "judge_real_test_images": len(test),
        "judge_test_accuracy": float(result.test["accuracy"]),
        "judge_test_worst_group_accuracy": float(result.test["worst_group_accuracy"]),
        "judge_val_accuracy": float(last.get("val_accuracy", float("nan"))),
        "judge_overlap_ids": overlap_ids,
        "judge_overlap_sha256": overlap_sha,
        "judge_saw_train_images": 0,
    }


def load_judge(judge_folder: Path, reference_folder: Path):
    """(model, info): the judge's ``ViTForImageClassification`` (its own, or the reference's) in eval mode."""
    from fairskin.classify.models import load_saved_classifier

    info = JudgeInfo.read(judge_folder)
    folder = Path(judge_folder) / info.model_folder if info.kind == "independent" else Path(reference_folder) / "model"
    return load_saved_classifier(folder).eval(), info


def judge_ids(judge_folder: Path) -> pd.DataFrame:
    """The ids (and splits, checksums) of every image the judge trained or validated on; empty for a reused reference."""
    path = Path(judge_folder) / IDS_FILE
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["id", "group", "disease", "sha256", "split"])
