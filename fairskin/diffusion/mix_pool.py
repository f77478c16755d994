"""Graded positive controls: a pool mixed, seeded, from vanilla's and the drop control's pools.

``control_mix_<group>_<pct>`` is a pool, not a fine-tune: for repeat r, each of the group's images
is the drop control's image at the same place (subclass, index) with probability pct / 100 and
vanilla's otherwise; every other group's images are vanilla's. So the effect it should show is
known: pct / 100 of the drop's effect on a share-type endpoint, growing with pct on a distance-type
one (``fairskin.controls.sensitivity``), at no training cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fairskin.data.shards import Vocabulary, iter_shards, write_shards
from fairskin.diffusion.generate import image_id

MIX_STREAM = 0x6D6978  # "mix": keeps the mix's draws apart from every other use of the repeat's seed


def _rows(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _, table in iter_shards(folder, verify=False):
        rows.extend(table.to_pylist())
    return rows


def mix_pool(
    vanilla: Path,
    drop: Path,
    out: Path,
    *,
    generator: str,
    group: str,
    fraction: float,
    seed: int,
    vocab: Vocabulary,
    rows_per_shard: int = 256,
) -> dict[str, int]:
    """Write the mixed pool of ``generator`` to ``out`` (a shard folder, ``index.json`` last).

    ``vanilla`` / ``drop``: the two pools of the same repeat (same subclasses and sizes, read in
    shard order); ``group``: the group whose images are mixed; ``fraction`` in [0, 1]: the
    probability that one of its images comes from ``drop``; ``seed``: the repeat's generator seed
    (the draws are a function of it and the fraction only). Rows keep their image bytes and
    labels; ids and ``variant`` name ``generator``. Returns {"from_drop": k, "group_images": n,
    "rows": total}. Raises ValueError when the two pools do not hold the same subclasses and sizes.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    base, dropped = _rows(vanilla), _rows(drop)

    def places(rows):
        seen: dict[tuple[str, str], int] = {}
        out = []
        for row in rows:
            key = (row["group"], row["disease"])
            out.append((*key, seen.get(key, 0)))
            seen[key] = seen.get(key, 0) + 1
        return out

    base_places, drop_places = places(base), places(dropped)
    if sorted(base_places) != sorted(drop_places):
        raise ValueError(f"pools {vanilla} and {drop} differ in subclasses or sizes: they cannot be mixed")
    by_place = dict(zip(drop_places, dropped))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(round(fraction * 1000)), MIX_STREAM]))
    take = rng.random(len(base)) < fraction  # one draw per row, used for the group's rows only
    records, from_drop, group_images = [], 0, 0
    for row, place, coin in zip(base, base_places, take):
        source = row
        if row["group"] == group:
            group_images += 1
            if coin:
                source, from_drop = by_place[place], from_drop + 1
        records.append({**source, "id": image_id(generator, place[0], place[1], place[2]), "variant": generator})
    write_shards(
        records,
        out,
        vocab,
        rows_per_shard=rows_per_shard,
        extra_index={
            "source": "mixed",
            "variant": generator,
            "mix": {
                "group": group,
                "fraction": fraction,
                "seed": int(seed),
                "from_drop": from_drop,
                "group_images": group_images,
                "vanilla": vanilla.name,
                "drop": drop.name,
            },
        },
    )
    return {"from_drop": from_drop, "group_images": group_images, "rows": len(records)}
