"""Fitzpatrick17k CSV -> manifest of the 15 (group, disease) subclasses, split 8:1:1.

Steps, each a small function:
1. read the CSV and check its columns and values (errors name the line and column);
2. keep the configured diseases (exact labels), optionally drop rows whose ``qc`` says
   wrongly labelled;
3. derive FST by the binning rule (default: ``fitzpatrick_centaur``, falling back to
   ``fitzpatrick_scale`` where centaur is -1), map FST to groups, drop unknowns;
4. drop subclasses under the minimum count;
5. split each subclass: test = val = max(1, floor(n / 10)), train = the rest, by a seeded
   permutation of its rows sorted by id (optionally keeping perceptual-hash near-duplicates
   in one split).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fairskin.config import DataConfig
from fairskin.data import DataError
from fairskin.data.images import IMAGE_EXTENSIONS

REQUIRED_COLUMNS = ("md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "qc")
WRONGLY_LABELLED = "3 Wrongly labelled"
SPLITS = ("train", "val", "test")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ManifestReport:
    """What the manifest builder kept and dropped, for logs and the prepare stage summary."""

    rows_in_csv: int = 0
    rows_other_labels: int = 0
    rows_qc_dropped: int = 0
    rows_unknown_fst: int = 0
    subclasses_below_minimum: list[tuple[str, str, int]] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "rows_in_csv": self.rows_in_csv,
            "rows_other_labels": self.rows_other_labels,
            "rows_qc_dropped": self.rows_qc_dropped,
            "rows_unknown_fst": self.rows_unknown_fst,
            "subclasses_below_minimum": [list(x) for x in self.subclasses_below_minimum],
            "missing_images": len(self.missing_images),
            "unreadable_images": len(self.unreadable_images),
        }


def read_fitzpatrick_csv(csv_path: Path) -> pd.DataFrame:
    """Read the metadata CSV, checking columns, FST values (-1 or 1..6) and md5 ids.

    Returns a frame with the required columns, ``fitzpatrick_*`` as int, ``qc`` as str
    ("" when empty) and ``line`` (the 1-based line number in the file, for messages).
    """
    csv_path = Path(csv_path)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found (the Fitzpatrick17k metadata CSV)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; expected at least {list(REQUIRED_COLUMNS)}")
    df = df[list(REQUIRED_COLUMNS)].copy()
    df["line"] = np.arange(len(df)) + 2  # header is line 1
    for col in ("fitzpatrick_scale", "fitzpatrick_centaur"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~values.isin([-1, 1, 2, 3, 4, 5, 6])
        if bad.any():
            row = df[bad].iloc[0]
            raise DataError(
                f"{csv_path}: line {row['line']}, column {col}: got {row[col]!r}; "
                f"expected -1 (unknown) or a Fitzpatrick type 1..6 ({int(bad.sum())} such rows)"
            )
        df[col] = values.astype(int)
    df["md5hash"] = df["md5hash"].str.strip().str.lower()
    bad_id = ~df["md5hash"].str.match(_MD5)
    if bad_id.any():
        row = df[bad_id].iloc[0]
        raise DataError(
            f"{csv_path}: line {row['line']}, column md5hash: got {row['md5hash']!r}; expected 32 hexadecimal digits"
        )
    dup = df["md5hash"].duplicated()
    if dup.any():
        row = df[dup].iloc[0]
        raise DataError(f"{csv_path}: line {row['line']}, column md5hash: {row['md5hash']} appears twice")
    return df


def derive_fst(df: pd.DataFrame, binning: str) -> pd.Series:
    """FST per row under a binning rule; -1 where unknown."""
    centaur, scale = df["fitzpatrick_centaur"], df["fitzpatrick_scale"]
    if binning == "centaur_fallback":
        return centaur.where(centaur != -1, scale)
    if binning == "centaur":
        return centaur.copy()
    if binning == "scale":
        return scale.copy()
    raise DataError(f"binning {binning!r}: expected centaur_fallback, scale or centaur")


def fst_to_group(fst: pd.Series, group_fst: dict[str, list[int]]) -> pd.Series:
    """Map FST values to group names; None for FST outside every group (e.g. -1)."""
    lookup = {f: name for name, fsts in group_fst.items() for f in fsts}
    return fst.map(lookup)


def select_rows(df: pd.DataFrame, cfg: DataConfig, report: ManifestReport) -> pd.DataFrame:
    """Apply label, qc and FST filters; returns rows with id, group, disease, fst, line."""
    report.rows_in_csv = len(df)
    keep = df["label"].isin(cfg.diseases)
    report.rows_other_labels = int((~keep).sum())
    df = df[keep]
    if cfg.drop_qc_wrongly_labelled:
        wrong = df["qc"].str.strip() == WRONGLY_LABELLED
        report.rows_qc_dropped = int(wrong.sum())
        df = df[~wrong]
    fst = derive_fst(df, cfg.binning)
    group = fst_to_group(fst, cfg.group_fst())
    report.rows_unknown_fst = int(group.isna().sum())
    out = pd.DataFrame(
        {
            "id": df["md5hash"].values,
            "group": group.values,
            "disease": df["label"].values,
            "fst": fst.values.astype(int),
            "line": df["line"].values,
        }
    )
    return out[out["group"].notna()].reset_index(drop=True)


def drop_small_subclasses(rows: pd.DataFrame, minimum: int, report: ManifestReport) -> pd.DataFrame:
    counts = rows.groupby(["group", "disease"]).size()
    small = counts[counts < minimum]
    report.subclasses_below_minimum = [(g, d, int(n)) for (g, d), n in small.items()]
    if small.empty:
        return rows
    small_keys = set(small.index)
    mask = [(g, d) not in small_keys for g, d in zip(rows["group"], rows["disease"])]
    return rows[mask].reset_index(drop=True)


def stable_int(*parts: object) -> int:
    """A 63-bit integer from the parts' text, stable across processes and Python versions."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) for a subclass of n rows: test = val = max(1, n // 10)."""
    held = max(1, n // 10)
    if n < 2 * held + 1:
        raise DataError(f"a subclass of {n} rows cannot be split into train/val/test; raise the minimum count")
    return n - 2 * held, held, held


def split_subclass(
    ids: Sequence[str], seed: int, group: str, disease: str, clusters: Sequence[int] | None = None
) -> list[str]:
    """Split labels for one subclass, aligned with ``ids``.

    Without ``clusters`` this is a seeded permutation of the ids sorted by value. With
    ``clusters`` (one cluster id per row, e.g. near-duplicates), whole clusters are assigned
    in permuted order, so a cluster never straddles two splits.
    """
    n = len(ids)
    _, n_val, n_test = split_sizes(n)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    rng = np.random.default_rng(np.random.SeedSequence([seed, stable_int(group), stable_int(disease)]))
    if clusters is None:
        perm = order[rng.permutation(n)]
        labels = np.empty(n, dtype=object)
        labels[perm[:n_test]] = "test"
        labels[perm[n_test : n_test + n_val]] = "val"
        labels[perm[n_test + n_val :]] = "train"
        return list(labels)
    clusters = np.asarray(clusters)
    # Clusters ordered by their smallest member id, then permuted.
    first_pos = {}
    for pos in order:
        first_pos.setdefault(clusters[pos], len(first_pos))
    cluster_ids = sorted(first_pos, key=first_pos.get)
    labels = np.empty(n, dtype=object)
    filled = {"test": 0, "val": 0}
    for c in (cluster_ids[i] for i in rng.permutation(len(cluster_ids))):
        members = np.flatnonzero(clusters == c)
        if filled["test"] < n_test:
            split = "test"
        elif filled["val"] < n_val:
            split = "val"
        else:
            split = "train"
        labels[members] = split
        if split in filled:
            filled[split] += len(members)
    return list(labels)


def assign_splits(rows: pd.DataFrame, seed: int, clusters: pd.Series | None = None) -> pd.DataFrame:
    """Add a ``split`` column, per subclass, deterministic by seed."""
    rows = rows.copy()
    rows["split"] = ""
    for (group, disease), idx in rows.groupby(["group", "disease"]).groups.items():
        sub_clusters = None if clusters is None else clusters.loc[idx].tolist()
        rows.loc[idx, "split"] = split_subclass(rows.loc[idx, "id"].tolist(), seed, group, disease, sub_clusters)
    return rows


def subclass_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Counts per (group, disease): count, train, val, test; rows sorted by group then disease."""
    table = (
        manifest.groupby(["group", "disease", "split"])
        .size()
        .unstack("split", fill_value=0)
        .reindex(columns=list(SPLITS), fill_value=0)
    )
    table.insert(0, "count", table.sum(axis=1))
    table = table.reset_index().sort_values(["group", "disease"]).reset_index(drop=True)
    table = table[["group", "disease", "count", *SPLITS]].astype({c: int for c in ("count", *SPLITS)})
    table.columns.name = None
    return table


# --------------------------------------------------------------------------- images


def index_image_folder(image_root: Path) -> dict[str, Path]:
    """Map lower-case file stem -> path for image files directly under ``image_root``."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise DataError(f"image folder {image_root} does not exist (data.image_root)")
    index: dict[str, Path] = {}
    for entry in sorted(image_root.iterdir()):
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            index.setdefault(entry.stem.lower(), entry)
    return index


def resolve_image_path(image_id: str, index: dict[str, Path], image_root: Path) -> Path | None:
    """The file for ``image_id`` inside ``image_root``; None if absent.

    Raises DataError when the file resolves outside the image root (e.g. a symbolic link
    pointing elsewhere), so a crafted folder cannot make us read arbitrary files.
    """
    path = index.get(image_id)
    if path is None:
        return None
    root = Path(image_root).resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"image {image_id}: {path} resolves to {resolved}, outside the image root {root}")
    return resolved


def attach_images(rows: pd.DataFrame, cfg: DataConfig, report: ManifestReport) -> pd.DataFrame:
    """Add a ``path`` column; missing or unreadable images fail (default) or are skipped.

    Unreadable means Pillow cannot identify or fully load the file.
    """
    from PIL import Image

    assert cfg.image_root is not None
    index = index_image_folder(cfg.image_root)
    paths: list[str | None] = []
    for image_id in rows["id"]:
        path = resolve_image_path(image_id, index, cfg.image_root)
        if path is None:
            report.missing_images.append(image_id)
            paths.append(None)
            continue
        try:
            with Image.open(path) as img:
                img.load()
        except Exception:
            report.unreadable_images.append(image_id)
            paths.append(None)
            continue
        paths.append(str(path))
    rows = rows.copy()
    rows["path"] = paths
    problems = []
    if report.missing_images:
        problems.append(f"{len(report.missing_images)} missing (e.g. {', '.join(report.missing_images[:5])})")
    if report.unreadable_images:
        problems.append(f"{len(report.unreadable_images)} unreadable (e.g. {', '.join(report.unreadable_images[:5])})")
    if problems and cfg.on_bad_image == "fail":
        raise DataError(
            f"images under {cfg.image_root}: "
            + "; ".join(problems)
            + ". Files are named <md5hash>.<ext>; set data.on_bad_image=skip to leave them out."
        )
    return rows[rows["path"].notna()].reset_index(drop=True)


def near_duplicate_clusters(rows: pd.DataFrame, max_distance: int) -> pd.Series:
    """Cluster id per row: rows of one subclass whose 64-bit perceptual hashes differ in at
    most ``max_distance`` bits are joined (transitively, union-find)."""
    import imagehash
    from PIL import Image

    hashes = np.zeros(len(rows), dtype=np.uint64)
    for i, path in enumerate(rows["path"]):
        with Image.open(path) as img:
            bits = imagehash.phash(img.convert("RGB")).hash.flatten()
        hashes[i] = np.packbits(bits.astype(np.uint8)).view(">u8")[0]
    parent = np.arange(len(rows))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, idx in rows.groupby(["group", "disease"]).groups.items():
        pos = np.asarray([rows.index.get_loc(i) for i in idx])
        h = hashes[pos]
        for a in range(len(pos)):
            xor = np.bitwise_xor(h[a], h[a + 1 :])
            dist = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            for b in np.flatnonzero(dist <= max_distance):
                ra, rb = find(pos[a]), find(pos[a + 1 + b])
                if ra != rb:
                    parent[rb] = ra
    return pd.Series([find(i) for i in range(len(rows))], index=rows.index)


def build_manifest(cfg: DataConfig, seed: int, with_images: bool | None = None) -> tuple[pd.DataFrame, ManifestReport]:
    """The Fitzpatrick17k manifest: id, group, disease, fst, split (+ path with images).

    ``with_images`` defaults to whether ``cfg.image_root`` is set. Counts-only use (the
    ``data counts`` CLI) needs just the CSV.
    """
    if cfg.csv_path is None:
        raise DataError("data.csv_path is not set: point it at fitzpatrick17k.csv")
    report = ManifestReport()
    df = read_fitzpatrick_csv(cfg.csv_path)
    rows = select_rows(df, cfg, report)
    with_images = cfg.image_root is not None if with_images is None else with_images
    if with_images:
        if cfg.image_root is None:
            raise DataError("data.image_root is not set: point it at the folder of Fitzpatrick17k images")
        rows = attach_images(rows, cfg, report)
    rows = drop_small_subclasses(rows, cfg.min_subclass_count, report)
    clusters = None
    if with_images and cfg.near_duplicate_max_distance is not None:
        clusters = near_duplicate_clusters(rows, cfg.near_duplicate_max_distance)
    manifest = assign_splits(rows, seed, clusters)
    manifest["source"] = "fitzpatrick17k"
    return manifest.drop(columns=["line"]), report
