"""K pools per generator (``generation.pool_seeds``): ids, noise, the report's per-repeat means over pool x seed
cells, and the variance components' pool level against a hand-worked nested ANOVA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairskin.data.shards import read_index, read_metadata
from fairskin.diffusion.generate import generate_pools, image_seed
from fairskin.metrics.endpoints import Declaration
from fairskin.provenance import generator_tags, pool_id, split_generator_id, split_pool_id
from fairskin.report.differences import difference_components
from fairskin.report.tables import unit_frame

R, K, S = 4, 2, 2


def test_pool_ids_name_the_pool_seed_and_keep_the_generator():
    assert pool_id("vanilla-r2", 0) == "vanilla-r2" and pool_id("vanilla-r2", 3) == "vanilla-r2-p3"
    assert split_pool_id("vanilla-r2-p3") == ("vanilla-r2", 3) and split_pool_id("fairskin_s") == ("fairskin_s", 0)
    assert split_generator_id("control_mix_african_50-r1-p2") == ("control_mix_african_50", 1)
    tags = generator_tags("fairskin_s-p1")
    assert tags["fairskin.generator"] == "fairskin_s" and tags["fairskin.pool_seed"] == "1"
    with pytest.raises(ValueError, match="not a pool id"):
        split_pool_id("vanilla-p")


@pytest.fixture()
def tiny_pipeline(tmp_path):
    from fairskin.diffusion.models import build_tiny_sd, save_sd

    return save_sd(build_tiny_sd(image_size=32, seed=3), tmp_path / "pipeline")


def test_pool_seed_0_is_the_generators_pool_and_pool_seed_1_new_noise(smoke_config, tiny_pipeline, tmp_path):
    from fairskin.config import build_config

    config = build_config(
        "smoke",
        overrides=[
            f"runtime.runs_root={smoke_config.runtime.runs_root}",
            "generation.images_per_subclass=2",
            "generation.batch_size=2",
            "generation.pool_seeds=[0, 1]",
        ],
    )
    alone = generate_pools(config, {"vanilla": tiny_pipeline}, tmp_path / "one", local=True)["vanilla"]
    made = generate_pools(config, {"vanilla": tiny_pipeline, "vanilla-p1": tiny_pipeline}, tmp_path / "k", local=True)
    ref, p0, p1 = read_metadata(alone), read_metadata(made["vanilla"]), read_metadata(made["vanilla-p1"])
    assert p0["sha256"].tolist() == ref["sha256"].tolist()  # pool seed 0: the pool made before pool seeds existed
    assert len(p1) == len(p0) and not set(p1["sha256"]) & set(p0["sha256"])  # the same subclasses, new images
    noise = read_index(made["vanilla-p1"])["seed"]
    assert noise != read_index(made["vanilla"])["seed"]
    # every image of pool 1 drawn from its own noise seed, as any image of any pool is (image_seed)
    index = [int(i.rsplit("-", 1)[1]) for i in p1["id"]]  # gen-<pool>-<subclass>-<index>
    expected = [image_seed(noise, g, d, i) for g, d, i in zip(p1["group"], p1["disease"], index)]
    assert p1["seed"].astype(int).tolist() == expected


def _trials(rng: np.random.Generator, effects: dict[str, float]) -> pd.DataFrame:
    """Balanced trials R x K x S per variant: value = 0.5 + variant effect + repeat + pool + seed noise, with the
    repeat and pool effects shared by both variants of a repeat (common random numbers) only in part."""
    rows = []
    for r in range(R):
        shared = rng.normal(0, 0.05)
        for k in range(K):
            for s in range(S):
                for variant, effect in effects.items():
                    value = 0.5 + effect + shared + rng.normal(0, 0.04) * (variant != "vanilla") + rng.normal(0, 0.01)
                    rows.append(
                        {
                            "variant": variant,
                            "mode": "random",
                            "repeat": r,
                            "pool_seed": k,
                            "seed": s,
                            "pool": f"{variant}-{r}-{k}",
                            "metrics.test_worst_group_accuracy": value,
                            "metrics.test_accuracy": value + 0.1,
                        }
                    )
    return pd.DataFrame(rows)


def test_a_repeat_is_the_mean_of_its_pool_x_seed_cells_and_the_pool_level_is_separated():
    rng = np.random.default_rng(7)
    trials = _trials(rng, {"vanilla": 0.0, "fairskin_s": 0.02})
    evaluated = pd.DataFrame(
        [
            {
                "pool": f"{v}-{r}-{k}",
                "variant": v,
                "repeat": r,
                "pool_seed": k,
                "metrics.skin_tone_w1_ratio_worst_group": 1.5 + rng.normal(0, 0.2) + 0.3 * (v == "fairskin_s"),
            }
            for v in ("vanilla", "fairskin_s")
            for r in range(R)
            for k in range(K)
        ]
    ).set_index("pool", drop=False)
    units = unit_frame(trials, evaluated.set_index("pool"))
    row = units[(units["variant"] == "fairskin_s") & (units["repeat"] == 1)].iloc[0]
    cells = trials[(trials["variant"] == "fairskin_s") & (trials["repeat"] == 1)]
    assert row["worst_group_accuracy"] == pytest.approx(cells["metrics.test_worst_group_accuracy"].mean())
    assert (row["pools"], row["seeds"], row["trials"]) == (K, S, K * S)
    ev = evaluated[(evaluated["variant"] == "fairskin_s") & (evaluated["repeat"] == 1)]
    assert row["skin_tone_w1_worst"] == pytest.approx(ev["metrics.skin_tone_w1_ratio_worst_group"].mean())

    declaration = Declaration(
        primary=("worst_group_accuracy", "skin_tone_w1_worst"),
        margins={"worst_group_accuracy": 0.05, "skin_tone_w1_worst": 0.5},
    )
    comp = difference_components(trials, units, "vanilla", declaration, evaluated=evaluated.set_index("pool"))
    comp = comp.set_index(["variant", "endpoint"])

    # Classifier endpoint: the three-level nested ANOVA by hand on d[r, k, s].
    value = "metrics.test_worst_group_accuracy"
    cube = {
        v: trials[trials["variant"] == v]
        .sort_values(["repeat", "pool_seed", "seed"])[value]
        .to_numpy()
        .reshape(R, K, S)
        for v in ("vanilla", "fairskin_s")
    }
    d = cube["fairskin_s"] - cube["vanilla"]
    pool_means, repeat_means = d.mean(axis=2), d.mean(axis=(1, 2))
    ms_seed = ((d - pool_means[..., None]) ** 2).sum() / (R * K * (S - 1))
    ms_pool = S * ((pool_means - repeat_means[:, None]) ** 2).sum() / (R * (K - 1))
    ms_repeat = K * S * ((repeat_means - d.mean()) ** 2).sum() / (R - 1)
    row = comp.loc[("fairskin_s", "worst_group_accuracy")]
    assert (row["R"], row["K"], row["S"]) == (R, K, S)
    assert row["sigma2_cls"] == pytest.approx(ms_seed, rel=1e-6)
    assert row["sigma2_pool"] == pytest.approx(max(0.0, (ms_pool - ms_seed) / S), rel=1e-6, abs=1e-12)
    assert row["sigma2_ft"] == pytest.approx(max(0.0, (ms_repeat - ms_pool) / (K * S)), rel=1e-6, abs=1e-12)

    # Generation endpoint: one difference per (repeat, pool), from each pool's evaluate run; no classifier level.
    e = {
        v: evaluated[evaluated["variant"] == v]
        .sort_values(["repeat", "pool_seed"])["metrics.skin_tone_w1_ratio_worst_group"]
        .to_numpy()
        .reshape(R, K)
        for v in ("vanilla", "fairskin_s")
    }
    g = e["fairskin_s"] - e["vanilla"]
    ms_within = ((g - g.mean(axis=1, keepdims=True)) ** 2).sum() / (R * (K - 1))
    ms_between = K * ((g.mean(axis=1) - g.mean()) ** 2).sum() / (R - 1)
    row = comp.loc[("fairskin_s", "skin_tone_w1_worst")]
    assert (row["R"], row["K"]) == (R, K)
    assert row["sigma2_pool"] == pytest.approx(ms_within, rel=1e-6)
    assert row["sigma2_ft"] == pytest.approx(max(0.0, (ms_between - ms_within) / K), rel=1e-6, abs=1e-12)
