"""The procedural skin-lesion generator: determinism, labels, counts, fairness-relevant contrast, learnability."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from fairskin.data.synthetic import (
    DISEASES,
    SyntheticSample,
    generate_samples,
    image_seed,
    render_layers,
    render_lesion_image,
    scaled_counts,
)

GROUP_FST = {"Caucasian": [1, 2], "Asian": [3, 4], "African": [5, 6]}
ID_PATTERN = re.compile(r"^syn-[a-z0-9-]+-[a-z0-9-]+-[a-z0-9-]+-\d{5}$")


# --- render_lesion_image ---------------------------------------------------------------------


@pytest.mark.parametrize("disease", DISEASES)
def test_render_is_a_pure_function_of_its_arguments(disease):
    a = render_lesion_image(3, disease, seed=123, size=64)
    b = render_lesion_image(3, disease, seed=123, size=64)
    assert a.tobytes() == b.tobytes()
    assert render_lesion_image(3, disease, seed=124, size=64).tobytes() != a.tobytes()
    assert render_lesion_image(4, disease, seed=123, size=64).tobytes() != a.tobytes()


@pytest.mark.parametrize("size", [8, 32, 64, 96])
def test_render_shape_and_dtype(size):
    for fst in (1, 6):
        for disease in DISEASES:
            img = render_lesion_image(fst, disease, seed=7, size=size)
            assert img.shape == (size, size, 3)
            assert img.dtype == np.uint8
            assert img.std() > 1.0  # not a flat fill


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="disease"):
        render_lesion_image(1, "eczema", seed=0)
    with pytest.raises(ValueError, match="1..6"):
        render_lesion_image(7, DISEASES[0], seed=0)
    with pytest.raises(ValueError, match="size"):
        render_lesion_image(1, DISEASES[0], seed=0, size=4)


def test_render_layers_match_the_image_and_differ_only_at_the_lesion():
    img, skin, alpha = render_layers(2, "psoriasis", seed=5, size=64)
    assert img.tobytes() == render_lesion_image(2, "psoriasis", seed=5, size=64).tobytes()
    assert alpha.shape == (64, 64) and 0.0 <= alpha.min() and alpha.max() <= 1.0
    changed = np.abs(img.astype(int) - skin.astype(int)).max(axis=-1) > 0
    assert changed.any()
    assert not changed[alpha == 0].any()  # nothing outside the lesion moved


def test_skin_darkens_with_fitzpatrick_type():
    means = [np.mean([render_layers(f, DISEASES[0], s, 32)[1].mean() for s in range(8)]) for f in range(1, 7)]
    assert all(a > b for a, b in zip(means, means[1:])), means


# --- seeds, ids, samples ---------------------------------------------------------------------


def test_image_seed_is_stable_and_63_bit():
    s = image_seed(0, "African", "psoriasis", 3)
    assert s == image_seed(0, "African", "psoriasis", 3, namespace="train")
    assert 0 <= s < 2**63
    # A fixed value: a change here silently changes every dataset built from the generator.
    assert s == 8687519687973561776
    others = {
        image_seed(1, "African", "psoriasis", 3),
        image_seed(0, "Asian", "psoriasis", 3),
        image_seed(0, "African", "lichen planus", 3),
        image_seed(0, "African", "psoriasis", 4),
        image_seed(0, "African", "psoriasis", 3, namespace="heldout"),
    }
    assert s not in others and len(others) == 5


COUNTS = {
    ("African", "basal cell carcinoma"): 3,
    ("Caucasian", "psoriasis"): 5,
    ("Asian", "lichen planus"): 4,
    ("African", "psoriasis"): 0,
}


def test_generate_samples_respects_counts_order_and_labels():
    samples = list(generate_samples(COUNTS, GROUP_FST, seed=11, size=16))
    assert all(isinstance(s, SyntheticSample) for s in samples)
    assert Counter((s.group, s.disease) for s in samples) == {k: v for k, v in COUNTS.items() if v}
    keys = [(s.group, s.disease) for s in samples]
    assert keys == sorted(keys)  # sorted subclass order, then index order
    assert [s.id[-5:] for s in samples[:3]] == ["00000", "00001", "00002"]
    for s in samples:
        assert s.fst in GROUP_FST[s.group]
        assert s.variant == "procedural-v1"
        assert s.image.shape == (16, 16, 3) and s.image.dtype == np.uint8
        assert s.seed == image_seed(11, s.group, s.disease, int(s.id[-5:]), "train")
        assert s.image.tobytes() == render_lesion_image(s.fst, s.disease, s.seed, 16).tobytes()


def test_ids_are_well_formed_and_unique():
    samples = list(generate_samples(COUNTS, GROUP_FST, seed=0, size=8, namespace="heldout"))
    ids = [s.id for s in samples]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert ID_PATTERN.match(i), i
        assert i == i.lower() and " " not in i and i.startswith("syn-heldout-")
    assert "syn-heldout-african-basal-cell-carcinoma-00002" in ids


def test_fst_uses_the_whole_bin_and_is_deterministic():
    counts = {("African", "psoriasis"): 60, ("Caucasian", "psoriasis"): 60}
    first = [(s.id, s.fst) for s in generate_samples(counts, GROUP_FST, seed=3, size=8)]
    assert first == [(s.id, s.fst) for s in generate_samples(counts, GROUP_FST, seed=3, size=8)]
    african = Counter(f for i, f in first if "-african-" in i)
    caucasian = Counter(f for i, f in first if "-caucasian-" in i)
    assert set(african) == {5, 6} and min(african.values()) >= 15
    assert set(caucasian) == {1, 2} and min(caucasian.values()) >= 15


def test_more_samples_keep_the_earlier_ones_and_namespaces_differ():
    small = list(generate_samples({("Asian", "psoriasis"): 2}, GROUP_FST, seed=9, size=16))
    large = list(generate_samples({("Asian", "psoriasis"): 4}, GROUP_FST, seed=9, size=16))
    assert [s.image.tobytes() for s in small] == [s.image.tobytes() for s in large[:2]]
    held = list(generate_samples({("Asian", "psoriasis"): 2}, GROUP_FST, seed=9, size=16, namespace="heldout"))
    assert {s.seed for s in held}.isdisjoint({s.seed for s in small})


def test_generate_samples_rejects_unknown_group_or_disease():
    with pytest.raises(ValueError, match="group"):
        list(generate_samples({("Martian", "psoriasis"): 1}, GROUP_FST, seed=0, size=8))
    with pytest.raises(ValueError, match="disease"):
        list(generate_samples({("Asian", "eczema"): 1}, GROUP_FST, seed=0, size=8))


# --- scaled_counts ---------------------------------------------------------------------------


def test_scaled_counts_rounds_and_keeps_the_minimum():
    counts = {("Caucasian", "psoriasis"): 412, ("African", "basal cell carcinoma"): 12, ("Asian", "psoriasis"): 145}
    assert scaled_counts(counts, 0.25) == {
        ("Caucasian", "psoriasis"): 103,
        ("African", "basal cell carcinoma"): 12,
        ("Asian", "psoriasis"): 36,  # 36.25 -> 36
    }
    assert scaled_counts(counts, 0.1, minimum=20)[("Caucasian", "psoriasis")] == 41
    assert scaled_counts(counts, 0.01, minimum=20) == {k: 20 for k in counts}
    assert scaled_counts({("a", "b"): 5}, 0.5, minimum=0) == {("a", "b"): 3}  # 2.5 rounds half up
    assert scaled_counts(counts, 2.0)[("Asian", "psoriasis")] == 290
    with pytest.raises(ValueError):
        scaled_counts(counts, 0.0)


# --- what makes the dataset useful -----------------------------------------------------------


def _lesion_contrast(fst: int, disease: str, seeds) -> float:
    """Mean RGB distance between the image and the same image without its lesion, over lesion pixels."""
    values = []
    for s in seeds:
        img, skin, alpha = render_layers(fst, disease, s, 48)
        mask = alpha > 0.5
        if mask.sum() >= 5:
            values.append(np.linalg.norm(img[mask].astype(float) - skin[mask].astype(float), axis=1).mean())
    return float(np.mean(values))


def test_lesion_contrast_is_lower_on_darker_skin():
    seeds = range(20)
    light = {d: _lesion_contrast(1, d, seeds) for d in DISEASES}
    dark = {d: _lesion_contrast(6, d, seeds) for d in DISEASES}
    assert np.mean(list(dark.values())) < 0.85 * np.mean(list(light.values())), (light, dark)
    # Redness (allergic contact dermatitis) and violaceous colour (lichen planus) fade most.
    for disease in ("allergic contact dermatitis", "lichen planus"):
        assert dark[disease] < 0.5 * light[disease], (disease, light[disease], dark[disease])
    assert min(dark.values()) > 3.0  # the lesion is still there


def _features(img: np.ndarray) -> np.ndarray:
    """Position-free colour/texture statistics relative to the median (skin) colour."""
    x = img.astype(np.float32)
    d = x - np.median(x.reshape(-1, 3), axis=0)
    r, g, b = d[..., 0], d[..., 1], d[..., 2]
    lum = d.mean(-1)
    feats = []
    for t in (10, 25):
        feats += [(lum > t).mean(), (lum < -t).mean(), (r - g > t).mean(), (b - g > t).mean(), (r - g < -t).mean()]
    grad = np.abs(np.diff(lum, axis=0)).mean() + np.abs(np.diff(lum, axis=1)).mean()
    feats += [grad, d.std(), np.abs(r - g).mean(), np.abs(b - g).mean()]
    return np.array(feats)


def _dataset(n: int, offset: int):
    xs, ys = [], []
    for k, disease in enumerate(DISEASES):
        for i in range(n):
            xs.append(_features(render_lesion_image(1 + i % 6, disease, offset + 1000 * k + i, 32)))
            ys.append(k)
    return np.array(xs), np.array(ys)


def test_diseases_are_learnable_from_simple_features():
    x, y = _dataset(60, 0)
    xt, yt = _dataset(40, 10**6)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    zt = np.c_[(xt - mu) / sd, np.ones(len(xt))]
    w = np.zeros((z.shape[1], len(DISEASES)))
    onehot = np.eye(len(DISEASES))[y]
    for _ in range(500):  # softmax regression, plain gradient descent
        p = np.exp(z @ w - (z @ w).max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.1 * z.T @ (p - onehot) / len(z)
    accuracy = ((zt @ w).argmax(1) == yt).mean()
    assert accuracy > 0.5, accuracy  # chance is 0.2
