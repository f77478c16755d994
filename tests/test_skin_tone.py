"""Skin-tone fidelity: ITA of flat colours, the healthy-skin rule on images with a known lesion,
group separation on the procedural "real" images, and the report on made-up ITA values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance

from fairskin.data.synthetic import DISEASES, generate_samples, image_seed, render_layers
from fairskin.metrics.skin_tone import (
    RULES,
    TOLERANCE_DEG,
    TOLERANCE_SHARE,
    ReferenceBands,
    healthy_skin_mask,
    image_ita,
    ita_degrees,
    skin_tone_report,
    srgb_to_lab,
)

GROUP_FST = {"Caucasian": [1, 2], "Asian": [3, 4], "African": [5, 6]}


# --- ITA of flat colours, against CIELAB written out here ------------------------------------

D65_WHITE = (0.95047, 1.0, 1.08883)  # XYZ of the D65 white, 2 degree observer, Y = 1
SRGB_TO_XYZ = np.array([  # IEC 61966-2-1, linear sRGB -> XYZ (D65)
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])


def hand_lab(rgb8: tuple[int, int, int]) -> tuple[float, float, float]:
    """CIE L*, a*, b* of an 8-bit sRGB colour, from the CIE formulas (no library)."""
    c = np.array(rgb8, dtype=float) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    x, y, z = SRGB_TO_XYZ @ linear
    eps = (6 / 29) ** 3

    def f(t: float) -> float:
        return t ** (1 / 3) if t > eps else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / D65_WHITE[0]), f(y / D65_WHITE[1]), f(z / D65_WHITE[2])
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


PATCHES = {
    "pale skin": (236, 200, 178),
    "tan skin": (190, 140, 105),
    "brown skin": (110, 72, 50),
    "deep brown skin": (62, 40, 28),
    "light blue-grey (b* < 0, L* > 50)": (170, 185, 215),
    "dark blue (b* < 0, L* < 50)": (40, 50, 95),
}


@pytest.mark.parametrize("name", list(PATCHES))
def test_ita_of_flat_patches_matches_hand_computed_cielab(name):
    rgb = PATCHES[name]
    L, _, b = hand_lab(rgb)
    expected = math.degrees(math.atan2(L - 50.0, b))
    patch = np.full((16, 16, 3), rgb, dtype=np.uint8)
    got_pixels = ita_degrees(patch, space="rgb")
    assert got_pixels.shape == (16, 16)
    assert np.allclose(got_pixels, expected, atol=0.1), (name, got_pixels[0, 0], expected)
    assert ita_degrees(srgb_to_lab(patch))[0, 0] == pytest.approx(got_pixels[0, 0])
    for rule in RULES:  # on a flat image every rule sees the one colour
        assert image_ita(patch[None], rule)[0] == pytest.approx(expected, abs=0.1), rule
    if b <= 0:  # the quadrant matters: arctan((L - 50) / b) would land 180 degrees off
        assert abs(expected) > 90
        assert abs(math.degrees(math.atan((L - 50.0) / b)) - expected) == pytest.approx(180, abs=1e-6)


def test_ita_degrees_known_angles_and_bad_input():
    lab = np.array([[60.0, 5.0, 10.0], [40.0, 5.0, 10.0], [60.0, 0.0, -10.0], [40.0, 0.0, -10.0], [70.0, 0.0, 0.0]])
    assert np.allclose(ita_degrees(lab), [45.0, -45.0, 135.0, -135.0, 90.0])
    with pytest.raises(ValueError, match="space"):
        ita_degrees(lab, space="hsv")
    with pytest.raises(ValueError):
        ita_degrees(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="uint8"):
        image_ita(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="rule"):
        image_ita(np.zeros((2, 8, 8, 3), dtype=np.uint8), rule="ring")


# --- the healthy-skin rule on images whose lesion is known -----------------------------------


@pytest.fixture(scope="module")
def known_lesions():
    """Every disease x FST 1..6 x 20 seeds (600 images of 64 px), seeds unlike the benchmark's."""
    images, alphas, disease, fst = [], [], [], []
    for d in DISEASES:
        for f in range(1, 7):
            for i in range(20):
                img, _, alpha = render_layers(f, d, image_seed(13, f"fst{f}", d, i, "skin-tone-test"), 64)
                images.append(img)
                alphas.append(alpha)
                disease.append(d)
                fst.append(f)
    return np.stack(images), np.stack(alphas), np.array(disease), np.array(fst)


def _true_ita(images: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """ITA of the median L*, b* of each image's pixels without lesion (coverage exactly 0)."""
    out = []
    for img, alpha in zip(images, alphas):
        lab = srgb_to_lab(img[alpha == 0])
        out.append(math.degrees(math.atan2(np.median(lab[:, 0]) - 50.0, np.median(lab[:, 2]))))
    return np.array(out)


def test_healthy_skin_rule_finds_the_ita_of_the_pixels_without_lesion(known_lesions):
    images, alphas, disease, fst = known_lesions
    truth = _true_ita(images, alphas)
    err = np.abs(image_ita(images) - truth)
    worst = int(np.argmax(err))
    msg = (f"over {len(err)} images: median {np.median(err):.2f}, p99 {np.percentile(err, 99):.2f}, "
           f"max {err.max():.2f} deg ({disease[worst]}, FST {fst[worst]}); "
           f"within {TOLERANCE_DEG} deg: {100 * (err <= TOLERANCE_DEG).mean():.2f} %")
    assert np.median(err) <= 0.5, msg
    assert (err <= TOLERANCE_DEG).mean() >= TOLERANCE_SHARE, msg
    # A regression bound for this fixed set (its max is 4.6), not a guarantee: over 12,000
    # benchmark images one frame, 77 % lesion, is 17.8 degrees off (module docstring).
    assert err.max() <= 8.0, msg
    # Leaving the lesion out matters: the median over all pixels has a much longer tail.
    err_all = np.abs(image_ita(images, "all") - truth)
    assert np.percentile(err_all, 99) > np.percentile(err, 99) + 1.0, (np.percentile(err_all, 99), msg)
    err_mask = np.abs(image_ita(images, "mask") - truth)
    assert np.median(err_mask) <= 0.5 and (err_mask <= TOLERANCE_DEG).mean() >= TOLERANCE_SHARE


def test_healthy_skin_mask_keeps_skin_and_leaves_out_the_lesion(known_lesions):
    images, alphas, _, _ = known_lesions
    masks = healthy_skin_mask(images)
    assert masks.shape == alphas.shape and masks.dtype == bool
    assert masks.reshape(len(masks), -1).any(axis=1).all()  # never empty
    precision = (alphas[masks] < 0.5).mean()  # measured 0.99
    recall = masks[alphas == 0].mean()  # measured 0.90
    core = masks[alphas > 0.9].mean()  # measured 0.07 (pale BCC nodules on dark skin look like skin)
    assert precision >= 0.97 and recall >= 0.8 and core <= 0.15, (precision, recall, core)
    one = healthy_skin_mask(images[0])
    assert one.shape == (64, 64) and np.array_equal(one, masks[0])


def test_image_ita_shapes_and_large_images():
    img = render_layers(3, "psoriasis", 5, 256)[0]
    assert image_ita(img).shape == (1,)
    assert healthy_skin_mask(img).shape == (256, 256)
    # The mode of a 256 px frame is found on a subgrid (stride 2 by default); all pixels agree.
    assert image_ita(img)[0] == pytest.approx(image_ita(img, max_pixels=256 * 256)[0], abs=0.5)
    assert image_ita(np.zeros((0, 8, 8, 3), dtype=np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="max_pixels"):
        image_ita(img, max_pixels=0)


# --- the three groups of "real" procedural images --------------------------------------------


def _ita_of(counts, namespace):
    samples = list(generate_samples(counts, GROUP_FST, seed=3, size=64, namespace=namespace))
    return (image_ita(np.stack([s.image for s in samples])), np.array([s.group for s in samples]),
            np.array([s.disease for s in samples]))


def test_real_groups_are_ordered_and_held_out_images_agree():
    counts = {(g, d): 20 for g in GROUP_FST for d in DISEASES}
    ref = ReferenceBands.from_real(*_ita_of(counts, "train")[:2])
    assert ref.groups == ("African", "Asian", "Caucasian")
    assert ref.median["African"] < ref.median["Asian"] < ref.median["Caucasian"]
    for g in ref.groups:
        assert ref.p05[g] < ref.median[g] < ref.p95[g]
    h_ita, h_group, h_disease = _ita_of(counts, "heldout")
    _, per_group, summary, confusion = skin_tone_report(h_ita, h_group, h_disease, ref, h_ita, h_group)
    # benchmarks/skin_tone.py (2,575 reference, 3,000 held-out images) measures the ceiling at
    # 0.96 overall: African 0.985, Asian 0.91, Caucasian 0.98 (FST 3-4 borders both others).
    assert summary["skin_tone_agreement"] == summary["skin_tone_agreement_ceiling"]
    assert summary["skin_tone_agreement_ceiling"] >= 0.9, summary
    for g in ref.groups:
        assert summary[f"skin_tone_agreement_ceiling_{g}"] >= 0.8, summary
    assert confusion.loc["African", "Caucasian"] == 0 and confusion.loc["Caucasian", "African"] == 0
    assert per_group["agreement"].tolist() == per_group["agreement_ceiling"].tolist()


# --- the reference bands and the report on made-up ITA values --------------------------------


def _made_up_reference() -> ReferenceBands:
    real = {"African": np.linspace(-70, -30, 101), "Asian": np.linspace(5, 35, 101), "Caucasian": np.linspace(45, 75, 101)}
    ita = np.concatenate(list(real.values()))
    groups = np.repeat(list(real), 101)
    order = np.random.default_rng(0).permutation(len(ita))  # order of the input must not matter
    return ReferenceBands.from_real(ita[order], groups[order])


def test_reference_bands_medians_bands_and_thresholds():
    ref = _made_up_reference()
    assert ref.groups == ("African", "Asian", "Caucasian")
    assert ref.median == pytest.approx({"African": -50.0, "Asian": 20.0, "Caucasian": 60.0})
    assert ref.p05 == pytest.approx({"African": -68.0, "Asian": 6.5, "Caucasian": 46.5})
    assert ref.p95 == pytest.approx({"African": -32.0, "Asian": 33.5, "Caucasian": 73.5})
    assert np.allclose(ref.thresholds, [-15.0, 40.0])
    assert ref.assign([-100, -15.01, -14.99, 39.99, 40.01, 200]).tolist() == [
        "African", "African", "Asian", "Asian", "Caucasian", "Caucasian"]
    assert ref.in_band([-68.1, -67.9, -31.9, 6.6, 73.6], ["African", "African", "African", "Asian", "Caucasian"]).tolist() == [
        False, True, False, True, False]
    with pytest.raises(ValueError, match="length"):
        ReferenceBands.from_real([1.0, 2.0], ["a"])


GEN = [  # (prompted group, disease, ITA): assigned group, in its own band?
    ("African", "psoriasis", -50.0),  # African, in
    ("African", "psoriasis", -60.0),  # African, in
    ("African", "psoriasis", -20.0),  # African, out (> -32)
    ("African", "lichen planus", -10.0),  # Asian, out
    ("African", "lichen planus", 10.0),  # Asian, out
    ("Asian", "psoriasis", 20.0),  # Asian, in
    ("Asian", "psoriasis", 30.0),  # Asian, in
    ("Asian", "psoriasis", 39.9),  # Asian, out (> 33.5)
    ("Asian", "psoriasis", 41.0),  # Caucasian, out
    ("Asian", "psoriasis", -16.0),  # African, out
    ("Caucasian", "lichen planus", 60.0),  # Caucasian, in
    ("Caucasian", "lichen planus", 70.0),  # Caucasian, in
    ("Caucasian", "lichen planus", 50.0),  # Caucasian, in
    ("Caucasian", "lichen planus", 80.0),  # Caucasian, out (> 73.5)
]


def test_skin_tone_report_matches_hand_counts():
    ref = _made_up_reference()
    group, disease, ita = (np.array(c) for c in zip(*GEN))
    per_subclass, per_group, summary, confusion = skin_tone_report(ita.astype(float), group, disease, ref)

    assert per_subclass[["group", "disease"]].values.tolist() == [
        ["African", "lichen planus"], ["African", "psoriasis"], ["Asian", "psoriasis"], ["Caucasian", "lichen planus"]]
    assert per_subclass["n"].tolist() == [2, 3, 5, 4]
    assert per_subclass["in_band"].tolist() == pytest.approx([0.0, 2 / 3, 2 / 5, 3 / 4])
    assert per_subclass["agreement"].tolist() == pytest.approx([0.0, 1.0, 3 / 5, 1.0])
    assert per_subclass["wasserstein"].iloc[1] == pytest.approx(wasserstein_distance([-50, -60, -20], ref.samples["African"]))

    assert per_group["group"].tolist() == ["African", "Asian", "Caucasian"]
    assert per_group["n"].tolist() == [5, 5, 4]
    assert per_group["in_band"].tolist() == pytest.approx([2 / 5, 2 / 5, 3 / 4])
    assert per_group["agreement"].tolist() == pytest.approx([3 / 5, 3 / 5, 1.0])
    assert per_group["real_median"].tolist() == pytest.approx([-50.0, 20.0, 60.0])
    assert "agreement_ceiling" not in per_group

    expected = {
        "skin_tone_agreement": 10 / 14,
        "skin_tone_agreement_African": 3 / 5,
        "skin_tone_agreement_Asian": 3 / 5,
        "skin_tone_agreement_Caucasian": 1.0,
        "skin_tone_agreement_worst_group": 3 / 5,
        "ita_in_band": 7 / 14,
        "ita_in_band_African": 2 / 5,
        "ita_in_band_Asian": 2 / 5,
        "ita_in_band_Caucasian": 3 / 4,
    }
    assert {k: v for k, v in summary.items() if not k.startswith("ita_wasserstein")} == pytest.approx(expected)
    assert summary["ita_wasserstein_Asian"] == pytest.approx(
        wasserstein_distance([20, 30, 39.9, 41, -16], ref.samples["Asian"]))
    assert set(summary) == set(expected) | {f"ita_wasserstein_{g}" for g in ref.groups}
    assert all(isinstance(v, float) for v in summary.values())

    assert confusion.index.name == "prompted" and confusion.columns.name == "assigned"
    assert confusion.index.tolist() == confusion.columns.tolist() == ["African", "Asian", "Caucasian"]
    assert confusion.values.tolist() == [[3, 2, 0], [1, 3, 1], [0, 0, 4]]
    assert confusion.values.sum() == len(GEN)


def test_a_group_shifted_by_40_degrees_loses_its_agreement():
    ref = _made_up_reference()
    real_ita = np.concatenate([ref.samples[g] for g in ref.groups])
    real_group = np.repeat(ref.groups, 101)
    gen_ita = real_ita + np.where(real_group == "Asian", 40.0, 0.0)  # the Asian pool comes out 40 deg too light
    _, per_group, summary, confusion = skin_tone_report(
        gen_ita, real_group, np.full(len(gen_ita), "psoriasis"), ref, heldout_ita=real_ita, heldout_group=real_group)
    assert summary["skin_tone_agreement_Asian"] == 0.0
    assert summary["skin_tone_agreement_African"] == summary["skin_tone_agreement_Caucasian"] == 1.0
    assert summary["skin_tone_agreement_worst_group"] == 0.0
    assert summary["ita_wasserstein_Asian"] == pytest.approx(40.0)
    assert summary["ita_wasserstein_African"] == pytest.approx(0.0, abs=1e-9)
    assert summary["ita_in_band_Asian"] < 0.1
    assert confusion.loc["Asian"].tolist() == [0, 0, 101]
    # Held-out real images are the ceiling: every group reaches it except the shifted one.
    assert summary["skin_tone_agreement_ceiling"] == 1.0
    assert {g: summary[f"skin_tone_agreement_ceiling_{g}"] for g in ref.groups} == {g: 1.0 for g in ref.groups}
    assert per_group["agreement_ceiling"].tolist() == [1.0, 1.0, 1.0]


def test_skin_tone_report_rejects_bad_input():
    ref = _made_up_reference()
    with pytest.raises(ValueError, match="no real reference"):
        skin_tone_report([1.0], ["Martian"], ["psoriasis"], ref)
    with pytest.raises(ValueError, match="length"):
        skin_tone_report([1.0, 2.0], ["Asian"], ["psoriasis"], ref)
    with pytest.raises(ValueError, match="length"):
        skin_tone_report([1.0], ["Asian"], ["psoriasis", "psoriasis"], ref)
    with pytest.raises(ValueError, match="non-finite"):
        skin_tone_report([np.nan], ["Asian"], ["psoriasis"], ref)
    with pytest.raises(ValueError, match="both"):
        skin_tone_report([1.0], ["Asian"], ["psoriasis"], ref, heldout_ita=[1.0])
    assert isinstance(skin_tone_report([1.0], ["Asian"], ["psoriasis"], ref)[0], pd.DataFrame)
