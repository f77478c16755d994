"""The disease-fidelity judge (fairskin.classify.judge, fairskin.metrics.generation), offline, CPU, procedural images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fairskin.classify.judge import JudgeInfo, judge_ids, judge_info
from fairskin.classify.models import build_classifier
from fairskin.data.shards import read_metadata
from fairskin.data.synthetic import DISEASES, render_lesion_image
from fairskin.metrics import generation as gen
from fairskin.pipeline import run_pipeline

SIZE = 32
JUDGED = list(DISEASES)
GROUPS = ["light", "dark"]
FST = {"light": 2, "dark": 5}


def images(group: str, disease: str, n: int, start: int) -> np.ndarray:
    return np.stack([render_lesion_image(FST[group], disease, seed, SIZE) for seed in range(start, start + n)])


def labelled(n: int, start: int) -> tuple[np.ndarray, pd.DataFrame]:
    parts, meta = [], []
    for group in GROUPS:
        for disease in JUDGED:
            parts.append(images(group, disease, n, start))
            meta += [{"group": group, "disease": disease}] * n
    return np.concatenate(parts), pd.DataFrame(meta)


class CentroidJudge:
    """A cheap judge for the metric's test: nearest class centroid of 8 x 8 colour means and colour spread
    (well above chance on procedural lesions, far from perfect: what the metric must cope with)."""

    def __init__(self, pixels: np.ndarray, meta: pd.DataFrame):
        f, keys = self.features(pixels), list(zip(meta["group"], meta["disease"]))
        subclasses = sorted(set(keys))
        self.labels = np.asarray([d for _, d in subclasses], dtype=object)  # one centroid per subclass
        self.centroids = np.stack([f[[k == s for k in keys]].mean(0) for s in subclasses])

    @staticmethod
    def features(pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) / 255
        n = len(x)
        means = x.reshape(n, 8, SIZE // 8, 8, SIZE // 8, 3).mean((2, 4)).reshape(n, 64, 3)
        means = (means - np.median(means, axis=1, keepdims=True)).reshape(n, -1)  # lesion colour, not skin
        return np.concatenate([means, 4 * x.reshape(n, -1, 3).std(1)], 1)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        d = ((self.features(pixels)[:, None] - self.centroids[None]) ** 2).sum(-1)
        return self.labels[d.argmin(1)]


@pytest.fixture(scope="module")
def judge():
    pixels, meta = labelled(40, 0)
    return CentroidJudge(pixels, meta)


def test_disease_fidelity_is_near_one_for_real_like_images_and_low_for_shuffled_labels(judge):
    held, held_meta = labelled(30, 1000)  # held-out real
    fresh, fresh_meta = labelled(30, 2000)  # a "generator" that draws from the real distribution
    real = gen.judge_accuracy(judge.predict(held), held_meta, GROUPS, JUDGED)
    assert (real["n"] == 30).all() and real["accuracy"].mean() > 1.5 / len(JUDGED), real  # well above chance
    good_table, good = gen.disease_fidelity(
        gen.judge_accuracy(judge.predict(fresh), fresh_meta, GROUPS, JUDGED), real, GROUPS
    )
    assert 0.75 < good["disease_fidelity"] < 1.25
    # Shuffled labels: every image carries another disease's label, as if the generator drew the wrong lesion.
    other = {d: JUDGED[(i + 1) % len(JUDGED)] for i, d in enumerate(JUDGED)}
    shuffled_meta = fresh_meta.assign(disease=fresh_meta["disease"].map(other))
    _, bad = gen.disease_fidelity(gen.judge_accuracy(judge.predict(fresh), shuffled_meta, GROUPS, JUDGED), real, GROUPS)
    assert bad["disease_fidelity"] < 0.6 and bad["disease_fidelity"] < good["disease_fidelity"] - 0.3
    assert bad["disease_fidelity_worst_group"] == min(bad[f"disease_fidelity_{g}"] for g in GROUPS)
    # Per subclass, from the judge's predictions counted here: generated hits / real hits, each over 30 images.
    group, disease = good_table.iloc[0][["group", "disease"]]
    hits = {
        name: int(
            (
                judge.predict(px[(m["group"] == group).to_numpy() & (m["disease"] == disease).to_numpy()]) == disease
            ).sum()
        )
        for name, px, m in (("fresh", fresh, fresh_meta), ("held", held, held_meta))
    }
    assert good_table.iloc[0]["disease_fidelity"] == pytest.approx(hits["fresh"] / hits["held"])


def test_judge_predictions_name_the_judges_labels():
    torch.manual_seed(0)
    model = build_classifier("tiny", JUDGED, SIZE)
    pred = gen.judge_predictions(model, images("light", JUDGED[0], 5, 0), SIZE, JUDGED)
    assert len(pred) == 5 and set(pred) <= set(JUDGED)
    assert len(gen.judge_predictions(model, np.zeros((0, SIZE, SIZE, 3), np.uint8), SIZE, JUDGED)) == 0


def test_disease_fidelity_by_hand():
    generated = pd.DataFrame(
        {
            "group": ["a", "a", "b", "b"],
            "disease": ["x", "y", "x", "y"],
            "n": [10, 10, 10, 10],
            "accuracy": [0.9, 0.5, 0.4, 0.2],
        }
    )
    real = pd.DataFrame(
        {
            "group": ["a", "a", "b", "b"],
            "disease": ["x", "y", "x", "y"],
            "n": [4, 2, 3, 0],
            "accuracy": [1.0, 0.5, 0.8, math.nan],
        }
    )
    table, s = gen.disease_fidelity(generated, real, ["a", "b"])
    assert list(table["disease_fidelity"].iloc[:3]) == pytest.approx([0.9, 1.0, 0.5]) and math.isnan(
        table["disease_fidelity"].iloc[3]
    )
    assert s["judge_accuracy_generated"] == pytest.approx(1.8 / 3) and s["judge_accuracy_real"] == pytest.approx(
        2.3 / 3
    )
    assert s["disease_fidelity"] == pytest.approx(1.8 / 2.3)
    assert s["disease_fidelity_a"] == pytest.approx(0.7 / 0.75) and s["disease_fidelity_b"] == pytest.approx(0.5)
    assert s["disease_fidelity_worst_group"] == pytest.approx(0.5)
    acc = gen.judge_accuracy(
        np.array(["x", "y", "x"]), pd.DataFrame({"group": ["a"] * 3, "disease": ["x", "x", "y"]}), ["a"], ["x", "y"]
    )
    assert list(acc["correct"]) == [1, 0] and list(acc["n"]) == [2, 1]


def test_judge_accuracy_and_fidelity_from_a_hand_worked_confusion():
    # One group, three diseases; rows the true disease, columns the judge's prediction:
    #            generated            held-out real
    #            x  y  z   acc        x  y  z   acc
    #   true x   3  1  0   3/4        4  0  0   1
    #   true y   2  1  1   1/4        1  2  1   1/2
    #   true z   0  0  2   1          1  0  1   1/2
    # Fidelity per subclass 3/4, 1/2, 2; summary: mean accuracies 2/3 and 2/3, ratio 1 (a ratio of means,
    # not the mean of ratios, 13/12).
    def confusion(rows):
        true, pred = [], []
        for t, counts in rows.items():
            for p, c in zip("xyz", counts):
                true += [t] * c
                pred += [p] * c
        return np.array(pred, dtype=object), pd.DataFrame({"group": "a", "disease": true})

    generated = gen.judge_accuracy(*confusion({"x": (3, 1, 0), "y": (2, 1, 1), "z": (0, 0, 2)}), ["a"], list("xyz"))
    real = gen.judge_accuracy(*confusion({"x": (4, 0, 0), "y": (1, 2, 1), "z": (1, 0, 1)}), ["a"], list("xyz"))
    assert generated[["n", "correct"]].values.tolist() == [[4, 3], [4, 1], [2, 2]]
    assert generated["accuracy"].tolist() == pytest.approx([0.75, 0.25, 1.0])
    assert real["accuracy"].tolist() == pytest.approx([1.0, 0.5, 0.5])
    table, s = gen.disease_fidelity(generated, real, ["a"])
    assert table["disease_fidelity"].tolist() == pytest.approx([0.75, 0.5, 2.0])
    assert s["judge_accuracy_generated"] == pytest.approx(2 / 3) and s["judge_accuracy_real"] == pytest.approx(2 / 3)
    assert s["disease_fidelity"] == pytest.approx(1.0) and s["disease_fidelity_worst_group"] == pytest.approx(1.0)


def test_judge_stage_never_trains_on_the_prepare_stage_images(prepared_smoke):
    config, prepare = prepared_smoke
    outcome = run_pipeline(config, ["judge"], echo=lambda *_: None)
    result = outcome.results["judge"]
    info = JudgeInfo.read(result.path)
    assert info.kind == "independent" and not info.saw_train_images and info.real_splits == ("val", "test")
    trained = judge_ids(result.path)
    per = config.generation.judge_images_per_subclass
    assert len(trained) == 15 * per and set(trained["split"]) == {"train", "val"}
    assert trained.groupby(["group", "disease"]).size().eq(per).all()  # balanced over subclasses
    real = read_metadata(prepare.path / "shards")
    assert set(real["split"]) == {"train", "val", "test"}
    assert not set(trained["id"]) & set(real["id"]) and not set(trained["sha256"]) & set(real["sha256"])
    assert result.summary["judge_overlap_ids"] == 0 and (result.path / "model" / "config.json").is_file()
    # The reported accuracy, counted here from the judge's own per-image test predictions (real val + test).
    pred = pd.read_csv(result.path / "test_predictions.csv")
    assert len(pred) == result.summary["judge_real_test_images"]
    hit = pred["y_true"] == pred["y_pred"]
    assert result.summary["judge_test_accuracy"] == pytest.approx(hit.mean())
    assert result.summary["judge_test_worst_group_accuracy"] == pytest.approx(hit.groupby(pred["group"]).mean().min())
    assert result.summary["judge_real_test_images"] == int(real["split"].isin(["val", "test"]).sum())


def test_fitzpatrick_judge_is_the_reference_and_says_so():
    info = judge_info("fitzpatrick17k")
    assert info.kind == "reference" and info.saw_train_images and info.real_splits == ("test",)
    assert "DID see the train images" in info.description
