"""The graded positive control's pool (fairskin.diffusion.mix_pool) on two pools told apart by colour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fairskin.data.images import encode_png
from fairskin.data.shards import Vocabulary, load_decoded, read_index, write_shards
from fairskin.diffusion.generate import image_id
from fairskin.diffusion.mix_pool import mix_pool

GROUPS = ("African", "Asian", "Caucasian")
DISEASES = ("psoriasis", "lichen planus")
PER = 60


def _pool(folder, generator: str, value: int):
    """A pool whose every image is one flat grey level ``value`` (vanilla 0, drop 255)."""
    image = encode_png(np.full((8, 8, 3), value, np.uint8))
    records = [
        {
            "id": image_id(generator, g, d, i),
            "image": image,
            "group": g,
            "disease": d,
            "split": "pool",
            "fst": None,
            "source": "generated",
            "seed": i,
            "variant": generator,
        }
        for g in GROUPS
        for d in DISEASES
        for i in range(PER)
    ]
    write_shards(records, folder, Vocabulary(GROUPS, DISEASES), rows_per_shard=50)
    return folder


def test_a_mixed_pool_takes_the_stated_share_of_the_groups_images_from_the_drop_and_nothing_else(tmp_path):
    vanilla = _pool(tmp_path / "vanilla-r1", "vanilla-r1", 0)
    drop = _pool(tmp_path / "control_drop_african-r1", "control_drop_african-r1", 255)
    vocab = Vocabulary(GROUPS, DISEASES)
    counts = mix_pool(
        vanilla,
        drop,
        tmp_path / "mix",
        generator="control_mix_african_20-r1",
        group="African",
        fraction=0.2,
        seed=11,
        vocab=vocab,
    )
    pixels, meta = load_decoded(tmp_path / "mix")
    from_drop = pixels.reshape(len(pixels), -1).mean(axis=1) == 255
    african = (meta["group"] == "African").to_numpy()
    assert len(meta) == len(GROUPS) * len(DISEASES) * PER and not from_drop[~african].any()
    k, n = int(from_drop[african].sum()), int(african.sum())
    assert counts == {"from_drop": k, "group_images": n, "rows": len(meta)}
    # the share taken is Binomial(n, 0.2): a two-sided exact test does not reject it (a wrong
    # fraction, e.g. 0.5 or 1 - 0.2, would be rejected at this n)
    assert stats.binomtest(k, n, 0.2).pvalue > 0.001 and stats.binomtest(k, n, 0.5).pvalue < 0.001
    assert meta["id"].is_unique and set(meta["variant"]) == {"control_mix_african_20-r1"}
    assert read_index(tmp_path / "mix")["mix"]["fraction"] == 0.2
    again = mix_pool(
        vanilla,
        drop,
        tmp_path / "mix-again",
        generator="control_mix_african_20-r1",
        group="African",
        fraction=0.2,
        seed=11,
        vocab=vocab,
    )
    assert again == counts  # the draws are a function of (seed, fraction)
    other = mix_pool(
        vanilla,
        drop,
        tmp_path / "mix-other",
        generator="control_mix_african_20-r2",
        group="African",
        fraction=0.2,
        seed=12,
        vocab=vocab,
    )
    assert other["from_drop"] != k or other != counts


def test_pools_of_different_shapes_are_refused(tmp_path):
    vanilla = _pool(tmp_path / "a", "vanilla", 0)
    image = encode_png(np.zeros((8, 8, 3), np.uint8))
    records = [
        {
            "id": f"x{i}",
            "image": image,
            "group": "African",
            "disease": "psoriasis",
            "split": "pool",
            "fst": None,
            "source": "generated",
            "seed": i,
            "variant": "control_drop_african",
        }
        for i in range(3)
    ]
    write_shards(records, tmp_path / "b", Vocabulary(GROUPS, DISEASES))
    with pytest.raises(ValueError, match="differ in subclasses or sizes"):
        mix_pool(
            vanilla,
            tmp_path / "b",
            tmp_path / "mix",
            generator="control_mix_african_50",
            group="African",
            fraction=0.5,
            seed=0,
            vocab=Vocabulary(GROUPS, DISEASES),
        )
