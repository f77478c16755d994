"""Parquet image shards: one row per image, PNG bytes plus labels and a checksum.

Layout of a shard folder::

    shard-00000.parquet ... shard-NNNNN.parquet
    index.json            # schema version, files and row counts, label vocabularies (written last)

Rows are validated when written and when read: a checksum mismatch, an undecodable
image, or a group/disease/split/FST outside the vocabulary raises :class:`DataError`
naming the shard file, the row number and the image id. Every file is written under a
temporary name and renamed, so a killed writer leaves no shard that looks complete.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fairskin.data import DataError
from fairskin.data.images import decode_png, sha256_hex
from fairskin.io import atomic_write_bytes, atomic_write_json

SCHEMA_VERSION = 1
INDEX_FILE = "index.json"
SPLITS = ("train", "val", "test", "pool")
SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("group", pa.string()),
        ("disease", pa.string()),
        ("split", pa.string()),
        ("fst", pa.int8()),
        ("sha256", pa.string()),
        ("source", pa.string()),
        ("seed", pa.int64()),
        ("variant", pa.string()),
    ]
)
METADATA_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name != "image"]


@dataclass(frozen=True)
class Vocabulary:
    """The labels a shard set may hold."""

    groups: tuple[str, ...]
    diseases: tuple[str, ...]

    def check_row(self, row: Mapping[str, Any], where: str) -> None:
        if row.get("group") not in self.groups:
            raise DataError(f"{where}: group {row.get('group')!r} is unknown; expected one of {list(self.groups)}")
        if row.get("disease") not in self.diseases:
            raise DataError(
                f"{where}: disease {row.get('disease')!r} is unknown; expected one of {list(self.diseases)}"
            )
        if row.get("split") not in SPLITS:
            raise DataError(f"{where}: split {row.get('split')!r} is unknown; expected one of {list(SPLITS)}")
        fst = row.get("fst")
        if fst is not None and not (isinstance(fst, (int, np.integer)) and 1 <= int(fst) <= 6):
            raise DataError(
                f"{where}: fst {fst!r} is not a Fitzpatrick type 1..6 "
                f"(unknown skin types, -1, must be dropped before sharding)"
            )
        if not row.get("id"):
            raise DataError(f"{where}: empty id")


def _row_where(shard: Path | str, index: int, row: Mapping[str, Any]) -> str:
    return f"shard {shard}, row {index} (id {row.get('id')!r})"


def validate_record(record: Mapping[str, Any], vocab: Vocabulary, where: str) -> dict[str, Any]:
    """Check one record and fill ``sha256``; returns the row as stored (all schema columns)."""
    vocab.check_row(record, where)
    image = record.get("image")
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise DataError(f"{where}: image bytes are missing")
    try:
        decode_png(bytes(image))
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    digest = sha256_hex(bytes(image))
    if record.get("sha256") not in (None, digest):
        raise DataError(f"{where}: sha256 {record['sha256']} does not match the image bytes ({digest})")
    row = {name: record.get(name) for name in SHARD_SCHEMA.names}
    row["image"] = bytes(image)
    row["sha256"] = digest
    row["source"] = row["source"] or "unknown"
    return row


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")  # PNG bytes are already compressed
    atomic_write_bytes(path, buf.getvalue())


def write_shard_file(records: Iterable[Mapping[str, Any]], path: Path, vocab: Vocabulary) -> int:
    """Validate ``records`` and write them as one shard file (atomically); returns the row count.

    For writers that add shards one at a time (pool generation); finish with :func:`write_index`.
    """
    rows = []
    for i, record in enumerate(records):
        rows.append(validate_record(record, vocab, _row_where(path, i, record)))
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"shard {path}: id {dup!r} appears twice")
    _write_table(rows, Path(path))
    return len(rows)


def write_index(
    out_dir: Path, entries: Sequence[Mapping[str, Any]], vocab: Vocabulary, extra_index: Mapping[str, Any] | None = None
) -> Path:
    """Write ``index.json`` (last: its presence marks the folder complete). ``entries`` are
    ``{"file": name, "rows": n}`` in shard order."""
    index = {
        "schema_version": SCHEMA_VERSION,
        "shards": [dict(e) for e in entries],
        "rows": sum(int(e["rows"]) for e in entries),
        "groups": list(vocab.groups),
        "diseases": list(vocab.diseases),
        **(extra_index or {}),
    }
    path = Path(out_dir) / INDEX_FILE
    atomic_write_json(path, index)
    return path


def write_shards(
    records: Iterable[Mapping[str, Any]],
    out_dir: Path,
    vocab: Vocabulary,
    *,
    rows_per_shard: int = 256,
    prefix: str = "shard",
    extra_index: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Validate and write ``records`` (dicts with the schema's columns; ``image`` = PNG bytes).

    Returns the shard paths in order. ``index.json`` is written after the last shard.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    entries: list[dict[str, Any]] = []
    buffer: list[dict[str, Any]] = []
    seen_ids: set[str] = set()

    def flush() -> None:
        path = out_dir / f"{prefix}-{len(paths):05d}.parquet"
        _write_table(buffer, path)
        paths.append(path)
        entries.append({"file": path.name, "rows": len(buffer)})
        buffer.clear()

    for record in records:
        where = _row_where(out_dir / f"{prefix}-{len(paths):05d}.parquet", len(buffer), record)
        row = validate_record(record, vocab, where)
        if row["id"] in seen_ids:
            raise DataError(f"{where}: id {row['id']!r} appears twice")
        seen_ids.add(row["id"])
        buffer.append(row)
        if len(buffer) >= rows_per_shard:
            flush()
    if buffer:
        flush()
    write_index(out_dir, entries, vocab, extra_index)
    return paths


def read_index(shard_dir: Path) -> dict[str, Any]:
    """The folder's ``index.json``; a folder without one is incomplete and is refused."""
    path = Path(shard_dir) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{shard_dir}: no {INDEX_FILE}; the shard folder is incomplete or not a shard folder")
    index = json.loads(path.read_text())
    if index.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {index.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return index


def shard_paths(shard_dir: Path) -> list[Path]:
    """The shard files listed in the index, checked to exist."""
    shard_dir = Path(shard_dir)
    paths = [shard_dir / e["file"] for e in read_index(shard_dir)["shards"]]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: listed in {shard_dir / INDEX_FILE} but missing")
    return paths


def vocabulary_of(shard_dir: Path) -> Vocabulary:
    index = read_index(shard_dir)
    return Vocabulary(tuple(index["groups"]), tuple(index["diseases"]))


def verify_table(table: pa.Table, vocab: Vocabulary, shard: Path | str, decode: bool = True) -> None:
    """Check every row of one shard's table: labels, checksum, and (optionally) decodability."""
    missing = [n for n in SHARD_SCHEMA.names if n not in table.column_names]
    if missing:
        raise DataError(f"shard {shard}: missing column(s) {missing}")
    meta = table.select(METADATA_COLUMNS).to_pylist()
    images = table.column("image").to_pylist()
    for i, (row, image) in enumerate(zip(meta, images)):
        where = _row_where(shard, i, row)
        vocab.check_row(row, where)
        if image is None or sha256_hex(image) != row["sha256"]:
            raise DataError(f"{where}: sha256 mismatch (the image bytes changed after they were written)")
        if decode:
            try:
                decode_png(image)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None


def read_shard(path: Path, vocab: Vocabulary, verify: bool = True) -> pa.Table:
    """One shard as an Arrow table, verified row by row unless ``verify=False``."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"shard {path}: not a readable parquet file ({exc})") from None
    if verify:
        verify_table(table, vocab, path)
    return table


def iter_shards(shard_dir: Path, verify: bool = True) -> Iterator[tuple[Path, pa.Table]]:
    vocab = vocabulary_of(shard_dir)
    for path in shard_paths(shard_dir):
        yield path, read_shard(path, vocab, verify)


def read_metadata(shard_dir: Path) -> pd.DataFrame:
    """All rows' metadata (no image bytes), in shard order."""
    frames = [pq.read_table(p, columns=METADATA_COLUMNS).to_pandas() for p in shard_paths(shard_dir)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METADATA_COLUMNS)


def decode_images(images: Sequence[bytes], where: str = "images", ids: Sequence[str] | None = None) -> np.ndarray:
    """PNG bytes -> uint8 array (N, H, W, 3); all images must share one size.

    Errors name ``where`` (e.g. the shard), the row and, when given, the id.
    """
    arrays = []
    for i, data in enumerate(images):
        try:
            arrays.append(decode_png(data))
        except ValueError as exc:
            label = f" (id {ids[i]!r})" if ids is not None else ""
            raise DataError(f"{where}, row {i}{label}: {exc}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{where}: images have different sizes {sorted(shapes)}; shards hold one resolution")
    return np.stack(arrays) if arrays else np.zeros((0, 0, 0, 3), np.uint8)


def load_decoded(
    shard_dir: Path, verify: bool = True, splits: Sequence[str] | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """Decode a whole shard folder once: (pixels uint8 (N, H, W, 3), metadata frame of N rows)."""
    pixels, metas = [], []
    vocab = vocabulary_of(shard_dir)
    for path in shard_paths(shard_dir):
        table = read_shard(path, vocab, verify=False)
        if verify:  # labels and checksums; decoding below is the decodability check
            verify_table(table, vocab, path, decode=False)
        meta = table.select(METADATA_COLUMNS).to_pandas()
        keep = np.ones(len(meta), bool) if splits is None else meta["split"].isin(splits).to_numpy()
        if keep.any():
            images = [b for b, k in zip(table.column("image").to_pylist(), keep) if k]
            pixels.append(decode_images(images, f"shard {path}", meta["id"][keep].tolist()))
            metas.append(meta[keep].reset_index(drop=True))
    if not pixels:
        return np.zeros((0, 0, 0, 3), np.uint8), pd.DataFrame(columns=METADATA_COLUMNS)
    return np.concatenate(pixels), pd.concat(metas, ignore_index=True)
