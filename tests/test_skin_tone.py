"""Skin-tone fidelity: ITA of flat colours, the healthy-skin rule on images with a known lesion,
group separation on the procedural "real" images, the W1 ratio that a flat-patch pool fails,
and the report on made-up ITA values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance
from skimage.color import lab2rgb

from fairskin.data.prepare import reference_counts
from fairskin.data.synthetic import DISEASES, generate_samples, image_seed, render_layers, scaled_counts
from fairskin.metrics.skin_tone import (
    RULES,
    TOLERANCE_DEG,
    TOLERANCE_SHARE,
    ReferenceBands,
    healthy_skin_mask,
    heldout_mix_subsample,
    image_ita,
    ita_degrees,
    ita_distance_ratios,
    skin_tone_report,
    srgb_to_lab,
    wasserstein_1d,
)

GROUP_FST = {"Caucasian": [1, 2], "Asian": [3, 4], "African": [5, 6]}


# --- ITA of flat colours, against CIELAB written out here ------------------------------------

D65_WHITE = (0.95047, 1.0, 1.08883)  # XYZ of the D65 white, 2 degree observer, Y = 1
SRGB_TO_XYZ = np.array(
    [  # IEC 61966-2-1, linear sRGB -> XYZ (D65)
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)


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
    msg = (
        f"over {len(err)} images: median {np.median(err):.2f}, p99 {np.percentile(err, 99):.2f}, "
        f"max {err.max():.2f} deg ({disease[worst]}, FST {fst[worst]}); "
        f"within {TOLERANCE_DEG} deg: {100 * (err <= TOLERANCE_DEG).mean():.2f} %"
    )
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


REAL_SIZE = 32  # px: enough for one skin colour per image, and a quarter of 64 px's cost
DRAWS = 4  # independent real draws, each the held-out split of one round and part of the others' fresh pool


def _ita_of(counts, namespace, size=REAL_SIZE):
    samples = list(generate_samples(counts, GROUP_FST, seed=3, size=size, namespace=namespace))
    return (
        image_ita(np.stack([s.image for s in samples])),
        np.array([s.group for s in samples]),
        np.array([s.disease for s in samples]),
    )


@pytest.fixture(scope="module")
def procedural_real():
    """ITAs ``(ita, group, disease)`` of procedural "real" images in the Fitzpatrick17k subclass mix.

    A training reference (half the count table, 1,291 images) and ``DRAWS`` independent real draws
    (a fifth of it, 514 images each: African 59, Asian 152, Caucasian 303), each from its own
    namespace, i.e. other seeds of the generator. Round k: draw k is the held-out split, the
    other draws together (1,542 images) a fresh real sample scored as if generated.
    """
    counts = reference_counts()
    train = _ita_of(scaled_counts(counts, 0.5, minimum=1), "train")
    draws = [_ita_of(scaled_counts(counts, 0.2, minimum=1), f"heldout-{k}") for k in range(DRAWS)]
    return train, draws


def _round(draws, k):
    """(held-out, fresh real sample) of round k: draw k, and the other draws concatenated."""
    others = [d for j, d in enumerate(draws) if j != k]
    return draws[k], tuple(np.concatenate(parts) for parts in zip(*others))


def _nearest_median(ita, ref):
    """The group of nearest real median, by brute force (not ``ReferenceBands.assign``'s thresholds)."""
    medians = np.array([ref.median[g] for g in ref.groups])
    return np.asarray(ref.groups)[np.abs(np.asarray(ita)[:, None] - medians[None, :]).argmin(axis=1)]


def test_real_groups_are_ordered_and_the_ceiling_matches_a_hand_count(procedural_real):
    (t_ita, t_group, _), draws = procedural_real
    ref = ReferenceBands.from_real(t_ita, t_group)
    assert ref.groups == ("African", "Asian", "Caucasian")
    assert ref.median["African"] < ref.median["Asian"] < ref.median["Caucasian"]
    for g in ref.groups:
        assert ref.p05[g] < ref.median[g] < ref.p95[g]
    (h_ita, h_group, _), (f_ita, f_group, f_disease) = _round(draws, 0)
    per_subclass, per_group, summary, confusion = skin_tone_report(f_ita, f_group, f_disease, ref, h_ita, h_group)

    h_hit, f_assigned = _nearest_median(h_ita, ref) == h_group, _nearest_median(f_ita, ref)
    for g in ref.groups:
        assert summary[f"skin_tone_agreement_ceiling_{g}"] == pytest.approx(h_hit[h_group == g].mean())
        assert summary[f"skin_tone_agreement_{g}"] == pytest.approx((f_assigned[f_group == g] == g).mean())
        assert confusion.loc[g].tolist() == [int(((f_group == g) & (f_assigned == a)).sum()) for a in ref.groups]
    assert summary["skin_tone_agreement_ceiling"] == pytest.approx(h_hit.mean())
    # benchmarks/skin_tone.py (2,575 reference, 3,000 held-out images at 64 px) measures the ceiling
    # at 0.96 overall: African 0.985, Asian 0.91, Caucasian 0.98 (FST 3-4 borders both others).
    assert summary["skin_tone_agreement_ceiling"] >= 0.9, summary
    for g in ref.groups:
        assert summary[f"skin_tone_agreement_ceiling_{g}"] >= 0.8, summary
    # Two independent real samples: the fresh one's agreement lies within 3 binomial standard errors
    # of the held-out ceiling (this could fail; it does not by construction).
    for g in ref.groups:
        p, c = summary[f"skin_tone_agreement_{g}"], summary[f"skin_tone_agreement_ceiling_{g}"]
        n, m = int((f_group == g).sum()), int((h_group == g).sum())
        assert abs(p - c) <= 3 * math.sqrt(p * (1 - p) / n + c * (1 - c) / m) + 1e-9, (g, p, c)
    assert confusion.loc["African", "Caucasian"] == 0 and confusion.loc["Caucasian", "African"] == 0


def flat_patch(ita_deg: float, size: int = 8) -> np.ndarray:
    """A uniform uint8 ``(size, size, 3)`` patch whose ITA is ``ita_deg`` (to ~0.3 degrees).

    CIELAB on the ray ``atan2(L* - 50, b*) = ita_deg`` at a* = 10, back to sRGB by scikit-image's
    ``lab2rgb``; of the radii 15..45, the one whose 8-bit colour (ITA by ``hand_lab``) lands nearest.
    """
    best = None
    theta = math.radians(ita_deg)
    for r in np.linspace(15.0, 45.0, 31):
        lab = np.array([[[50.0 + r * math.sin(theta), 10.0, r * math.cos(theta)]]])
        rgb = tuple(int(v) for v in (np.clip(lab2rgb(lab), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[0, 0])
        L, _, b = hand_lab(rgb)
        err = abs(math.degrees(math.atan2(L - 50.0, b)) - ita_deg)
        if best is None or err < best[0]:
            best = (err, rgb)
    return np.full((size, size, 3), best[1], dtype=np.uint8)


def test_a_flat_patch_pool_saturates_agreement_but_fails_the_w1_ratio(procedural_real):
    (t_ita, t_group, _), draws = procedural_real
    ref = ReferenceBands.from_real(t_ita, t_group)
    patch = {g: flat_patch(ref.median[g]) for g in ref.groups}
    for g in ref.groups:
        assert image_ita(patch[g])[0] == pytest.approx(ref.median[g], abs=0.5)
    fresh_ratios, flat_ratios = [], []
    for k in range(DRAWS):
        (h_ita, h_group, h_disease), (f_ita, f_group, f_disease) = _round(draws, k)
        # The flat pool: one uniform colour per group, 6 images per subclass (the real mix does not matter
        # to a pool of identical values), ITA measured on the images.
        keys = [(g, d) for g in ref.groups for d in DISEASES for _ in range(6)]
        flat_group, flat_disease = (np.array(c) for c in zip(*keys))
        flat_ita = image_ita(np.stack([patch[g] for g in flat_group]))
        _, flat_table, flat, _ = skin_tone_report(
            flat_ita, flat_group, flat_disease, ref, h_ita, h_group, heldout_disease=h_disease, seed=k
        )
        _, real_table, real, _ = skin_tone_report(
            f_ita, f_group, f_disease, ref, h_ita, h_group, heldout_disease=h_disease, seed=k
        )
        for g in ref.groups:
            # The old endpoints saturate: perfect agreement and in-band share, at or above the real ceiling ...
            assert flat[f"skin_tone_agreement_{g}"] == flat[f"ita_in_band_{g}"] == 1.0
            assert flat[f"skin_tone_agreement_{g}"] >= flat[f"skin_tone_agreement_ceiling_{g}"]
            # ... the W1 ratio does not: a flat pool sits at least 2 floors away (measured 3.4-17), zero spread.
            assert flat[f"skin_tone_w1_ratio_{g}"] >= 2.0, (k, g, flat)
            assert flat[f"skin_tone_spread_ratio_{g}"] == 0.0
            assert flat[f"skin_tone_w1_ratio_{g}"] > real[f"skin_tone_w1_ratio_{g}"], (k, g)
            assert 0.7 <= real[f"skin_tone_spread_ratio_{g}"] <= 1.4, (k, g, real)
            assert flat[f"skin_tone_w1_floor_{g}"] == real[f"skin_tone_w1_floor_{g}"] > 0
            fresh_ratios.append(real[f"skin_tone_w1_ratio_{g}"])
            flat_ratios.append(flat[f"skin_tone_w1_ratio_{g}"])
        assert flat["skin_tone_w1_ratio_worst_group"] == max(flat[f"skin_tone_w1_ratio_{g}"] for g in ref.groups)
        assert flat["skin_tone_spread_ratio_worst_group"] == 0.0
        # Asian's ceiling is ~0.91 (FST 3-4 borders both others): a flat pool's 1.0 lies well above it.
        assert flat["skin_tone_agreement_above_ceiling_Asian"] == flat["skin_tone_agreement_above_ceiling"] == 1.0
        assert flat_table["above_ceiling"].tolist() == [
            flat[f"skin_tone_agreement_above_ceiling_{g}"] for g in flat_table["group"]
        ]
        assert real_table[["w1_ratio", "w1_floor", "spread_ratio"]].notna().all().all()
    # A real sample scores about 1 (measured 0.45-1.73 over these 4 rounds x 3 groups, median 1.08). One
    # round's ratio is noisy, whatever N (the floor is one held-out draw: per group p90 ~1.9 and 15-25 %
    # above 1.5 over 200 simulated rounds), so the check is on the median over rounds and groups.
    assert np.median(fresh_ratios) <= 1.5, fresh_ratios
    assert min(flat_ratios) >= 2.0 * np.median(fresh_ratios), (flat_ratios, fresh_ratios)


def test_heldout_mix_subsample_follows_the_heldout_disease_counts(procedural_real):
    _, draws = procedural_real
    (_, h_group, h_disease), (_, f_group, f_disease) = _round(draws, 0)
    rng = np.random.default_rng(5)
    for g in GROUP_FST:
        pool_d, held_d = f_disease[f_group == g], h_disease[h_group == g]
        rows = heldout_mix_subsample(pool_d, held_d, rng)
        assert pd.Series(pool_d[rows]).value_counts().to_dict() == pd.Series(held_d).value_counts().to_dict()
        assert len(set(rows.tolist())) == len(rows)  # the pool has 3x the held-out count: no repeats
    # By hand: x has enough rows (drawn without replacement), y has too few (with), w is missing from
    # the pool (left out), z is missing from the held-out set (weight 0).
    pool = np.array(["x"] * 10 + ["y"] * 2 + ["z"] * 5)
    rows = heldout_mix_subsample(pool, ["y", "x", "w", "x", "y", "x", "w", "y", "x"], np.random.default_rng(0))
    assert pd.Series(pool[rows]).value_counts().to_dict() == {"x": 4, "y": 3}
    x_rows = rows[pool[rows] == "x"]
    assert len(set(x_rows.tolist())) == 4 and set(rows[pool[rows] == "y"].tolist()) <= {10, 11}
    again = heldout_mix_subsample(pool, ["y", "x", "w", "x", "y", "x", "w", "y", "x"], np.random.default_rng(0))
    assert np.array_equal(rows, again)  # seeded


# --- the reference bands and the report on made-up ITA values --------------------------------


def _made_up_reference() -> ReferenceBands:
    real = {
        "African": np.linspace(-70, -30, 101),
        "Asian": np.linspace(5, 35, 101),
        "Caucasian": np.linspace(45, 75, 101),
    }
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
        "African",
        "African",
        "Asian",
        "Asian",
        "Caucasian",
        "Caucasian",
    ]
    assert ref.in_band(
        [-68.1, -67.9, -31.9, 6.6, 73.6], ["African", "African", "African", "Asian", "Caucasian"]
    ).tolist() == [False, True, False, True, False]
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
        ["African", "lichen planus"],
        ["African", "psoriasis"],
        ["Asian", "psoriasis"],
        ["Caucasian", "lichen planus"],
    ]
    assert per_subclass["n"].tolist() == [2, 3, 5, 4]
    assert per_subclass["in_band"].tolist() == pytest.approx([0.0, 2 / 3, 2 / 5, 3 / 4])
    assert per_subclass["agreement"].tolist() == pytest.approx([0.0, 1.0, 3 / 5, 1.0])
    assert per_subclass["wasserstein"].iloc[1] == pytest.approx(
        wasserstein_distance([-50, -60, -20], ref.samples["African"])
    )

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
        wasserstein_distance([20, 30, 39.9, 41, -16], ref.samples["Asian"])
    )
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
        gen_ita, real_group, np.full(len(gen_ita), "psoriasis"), ref, heldout_ita=real_ita, heldout_group=real_group
    )
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


# --- W1 ratios, spread and the ceiling flag on hand-built ITA values -----------------------------


def test_wasserstein_1d_matches_scipy_and_hand_worked_values():
    # A shift by 5 moves every unit of mass 5 degrees.
    assert wasserstein_1d([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    # Quantile functions: u is 0 on (0, 2/3], 10 on (2/3, 1]; v is 2 on (0, 1/2], 8 on (1/2, 1]:
    # W1 = 2 * 1/2 + 8 * 1/6 + 2 * 1/3 = 3.
    assert wasserstein_1d([0, 10, 0], [8, 2]) == pytest.approx(3.0)
    assert wasserstein_1d([80, 80], [50, 60, 70, 80]) == pytest.approx(15.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        u, v = rng.normal(0, 20, rng.integers(1, 40)), rng.normal(5, 10, rng.integers(1, 40))
        assert wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d([], [1.0])


# Reference (training) ITAs, held-out real ITAs with their diseases, and a pool, per group:
# A  reference 0 10 20 30 (IQR 22.5 - 7.5 = 15); held-out 5 15 (x) 25 35 (y): every value 5 off, floor 5.
#    pool 0 10 (x) 20 60 (y) and 1000 (z, a disease without held-out images: weight 0 in W1, in the IQR).
#    Subsample = the x and y rows (counts equal the held-out's): W1 to the reference = |60 - 30| / 4 = 7.5,
#    ratio 1.5; IQR of 0 10 20 60 1000 = 60 - 10 = 50, spread 50 / 15.
# B  reference 50 60 70 80 (IQR 15); held-out 55 65 (x): floor 5 / 4 + 5 / 4 + 5 / 4 + 15 / 4 = 7.5;
#    pool 80 (x): one row for two held-out, drawn with replacement, 80 80: W1 = (30 + 20 + 10) / 4 = 15,
#    ratio 2; IQR 0, spread 0.
HAND = {
    "reference": {"A": [0.0, 10.0, 20.0, 30.0], "B": [50.0, 60.0, 70.0, 80.0]},
    "heldout": [
        ("A", "x", 5.0),
        ("A", "x", 15.0),
        ("A", "y", 25.0),
        ("A", "y", 35.0),
        ("B", "x", 55.0),
        ("B", "x", 65.0),
    ],
    "pool": [
        ("A", "x", 0.0),
        ("A", "x", 10.0),
        ("A", "y", 20.0),
        ("A", "y", 60.0),
        ("A", "z", 1000.0),
        ("B", "x", 80.0),
    ],
}


def _hand_columns(rows):
    group, disease, ita = (np.array(c) for c in zip(*rows))
    return ita.astype(float), group, disease


def test_ita_distance_ratios_by_hand():
    p_ita, p_group, p_disease = _hand_columns(HAND["pool"])
    h_ita, h_group, h_disease = _hand_columns(HAND["heldout"])
    table = ita_distance_ratios(p_ita, p_group, p_disease, h_ita, h_group, h_disease, HAND["reference"], seed=1)
    assert table["group"].tolist() == ["A", "B"]
    assert table["n"].tolist() == [5, 1] and table["n_heldout"].tolist() == [4, 2]
    assert table["n_subsample"].tolist() == [4, 2]
    assert table["w1_floor"].tolist() == pytest.approx([5.0, 7.5])
    assert table["w1_floor"].tolist() == pytest.approx(
        [wasserstein_distance([5, 15, 25, 35], [0, 10, 20, 30]), wasserstein_distance([55, 65], [50, 60, 70, 80])]
    )
    assert table["w1_pool"].tolist() == pytest.approx([7.5, 15.0])
    assert table["w1_ratio"].tolist() == pytest.approx([1.5, 2.0])
    assert table["pool_iqr"].tolist() == pytest.approx([50.0, 0.0])
    assert table["real_iqr"].tolist() == pytest.approx([15.0, 15.0])
    assert table["spread_ratio"].tolist() == pytest.approx([50 / 15, 0.0])

    # Through the report: the reference is the ReferenceBands' samples (medians A 15, B 65, threshold 40).
    ref = ReferenceBands.from_real(np.concatenate(list(HAND["reference"].values())), np.repeat(["A", "B"], 4))
    _, per_group, summary, _ = skin_tone_report(
        p_ita, p_group, p_disease, ref, h_ita, h_group, heldout_disease=h_disease, seed=1
    )
    assert [summary["skin_tone_w1_ratio_A"], summary["skin_tone_w1_ratio_B"]] == pytest.approx([1.5, 2.0])
    assert summary["skin_tone_w1_ratio_worst_group"] == pytest.approx(2.0)
    assert [summary["skin_tone_w1_floor_A"], summary["skin_tone_w1_floor_B"]] == pytest.approx([5.0, 7.5])
    assert summary["skin_tone_spread_ratio_A"] == pytest.approx(50 / 15) and summary["skin_tone_spread_ratio_B"] == 0.0
    assert summary["skin_tone_spread_ratio_worst_group"] == 0.0  # |log 0| beats |log 3.33|
    # Ceiling 1.0 in both groups (every held-out ITA is nearest its own median); the pool's A agreement is 3/5.
    assert summary["skin_tone_agreement_above_ceiling_A"] == summary["skin_tone_agreement_above_ceiling_B"] == 0.0
    assert summary["skin_tone_agreement_above_ceiling"] == 0.0
    np.testing.assert_allclose(
        per_group[["w1_ratio", "w1_floor", "spread_ratio", "above_ceiling"]].to_numpy(float),
        [[1.5, 5.0, 50 / 15, 0.0], [2.0, 7.5, 0.0, 0.0]],
    )
    assert all(isinstance(v, float) for v in summary.values())


def test_above_ceiling_flag_by_hand():
    ref = _made_up_reference()  # medians -50, 20, 60; thresholds -15, 40
    # Held-out: African 8 of 10 assigned right (ceiling 0.8), Asian 9 of 10 (0.9), Caucasian 10 of 10 (1.0).
    h_ita = [-50.0] * 8 + [0.0] * 2 + [20.0] * 9 + [50.0] + [60.0] * 10
    h_group = ["African"] * 10 + ["Asian"] * 10 + ["Caucasian"] * 10
    # Pool: African 20 of 20 (1.0), Asian 19 of 20 (0.95), Caucasian 20 of 20 (1.0).
    g_ita = [-50.0] * 20 + [20.0] * 19 + [50.0] + [60.0] * 20
    g_group = ["African"] * 20 + ["Asian"] * 20 + ["Caucasian"] * 20
    _, per_group, summary, _ = skin_tone_report(g_ita, g_group, ["psoriasis"] * 60, ref, h_ita, h_group)
    # African: 1.0 - 0.8 = 0.2 > sqrt(0 / 20 + 0.8 * 0.2 / 10) = 0.126 -> flagged.
    # Asian: 0.95 - 0.9 = 0.05 < sqrt(0.95 * 0.05 / 20 + 0.9 * 0.1 / 10) = 0.107 -> not.
    # Caucasian: 1.0 - 1.0 = 0 -> not.
    assert [summary[f"skin_tone_agreement_above_ceiling_{g}"] for g in ref.groups] == [1.0, 0.0, 0.0]
    assert summary["skin_tone_agreement_above_ceiling"] == 1.0
    assert per_group["above_ceiling"].tolist() == [1.0, 0.0, 0.0]
    assert not any(k.startswith(("skin_tone_w1", "skin_tone_spread")) for k in summary)  # no heldout_disease


def test_ita_distance_ratios_reject_missing_groups_and_a_zero_floor():
    p_ita, p_group, p_disease = _hand_columns(HAND["pool"])
    h_ita, h_group, h_disease = _hand_columns(HAND["heldout"])
    a_only = h_group == "A"
    with pytest.raises(ValueError, match="'B' has no held-out"):
        ita_distance_ratios(
            p_ita, p_group, p_disease, h_ita[a_only], h_group[a_only], h_disease[a_only], HAND["reference"]
        )
    with pytest.raises(ValueError, match="'B' has no reference"):
        ita_distance_ratios(p_ita, p_group, p_disease, h_ita, h_group, h_disease, {"A": HAND["reference"]["A"]})
    same = {"A": [5.0, 15.0, 25.0, 35.0], "B": HAND["reference"]["B"]}
    with pytest.raises(ValueError, match="'A'.*floor is 0"):
        ita_distance_ratios(p_ita, p_group, p_disease, h_ita, h_group, h_disease, same)
    with pytest.raises(ValueError, match="'B'.*no pool image"):
        ita_distance_ratios(
            p_ita, p_group, np.where(p_group == "B", "z", p_disease), h_ita, h_group, h_disease, HAND["reference"]
        )
    ref = _made_up_reference()
    with pytest.raises(ValueError, match="heldout_disease needs"):
        skin_tone_report([1.0], ["Asian"], ["psoriasis"], ref, heldout_disease=["psoriasis"])
