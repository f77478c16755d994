"""Generation metrics (fairskin.metrics.generation) with a tiny random ViT on procedural images, offline, CPU."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from fairskin.classify.models import build_classifier
from fairskin.data.synthetic import DISEASES, render_lesion_image
from fairskin.metrics import generation as gen
from fairskin.metrics.plots import plot_fid_heatmap, plot_tsne

SIZE = 32
GROUPS = {"light": 2, "medium": 4, "dark": 6}  # group -> the Fitzpatrick type its images are rendered with
TWO_DISEASES = list(DISEASES[:2])


def images(fst: int, disease: str, n: int, start: int = 0) -> np.ndarray:
    """uint8 (n, SIZE, SIZE, 3) procedural images, seeds start .. start + n - 1."""
    return np.stack([render_lesion_image(fst, disease, seed, SIZE) for seed in range(start, start + n)])


def shift_red(pixels: np.ndarray, amount: int) -> np.ndarray:
    out = pixels.astype(np.int16)
    out[..., 0] += amount
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("tiny", TWO_DISEASES, image_size=SIZE)


@pytest.fixture(scope="module")
def space(model):
    return gen.classifier_space(model, SIZE)


@pytest.fixture(scope="module")
def lesions():
    return images(2, DISEASES[0], 40)


def test_fid_is_zero_against_itself_and_grows_with_a_colour_shift(space, lesions):
    real = lesions[:20]
    fid = {k: gen.subclass_metrics(shift_red(real, k), real, space)["fid"] for k in (0, 30, 60)}
    assert abs(fid[0]) < 1e-3
    other_half = gen.subclass_metrics(lesions[20:], real, space)["fid"]
    assert fid[30] > fid[0] + 0.2
    assert fid[60] > fid[30] + 0.2  # monotone in the size of the shift
    assert fid[60] > other_half  # a colour cast is further away than fresh images of the same subclass


def test_fid_and_kid_of_a_12_image_subclass_match_a_computation_written_here(space, lesions):
    out = gen.subclass_metrics(lesions[:12], lesions[12:24], space)
    assert out["kid_subset_size"] == 12 and out["n_generated"] == out["n_real"] == 12
    x = gen.space_features(space, lesions[:12]).astype(np.float64)  # (12, D): what torch-fidelity sees
    y = gen.space_features(space, lesions[12:24]).astype(np.float64)
    # FID = |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2)), C with ddof 1; scipy's Schur square root
    # (torch-fidelity sums the square roots of eigenvalues instead).
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    fid = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cx + cy - 2 * scipy.linalg.sqrtm(cx @ cy).real)
    assert out["fid"] == pytest.approx(fid, rel=1e-5, abs=1e-6)
    # KID: the unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / D + 1)^3. A subset of 12 of 12 is the
    # whole set, so all 100 subsets give this one value and the std is 0.
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((u @ v.T / d + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
    kid = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    assert out["kid_mean"] == pytest.approx(kid, rel=1e-4, abs=1e-6)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-5)


def test_fid_of_two_gaussians_matches_the_closed_form():
    # Diagonal covariances commute: FID = |mu_1 - mu_2|^2 + sum_i (sigma_1i - sigma_2i)^2 = 1 + 1 + 0.25
    # (measured over 20 seeds at N = 20,000: mean 2.250, sd 0.04).
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, [1.0, 1.0, 1.0], size=(20000, 3))
    b = rng.normal([1.0, 0.0, 0.0], [2.0, 1.0, 0.5], size=(20000, 3))
    assert gen.features_metrics(a, b, kid_subset_size=100)["fid"] == pytest.approx(2.25, abs=0.15)
    assert abs(gen.features_metrics(a, rng.normal(0.0, 1.0, size=(20000, 3)), kid_subset_size=100)["fid"]) < 0.02


def test_kid_subset_size_rule():
    assert gen.kid_subset_size_for(12, 400) == 12
    assert gen.kid_subset_size_for(5000, 3000) == 1000
    assert gen.kid_subset_size_for(300, 200, requested=50) == 50
    assert gen.kid_subset_size_for(30, 20, requested=500) == 20
    with pytest.raises(ValueError):
        gen.kid_subset_size_for(1, 20)
    assert gen.isc_splits_for(1) == 1 and gen.isc_splits_for(7) == 3 and gen.isc_splits_for(500) == 10


def test_extractor_is_named_by_weights_and_leaves_the_model_alone(model, space, lesions):
    assert gen.register_classifier_extractor(model, SIZE) == space.name  # same weights: same name, no error
    assert gen.register_classifier_extractor(model, 64) != space.name
    torch.manual_seed(1)
    other = build_classifier("tiny", TWO_DISEASES, image_size=SIZE)
    assert gen.register_classifier_extractor(other, SIZE) != space.name
    model.train()
    gen.subclass_metrics(lesions[:4], lesions[4:8], space)
    assert model.training and all(p.requires_grad for p in model.parameters())
    # the arrays path and torch-fidelity's path give the same features
    direct = gen.classifier_features(model, lesions[:10], SIZE, batch_size=4)
    via_fidelity = gen.space_features(space, lesions[:10])
    assert direct.shape == (10, model.config.hidden_size)
    np.testing.assert_allclose(direct, via_fidelity, atol=1e-5)
    assert gen.classifier_logits(model, lesions[:3], SIZE).shape == (3, len(TWO_DISEASES))


def test_inception_needs_a_local_weights_file(tmp_path, model):
    with pytest.raises(FileNotFoundError):
        gen.feature_space(model, SIZE, inception_weights_path=tmp_path / "missing.pth")


def test_real_feature_cache_is_reused(tmp_path, space, lesions):
    real, generated = lesions[:20], lesions[20:]
    name = gen.real_cache_name(space.name, [f"{i:064x}" for i in range(20)], ("light", DISEASES[0]))
    assert name == gen.real_cache_name(space.name, [f"{i:064x}" for i in reversed(range(20))], ("light", DISEASES[0]))
    assert name != gen.real_cache_name(space.name, [f"{i:064x}" for i in range(20)], ("dark", DISEASES[0]))
    assert name != gen.real_cache_name("another-extractor", [f"{i:064x}" for i in range(20)], ("light", DISEASES[0]))

    first = gen.subclass_metrics(generated, real, space, cache_name=name, cache_root=tmp_path)
    assert (tmp_path / f"{name}-{space.name}-features-pre_logits.pt").is_file()
    assert (tmp_path / f"{name}-{space.name}-stat-fid-pre_logits.pt").is_file()
    # Same cache name, different real pixels: the cached features are used, so the figures repeat.
    other_real = shift_red(real, 80)
    again = gen.subclass_metrics(generated, other_real, space, cache_name=name, cache_root=tmp_path)
    assert again["fid"] == first["fid"] and again["kid_mean"] == first["kid_mean"]
    uncached = gen.subclass_metrics(generated, other_real, space)
    assert uncached["fid"] > first["fid"] + 0.2


def test_summary_weights_groups_by_real_counts_by_hand():
    table = pd.DataFrame(
        {
            "group": ["a", "a", "b", "b", "b"],
            "disease": ["x", "y", "x", "y", "z"],
            "fid": [10.0, 40.0, 20.0, 20.0, np.nan],  # the NaN row was not evaluated
            "kid_mean": [1.0, 3.0, 2.0, 4.0, np.nan],
            "n_real": [30, 10, 5, 5, 1],
        }
    )
    s = gen.summarise_subclasses(table, ["a", "b"])
    assert s["fid_a"] == pytest.approx((30 * 10 + 10 * 40) / 40)  # 17.5
    assert s["fid_b"] == pytest.approx(20.0)
    assert s["kid_a"] == pytest.approx((30 * 1 + 10 * 3) / 40) and s["kid_b"] == pytest.approx(3.0)
    assert s["fid_mean"] == pytest.approx(22.5)  # unweighted over evaluated subclasses
    assert s["fid_var_subclass"] == pytest.approx(475 / 3)  # deviations -12.5, 17.5, -2.5, -2.5; ddof 1
    assert s["fid_var_group"] == pytest.approx(((17.5 - 18.75) ** 2 + (20 - 18.75) ** 2) / 1)
    assert s["fid_var_ddof"] == 1 and s["n_subclasses_evaluated"] == 4


def test_memorisation_flags_copies_of_training_images(model):
    train = {
        "copied": images(2, DISEASES[0], 20),
        "fresh": images(6, DISEASES[1], 20),
        "few": images(4, DISEASES[0], 20),
    }
    heldout = {
        "copied": images(2, DISEASES[0], 10, start=100),
        "fresh": images(6, DISEASES[1], 10, start=100),
        "few": images(4, DISEASES[0], 1, start=100),
    }
    generated = {
        "copied": train["copied"][:10],
        "fresh": images(6, DISEASES[1], 10, start=200),
        "few": images(4, DISEASES[0], 5, start=200),
    }

    def stack(parts):
        feats = np.concatenate([gen.classifier_features(model, parts[k], SIZE) for k in parts])
        labels = np.concatenate([[k] * len(parts[k]) for k in parts])
        return feats, labels

    table = gen.memorisation(*stack(generated), *stack(train), *stack(heldout)).set_index("subclass")
    assert table.loc["copied", "memorised_fraction"] == 1.0
    assert table.loc["copied", "median_gen_to_train"] < 1e-4 < table.loc["copied", "threshold"]
    assert table.loc["fresh", "memorised_fraction"] < 0.5
    assert table.loc["fresh", "threshold_source"] == "subclass"
    assert table.loc["few", "threshold_source"] == "global" and table.loc["few", "n_heldout"] == 1
    assert table.loc["fresh", "n_generated"] == 10 and table.loc["fresh", "n_train"] == 20


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(gen.nearest_distances(q, r, chunk=3), brute, rtol=1e-12)


@pytest.fixture(scope="module")
def report(space, tmp_path_factory):
    """3 groups x 2 diseases; real counts differ per subclass; light's first disease is pooled as copies."""
    pool, pool_meta, real, real_meta, held, held_meta = [], [], [], [], [], []
    for gi, (group, fst) in enumerate(GROUPS.items()):
        for di, disease in enumerate(TWO_DISEASES):
            n_real = 12 + 4 * gi + 3 * di
            r = images(fst, disease, n_real)
            p = r[:12].copy() if (group, di) == ("light", 0) else shift_red(images(fst, disease, 12, 500), 20 * gi)
            h = images(fst, disease, 3, 900)
            for pixels, meta, part in ((real, real_meta, r), (pool, pool_meta, p), (held, held_meta, h)):
                pixels.append(part)
                meta.extend([{"group": group, "disease": disease}] * len(part))
    cache = tmp_path_factory.mktemp("fidelity-cache")
    out = gen.generation_report(
        np.concatenate(pool),
        pd.DataFrame(pool_meta),
        np.concatenate(real),
        pd.DataFrame(real_meta),
        list(GROUPS),
        TWO_DISEASES,
        space,
        cache_root=cache,
        heldout_pixels=np.concatenate(held),
        heldout_meta=pd.DataFrame(held_meta),
    )
    return out, cache


def test_report_variances_and_group_figures(report):
    out, cache = report
    table, s = out.per_subclass, out.summary
    assert len(table) == 6 and table["fid"].notna().all()
    assert s["fid_var_subclass"] == pytest.approx(np.var(table["fid"].to_numpy(), ddof=1))
    assert s["fid_var_group"] == pytest.approx(np.var([s[f"fid_{g}"] for g in GROUPS], ddof=1))
    assert s["fid_var_ddof"] == 1
    assert s["fid_mean"] == pytest.approx(table["fid"].mean())
    for g in GROUPS:
        rows = table[table["group"] == g]
        assert s[f"fid_{g}"] == pytest.approx(np.average(rows["fid"], weights=rows["n_real"]))
        assert s[f"kid_{g}"] == pytest.approx(np.average(rows["kid_mean"], weights=rows["n_real"]))
    assert set(table["n_real"]) == {12, 15, 16, 19, 20, 23}
    assert "not Inception" in s["feature_extractor"] and s["feature_extractor_name"].startswith("fairskin-vit-")
    assert len(list(cache.glob("real-*-features-pre_logits.pt"))) == 6


def test_report_inception_score_and_memorisation(report):
    out, _ = report
    s = out.summary
    assert math.isfinite(s["is_mean"]) and s["is_mean"] >= 1 - 1e-9  # a random head gives IS ~ 1
    assert all(math.isfinite(s[f"is_mean_{g}"]) for g in GROUPS)
    mem = out.per_subclass.set_index(["group", "disease"])["memorised_fraction"]
    assert mem[("light", TWO_DISEASES[0])] == 1.0
    assert mem.drop(("light", TWO_DISEASES[0])).max() < 0.5
    assert s["memorised_fraction_light"] >= 0.5 and s["memorised_fraction"] == pytest.approx(mem.mean())


def test_plots_write_pngs(tmp_path, model, report, lesions):
    feats = gen.classifier_features(model, lesions, SIZE)
    groups = np.array(["light", "dark"] * 20)
    diseases = np.array([DISEASES[0]] * 25 + [DISEASES[1]] * 15)
    for path in (
        plot_tsne(feats, groups, diseases, tmp_path / "tsne.png", "t-SNE"),
        plot_fid_heatmap(report[0].per_subclass, tmp_path / "fid.png", "FID"),
    ):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# ----------------------------------------------------------------------------- floors, pooled FID


def test_features_metrics_match_torch_fidelity_on_images(space, lesions):
    direct = gen.subclass_metrics(lesions[:15], lesions[15:], space)
    via = gen.features_metrics(gen.space_features(space, lesions[:15]), gen.space_features(space, lesions[15:]))
    assert via["fid"] == pytest.approx(direct["fid"], rel=1e-4, abs=1e-6)
    assert via["kid_mean"] == pytest.approx(direct["kid_mean"], rel=1e-4, abs=1e-9)


def test_kid_floor_is_near_zero_for_two_halves_and_grows_with_a_colour_shift(space):
    big = images(4, DISEASES[3], 80)
    reference = gen.space_features(space, big)
    shifted = gen.space_features(space, shift_red(images(4, DISEASES[3], 40, start=300), 60))
    halves = gen.real_floor(reference, np.zeros((0, reference.shape[1])), 40, seed=0)
    assert halves["floor_method"] == "split-half" and halves["floor_n_query"] == halves["floor_n_reference"] == 40
    shift = gen.real_floor(reference, shifted, 40, seed=0)
    assert shift["floor_method"] == "heldout" and shift["floor_n_query"] == 40 and shift["floor_n_reference"] == 80
    assert abs(halves["kid_floor"]) < 0.1 * shift["kid_floor"]  # unbiased: ~0 for two draws of one distribution
    assert shift["fid_floor"] > halves["fid_floor"] > 0  # FID of two halves is > 0 (small-N bias), a shift more
    fresh = gen.real_floor(reference, gen.space_features(space, images(4, DISEASES[3], 40, start=300)), 40, seed=0)
    assert abs(fresh["kid_floor"]) < 0.1 * shift["kid_floor"]
    assert math.isnan(gen.real_floor(reference[:3], reference[:0], 40)["kid_floor"])  # 1 vs 2 images: not measured


def test_mix_subsample_keeps_a_pool_with_the_real_mix_whole_and_matches_it_otherwise():
    real = ["a"] * 30 + ["b"] * 10 + ["c"] * 5
    same_mix = ["b"] * 20 + ["a"] * 60 + ["c"] * 10
    np.testing.assert_array_equal(gen.mix_subsample(same_mix, real, seed=3), np.arange(90))
    balanced = ["a"] * 20 + ["b"] * 20 + ["c"] * 20 + ["z"] * 5  # z: not in the real set
    rows = gen.mix_subsample(balanced, real, seed=3)
    picked = pd.Series(np.asarray(balanced)[rows]).value_counts().to_dict()
    assert picked == {"a": 20, "b": 7, "c": 3}  # M = 20 / (30/45) = 30 rows: 20, 6.67 -> 7, 3.33 -> 3
    assert list(rows) == sorted(rows) and not np.array_equal(rows, gen.mix_subsample(balanced, real, seed=4))


def test_pooled_fid_subsampled_to_the_real_mix_equals_plain_pooled_fid_when_the_pool_has_that_mix():
    rng = np.random.default_rng(0)
    centres = {"x": 0.0, "y": 3.0}
    real_keys = np.array(["x"] * 40 + ["y"] * 20)
    pool_keys = np.array(["y"] * 30 + ["x"] * 60)  # the real 2:1 mix, other order
    real = np.stack([rng.normal(centres[k], 1.0, 6) for k in real_keys])
    pool = np.stack([rng.normal(centres[k], 1.0, 6) for k in pool_keys])
    matched = gen.pooled_metrics(pool, pool_keys, real, real_keys, seed=1)
    plain = gen.pooled_metrics(pool, pool_keys, real, real_keys, match_mix=False)
    assert matched == plain and matched["n_generated"] == 90
    # A balanced pool is judged on a real-mix subsample, not penalised for its balance.
    balanced_keys = np.array(["x"] * 45 + ["y"] * 45)
    balanced = np.stack([rng.normal(centres[k], 1.0, 6) for k in balanced_keys])
    fair = gen.pooled_metrics(balanced, balanced_keys, real, real_keys, seed=1)
    naive = gen.pooled_metrics(balanced, balanced_keys, real, real_keys, match_mix=False)
    assert fair["n_generated"] == 67 and fair["fid"] < naive["fid"]


def test_report_floors_and_pooled_figures(space):
    real, real_meta, pool, pool_meta, held, held_meta = [], [], [], [], [], []
    for group, fst in (("light", 2), ("dark", 6)):
        for disease in TWO_DISEASES:
            n_real, n_held = (24, 14) if group == "light" else (16, 4)
            for store, meta, part in (
                (real, real_meta, images(fst, disease, n_real)),
                (pool, pool_meta, images(fst, disease, 12, 400)),
                (held, held_meta, images(fst, disease, n_held, 800)),
            ):
                store.append(part)
                meta.extend([{"group": group, "disease": disease}] * len(part))
    out = gen.generation_report(
        np.concatenate(pool),
        pd.DataFrame(pool_meta),
        np.concatenate(real),
        pd.DataFrame(real_meta),
        ["light", "dark"],
        TWO_DISEASES,
        space,
        isc=False,
        floor_pixels=np.concatenate(held),
        floor_meta=pd.DataFrame(held_meta),
        seed=0,
    )
    table, s = out.per_subclass.set_index(["group", "disease"]), out.summary
    assert (table.loc["light", "floor_method"] == "heldout").all() and (
        table.loc["dark", "floor_method"] == "split-half"
    ).all()
    assert (table.loc["light", "floor_n_query"] == 12).all() and (table.loc["dark", "floor_n_query"] == 8).all()
    assert s["fid_floor_mean"] == pytest.approx(table["fid_floor"].mean())
    corrected = table["fid"] - table["fid_floor"]
    assert s["fid_var_subclass_floor_corrected"] == pytest.approx(np.var(corrected, ddof=1))
    assert s["kid_floor_mean"] == pytest.approx(table["kid_floor"].mean())
    for key in ("fid_pooled_light", "fid_pooled_dark", "fid_pooled_overall"):
        assert math.isfinite(s[key]) and s[key] >= 0
    # real mix 24:24:16:16 of 80: M = min(12 / (24/80), 12 / (16/80)) = 40 = 12 + 12 + 8 + 8
    assert s["n_pooled_overall"] == 40 and s["n_pooled_light"] == s["n_pooled_dark"] == 24
