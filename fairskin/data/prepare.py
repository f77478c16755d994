"""The ``prepare`` stage: a data source -> ``manifest.parquet`` + validated image shards.

Sources:
* ``synthetic`` (the demo): procedural images following the Fitzpatrick17k count table,
  scaled by ``data.synthetic_scale``;
* ``fitzpatrick17k``: the real CSV and a local folder of images named by md5hash,
  centre-cropped and resized to ``data.image_size``.

Both go through the same split rule (per subclass, seeded) and the same shard writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.data.fitzpatrick import assign_splits, build_manifest, subclass_table
from fairskin.data.images import encode_png, load_square_image, sha256_hex
from fairskin.data.shards import Vocabulary, write_shards
from fairskin.progress import progress_bar

MANIFEST_FILE = "manifest.parquet"
SHARDS_DIR = "shards"
COUNTS_FILE = "subclass_counts.csv"


def reference_counts() -> dict[tuple[str, str], int]:
    """The real Fitzpatrick17k subclass counts (before splitting), shipped with the package."""
    with resources.files("fairskin.data").joinpath("fitzpatrick17k_counts.csv").open() as fh:
        table = pd.read_csv(fh)
    return {(r.group, r.disease): int(r["count"]) for _, r in table.iterrows()}


def _synthetic_rows(config: FairSkinConfig) -> tuple[pd.DataFrame, dict[str, bytes]]:
    from fairskin.data.synthetic import generate_samples, scaled_counts

    data = config.data
    counts = {k: v for k, v in reference_counts().items() if k[0] in data.group_names and k[1] in data.diseases}
    missing = [(g, d) for g in data.group_names for d in data.diseases if (g, d) not in counts]
    if missing:
        raise ValueError(
            f"the synthetic count table has no entry for subclass(es) {missing}; "
            "synthetic data follows the Fitzpatrick17k groups and diseases"
        )
    counts = scaled_counts(counts, data.synthetic_scale, minimum=data.min_subclass_count)
    total = sum(counts.values())
    rows, images = [], {}
    samples = generate_samples(counts, data.group_fst(), seed=config.runtime.seed, size=data.image_size)
    for s in progress_bar(samples, total=total, description="synthetic images", enabled=config.runtime.progress):
        png = encode_png(s.image)
        images[s.id] = png
        rows.append(
            {
                "id": s.id,
                "group": s.group,
                "disease": s.disease,
                "fst": s.fst,
                "seed": s.seed,
                "variant": s.variant,
                "source": "synthetic",
                "sha256": sha256_hex(png),
            }
        )
    manifest = assign_splits(pd.DataFrame(rows), config.runtime.seed)
    return manifest, images


def _fitzpatrick_rows(config: FairSkinConfig) -> tuple[pd.DataFrame, dict[str, bytes], dict[str, Any]]:
    manifest, report = build_manifest(config.data, config.runtime.seed, with_images=True)
    images = {}
    for image_id, path in progress_bar(
        list(zip(manifest["id"], manifest["path"])),
        total=len(manifest),
        description="Fitzpatrick17k images",
        enabled=config.runtime.progress,
    ):
        images[image_id] = encode_png(load_square_image(Path(path), config.data.image_size))
    manifest = manifest.assign(sha256=[sha256_hex(images[i]) for i in manifest["id"]], seed=None, variant=None)
    return manifest.drop(columns=["path"]), images, report.as_dict()


def _records(manifest: pd.DataFrame, images: dict[str, bytes]) -> Iterator[dict[str, Any]]:
    for row in manifest.to_dict("records"):
        fst = row.get("fst")
        seed = row.get("seed")
        yield {
            **row,
            "image": images[row["id"]],
            "fst": None if pd.isna(fst) else int(fst),
            "seed": None if seed is None or pd.isna(seed) else int(seed),
        }


def prepare_dataset(config: FairSkinConfig, out_dir: Path) -> dict[str, Any]:
    """Write ``manifest.parquet``, ``shards/`` and ``subclass_counts.csv`` into ``out_dir``.

    Returns a summary: rows per split, the subclass count range, and the source's report.
    """
    report: dict[str, Any] = {}
    if config.data.source == "synthetic":
        manifest, images = _synthetic_rows(config)
    else:
        manifest, images, report = _fitzpatrick_rows(config)
    # Stable row order: by split, group, disease, id (so shards and the manifest agree).
    manifest = manifest.sort_values(["split", "group", "disease", "id"]).reset_index(drop=True)
    vocab = Vocabulary(tuple(config.data.group_names), tuple(config.data.diseases))
    write_shards(
        _records(manifest, images),
        out_dir / SHARDS_DIR,
        vocab,
        rows_per_shard=config.data.shard_rows,
        extra_index={"source": config.data.source, "image_size": config.data.image_size},
    )
    manifest.to_parquet(out_dir / MANIFEST_FILE, index=False)
    table = subclass_table(manifest)
    table.to_csv(out_dir / COUNTS_FILE, index=False)
    return {
        "rows": int(len(manifest)),
        **{f"rows_{split}": int((manifest["split"] == split).sum()) for split in ("train", "val", "test")},
        "subclass_count_min": int(table["count"].min()),
        "subclass_count_max": int(table["count"].max()),
        "source": config.data.source,
        "report": report,
    }


def write_synthetic_pool(config: FairSkinConfig, out_dir: Path, per_subclass: int, namespace: str = "pool") -> Path:
    """Shards of ``per_subclass`` procedural images per subclass (split ``pool``): an oracle pool
    for tests and for classifier runs before a diffusion pool exists. Returns the shard folder."""
    from fairskin.data.synthetic import generate_samples

    data = config.data
    counts = {(g, d): per_subclass for g in data.group_names for d in data.diseases}
    records = []
    for s in generate_samples(
        counts, data.group_fst(), seed=config.runtime.seed, size=data.image_size, namespace=namespace
    ):
        records.append(
            {
                "id": s.id,
                "image": encode_png(s.image),
                "group": s.group,
                "disease": s.disease,
                "split": "pool",
                "fst": s.fst,
                "source": "synthetic",
                "seed": s.seed,
                "variant": s.variant,
            }
        )
    vocab = Vocabulary(tuple(data.group_names), tuple(data.diseases))
    write_shards(
        records,
        Path(out_dir),
        vocab,
        rows_per_shard=data.shard_rows,
        extra_index={"source": "synthetic-pool", "image_size": data.image_size},
    )
    return Path(out_dir)
