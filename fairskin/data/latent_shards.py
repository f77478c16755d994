"""Cached VAE latents as parquet shards, streamed in the weighted plan's order within a memory budget.

The in-memory feed (``fairskin.diffusion.feed`` over ``cache_training_set``'s arrays) holds every cached
latent at once: fine for the paper's 2,600 images, not for ISIC-scale sets (~400k images, ~50 GB of 512 px
latents with both flips) or a million-image synthetic set. This module keeps the same plan semantics and
the same :class:`~fairskin.diffusion.feed.StepInputs`, with the latents read from shards:

**Layout** (a local folder, a URI such as ``s3://bucket/prefix``, or any ``(pyarrow.fs.FileSystem, path)``)::

    latents-00000.parquet ... latents-NNNNN.parquet   # row_id int64, subclass int64, latents tensor
    latents.json                                      # shape, rows, row groups, shards, subclass counts

Each row is one training image: its id in the training set, its subclass id, and the float32 latents of
the image and of its horizontal flip (a ``fixed_shape_tensor`` of shape (2, C, h, w)). Rows are stored
**sorted by subclass**, so subclass s occupies one contiguous range of cache rows and the plan needs only
the per-subclass counts (O(subclasses) memory, whatever the number of rows). Shards are written in row
groups of ``rows_per_group`` rows, the unit of reading. Every file is written under a temporary name and
moved into place; ``latents.json`` is written last, so a killed writer leaves no set that looks complete.

**Plan** (:class:`~fairskin.data.latent_stream.ShardPlan`, in :mod:`fairskin.data.latent_stream` with the stream): the draw at global position p is a pure function of (seed, p), in blocks of
:data:`PLAN_BLOCK` positions. ``apply="sampler"``: subclass s with probability proportional to
N_s x w(N_s) (w = 1, 1/N or 1/sqrt N: the level-1 weights), then a row uniform within s, i.e. the
same P(row) as :class:`fairskin.data.sampling.WeightedSampler`, every position an independent draw
(so every batch is a mixed, independent weighted draw); loss weight 1. ``apply="loss"``: epoch e is a
permutation of the rows seeded by (seed, e) (8 bytes per row: the one O(rows) structure here), each row
carrying its normalised weight as loss weight.

**Reading** (:class:`BudgetedReader`): the steps are taken in windows; a window's rows are mapped to their
(shard, row group), the groups it lacks are read (one open file per shard, groups in file order) into a
least-recently-used cache of decoded groups whose bytes never exceed the budget's cache share, and each
step's latents are gathered from it. The window is sized so that all its groups fit at once. Decoded bytes
held are counted exactly (``held_bytes``, ``peak_held_bytes``). :data:`CACHE_FRACTION` of the budget holds
the decoded groups, two groups of read buffers, :data:`STEPS_IN_FLIGHT` steps of gathered latents (what
the consumer's prefetch queue holds) and the parsed footers of the :data:`OPEN_FILES` shards kept open; the
rest is headroom for the allocator and the reader's first-use state.
The process's resident memory stays within the budget when freed buffers go back to the OS
(:func:`limit_allocator_slack`; measured in ``benchmarks/latent_stream.py``).

No ray, mlflow, pydantic or torch import at module level: the feed's users import it on the GPU benchmark
machine, which has none of the first three (torch comes with the feed's flip rule and StepInputs, imported
when a stream starts).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fairskin.data import DataError

MB = 1 << 20
SCHEMA_VERSION = 1
INDEX_FILE = "latents.json"
SHARD_PREFIX = "latents"
# A random row costs one row-group read: ~0.4 ms fixed plus ~4 ms per MB here (pyarrow 25, page cache), so
# groups are small; 512 px latents (128 KB a row, both flips) get groups of 2 rows.
GROUP_BYTES = 256 * 1024
SHARD_BYTES = 64 * MB
PLAN_BLOCK = 8192  # positions per plan block: block k's draws come from SeedSequence([seed, k, ...])
OPEN_FILES = 8  # shards kept open, each holding its parsed parquet footer
FOOTER_GROUP_BYTES = 3072  # memory of a parsed footer per row group (measured: 0.7 MB for 256 groups of 3 columns)
# The decoded cache, the read buffers and the steps in flight get this share of the budget; the rest is
# headroom for what the module cannot count (allocator slack, arrow's reader state, library pages first
# touched): ~8 MB here with limit_allocator_slack(), see benchmarks/latent_stream.py.
CACHE_FRACTION = 0.6
STEPS_IN_FLIGHT = 4  # gathered steps the budget reserves for: Prefetch's queue (2), one being built, one used


# --------------------------------------------------------------------------- where shards live


def resolve_root(root: Any) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, base path)`` of a shard folder: a local path, a URI (``file://``, ``s3://``, ...)
    or a ``(pyarrow.fs.FileSystem, path)`` pair."""
    if isinstance(root, tuple):
        fs, path = root
        return fs, str(path).rstrip("/")
    text = str(root)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _describe(fs: pafs.FileSystem, path: str) -> str:
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"


def _schema(shape: tuple[int, ...]) -> pa.Schema:
    return pa.schema(
        [
            ("row_id", pa.int64()),
            ("subclass", pa.int64()),
            ("latents", pa.fixed_shape_tensor(pa.float32(), list(shape))),
        ]
    )


def _move_into_place(fs: pafs.FileSystem, tmp: str, final: str) -> None:
    fs.move(tmp, final)  # a rename on local and HDFS file systems; object stores copy (each PUT is atomic)


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    _move_into_place(fs, tmp, path)


# --------------------------------------------------------------------------- writing


class LatentShardWriter:
    """Write a latent cache as parquet shards, chunk by chunk, holding one row group at a time.

    ``shape``: one row's latents, (2, C, h, w) (the image and its horizontal flip). ``rows_per_group``: rows
    per parquet row group, the unit of reading (default: :data:`GROUP_BYTES` of latents, at least one row);
    ``rows_per_shard``: a multiple of it (default: about :data:`SHARD_BYTES` per file). Rows must arrive in
    non-decreasing subclass order (see :func:`write_latent_shards`, which sorts). Use as a context manager,
    or call :meth:`close` (which writes the index; without it the set stays incomplete and is refused).
    """

    def __init__(
        self,
        root: Any,
        shape: tuple[int, ...],
        *,
        rows_per_shard: int | None = None,
        rows_per_group: int | None = None,
        overwrite: bool = False,
    ):
        row_bytes = int(np.prod(shape)) * 4
        rows_per_group = rows_per_group or max(1, GROUP_BYTES // row_bytes)
        rows_per_shard = rows_per_shard or max(1, SHARD_BYTES // (rows_per_group * row_bytes)) * rows_per_group
        if rows_per_group < 1 or rows_per_shard < rows_per_group or rows_per_shard % rows_per_group:
            raise ValueError(
                f"rows_per_shard {rows_per_shard} must be a positive multiple of rows_per_group {rows_per_group}"
            )
        if len(shape) != 4 or shape[0] != 2:
            raise ValueError(f"latent shape {shape}: expected (2, C, h, w), both flips of each image")
        self.fs, self.base = resolve_root(root)
        self.shape = tuple(int(n) for n in shape)
        self.rows_per_shard, self.rows_per_group = rows_per_shard, rows_per_group
        index = f"{self.base}/{INDEX_FILE}"
        if self.fs.get_file_info(index).type != pafs.FileType.NotFound:
            if not overwrite:
                raise FileExistsError(f"{_describe(self.fs, index)} exists: a latent set is already there")
            self.fs.delete_file(index)  # first, so a half-rewritten set never looks complete
        self.fs.create_dir(self.base, recursive=True)
        self._schema = _schema(self.shape)
        self._shards: list[dict[str, Any]] = []
        self._counts: dict[int, int] = {}
        self._last_subclass: int | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._stream = None
        self._tmp = self._final = ""
        self._shard_rows = 0

    def add(self, row_ids: np.ndarray, subclass: np.ndarray, latents: np.ndarray) -> None:
        """Append rows: ``row_ids`` int (n,), ``subclass`` int (n,) non-decreasing (also across calls),
        ``latents`` float32 (n, 2, C, h, w)."""
        row_ids, subclass = np.asarray(row_ids, np.int64), np.asarray(subclass, np.int64)
        latents = np.ascontiguousarray(latents, dtype=np.float32)
        if latents.shape[1:] != self.shape or len(latents) != len(row_ids) or len(subclass) != len(row_ids):
            raise ValueError(
                f"rows of shape {latents.shape} with {len(row_ids)} ids and {len(subclass)} subclasses: "
                f"expected (n, {', '.join(map(str, self.shape))}) and n of each"
            )
        if len(subclass) == 0:
            return
        order = np.concatenate([[self._last_subclass if self._last_subclass is not None else subclass[0]], subclass])
        if np.any(np.diff(order) < 0) or subclass[0] < 0:
            raise ValueError(
                "rows must come in non-decreasing subclass order (ids >= 0): the plan reads subclass s "
                "as one contiguous range of rows; write_latent_shards sorts for you"
            )
        self._last_subclass = int(subclass[-1])
        ids, counts = np.unique(subclass, return_counts=True)
        for s, n in zip(ids.tolist(), counts.tolist()):
            self._counts[s] = self._counts.get(s, 0) + n
        self._pending.append((row_ids, subclass, latents))
        self._pending_rows += len(row_ids)
        while self._pending_rows >= self._group_rows_now():
            self._write_group(self._group_rows_now())

    def _group_rows_now(self) -> int:
        """Rows of the next row group: a full group, or what the current shard still takes."""
        return min(self.rows_per_group, self.rows_per_shard - self._shard_rows)

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts, taken = [], 0
        while taken < n:
            ids, sub, lat = self._pending[0]
            k = min(n - taken, len(ids))
            parts.append((ids[:k], sub[:k], lat[:k]))
            if k == len(ids):
                self._pending.pop(0)
            else:
                self._pending[0] = (ids[k:], sub[k:], lat[k:])
            taken += k
        self._pending_rows -= n
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def _write_group(self, n: int) -> None:
        ids, sub, lat = self._take(n)
        if self._writer is None:
            name = f"{SHARD_PREFIX}-{len(self._shards):05d}.parquet"
            self._final = f"{self.base}/{name}"
            self._tmp = f"{self.base}/.{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._stream = self.fs.open_output_stream(self._tmp)
            # Latents barely compress; no compression keeps reads a copy, not a decode.
            self._writer = pq.ParquetWriter(self._stream, self._schema, compression="none")
            self._shards.append({"file": name, "rows": 0})
        table = pa.table(
            {"row_id": ids, "subclass": sub, "latents": pa.FixedShapeTensorArray.from_numpy_ndarray(lat)},
            schema=self._schema,
        )
        self._writer.write_table(table, row_group_size=n)
        self._shard_rows += n
        self._shards[-1]["rows"] = self._shard_rows
        if self._shard_rows == self.rows_per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        self._stream.close()
        _move_into_place(self.fs, self._tmp, self._final)
        self._writer, self._stream, self._shard_rows = None, None, 0

    def close(self) -> LatentShards:
        """Write the last group and shard, then ``latents.json``; returns the set, opened."""
        while self._pending_rows:
            self._write_group(min(self._pending_rows, self._group_rows_now()))
        if self._writer is not None:
            self._close_shard()
        if not self._shards:
            raise ValueError("no rows were written")
        index = {
            "schema_version": SCHEMA_VERSION,
            "shape": list(self.shape),
            "dtype": "float32",
            "rows": sum(s["rows"] for s in self._shards),
            "rows_per_group": self.rows_per_group,
            "rows_per_shard": self.rows_per_shard,
            "shards": self._shards,
            "subclasses": [[s, n] for s, n in sorted(self._counts.items())],
        }
        _write_bytes(self.fs, f"{self.base}/{INDEX_FILE}", (json.dumps(index, indent=2) + "\n").encode())
        return LatentShards((self.fs, self.base))

    def __enter__(self) -> LatentShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # leave no temporary file behind a failed write
            self._writer.close()
            self._stream.close()
            self.fs.delete_file(self._tmp)


def write_latent_shards(
    root: Any,
    row_ids: np.ndarray,
    subclass: np.ndarray,
    latents: np.ndarray,
    *,
    rows_per_shard: int | None = None,
    rows_per_group: int | None = None,
    overwrite: bool = False,
) -> LatentShards:
    """Write in-memory latents (``latents`` float32 (n, 2, C, h, w), ``row_ids`` / ``subclass`` int (n,)) as a
    shard set, rows sorted by subclass (stable); for sets that fit in memory. Larger sets: feed a
    :class:`LatentShardWriter` chunk by chunk in subclass order."""
    order = np.argsort(np.asarray(subclass), kind="stable")
    with LatentShardWriter(
        root,
        tuple(np.shape(latents)[1:]),
        rows_per_shard=rows_per_shard,
        rows_per_group=rows_per_group,
        overwrite=overwrite,
    ) as writer:
        for lo in range(0, len(order), writer.rows_per_group * 64):
            take = order[lo : lo + writer.rows_per_group * 64]
            writer.add(np.asarray(row_ids)[take], np.asarray(subclass)[take], np.asarray(latents)[take])
    return LatentShards((writer.fs, writer.base))


# --------------------------------------------------------------------------- reading


class LatentShards:
    """An opened shard set: its index, checked against every shard's parquet footer.

    Errors (:class:`~fairskin.data.DataError`) name the file and what was expected: a missing index or
    shard, a column missing or of another type, a latent shape other than the index's, a row count or
    row-group layout other than the index's.
    """

    def __init__(self, root: Any):
        self.fs, self.base = resolve_root(root)
        where = _describe(self.fs, f"{self.base}/{INDEX_FILE}")
        try:
            with self.fs.open_input_stream(f"{self.base}/{INDEX_FILE}") as fh:
                index = json.loads(fh.read().decode())
        except FileNotFoundError:
            raise DataError(f"{where}: missing; the latent set is incomplete or not a latent set") from None
        if index.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{where}: schema_version {index.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        self.index = index
        self.shape: tuple[int, ...] = tuple(index["shape"])
        self.rows: int = int(index["rows"])
        self.rows_per_group: int = int(index["rows_per_group"])
        self.files = [f"{self.base}/{s['file']}" for s in index["shards"]]
        shard_rows = np.array([s["rows"] for s in index["shards"]], np.int64)
        self.shard_start = np.concatenate([[0], np.cumsum(shard_rows)])  # cache row of each shard's first row
        pairs = np.array(index["subclasses"], np.int64).reshape(-1, 2)
        self.subclass_ids, self.subclass_counts = pairs[:, 0], pairs[:, 1]
        self.subclass_start = np.concatenate([[0], np.cumsum(self.subclass_counts)])
        if self.shard_start[-1] != self.rows or self.subclass_start[-1] != self.rows:
            raise DataError(
                f"{where}: rows {self.rows}, but the shards hold {self.shard_start[-1]} and the "
                f"subclass counts sum to {self.subclass_start[-1]}"
            )
        self.max_groups = 0  # row groups of the largest shard (its parsed footer's size)
        for path, rows in zip(self.files, shard_rows):
            self._check_footer(path, int(rows))

    def __len__(self) -> int:
        return self.rows

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's latents (both flips), float32."""
        return int(np.prod(self.shape)) * 4

    @property
    def nbytes(self) -> int:
        """Bytes of every row's latents: what the in-memory feed would hold."""
        return self.rows * self.row_bytes

    def describe(self, path: str) -> str:
        return _describe(self.fs, path)

    def _check_footer(self, path: str, rows: int) -> None:
        where = self.describe(path)
        try:
            with self.fs.open_input_file(path) as fh:
                meta = pq.read_metadata(fh)
        except FileNotFoundError:
            raise DataError(f"{where}: listed in {INDEX_FILE} but missing") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{where}: not a readable parquet file ({exc})") from None
        expected = _schema(self.shape)
        schema = meta.schema.to_arrow_schema()
        for field in expected:
            if field.name not in schema.names:
                raise DataError(
                    f"{where}: no column {field.name!r}; expected columns {expected.names} "
                    f"({', '.join(f'{f.name}: {f.type}' for f in expected)}), found {schema.names}"
                )
            if not schema.field(field.name).type.equals(field.type):
                raise DataError(
                    f"{where}: column {field.name!r} is {schema.field(field.name).type}; expected "
                    f"{field.type} (latent shape {list(self.shape)} from {INDEX_FILE})"
                )
        self.max_groups = max(self.max_groups, meta.num_row_groups)
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        full = [self.rows_per_group] * (rows // self.rows_per_group) + (
            [rows % self.rows_per_group] if rows % self.rows_per_group else []
        )
        if meta.num_rows != rows or groups != full:
            raise DataError(
                f"{where}: {meta.num_rows} rows in row groups of {sorted(set(groups))}; {INDEX_FILE} "
                f"expects {rows} rows in groups of {self.rows_per_group}"
            )

    def locate(self, cache_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, row group, row within group) of each cache row (int64 (n,) each)."""
        shard = np.searchsorted(self.shard_start, cache_rows, side="right") - 1
        local = cache_rows - self.shard_start[shard]
        return shard, local // self.rows_per_group, local % self.rows_per_group

    def subclass_of(self, cache_rows: np.ndarray) -> np.ndarray:
        """The subclass id of each cache row, from the index alone (rows are stored sorted by subclass)."""
        return self.subclass_ids[np.searchsorted(self.subclass_start, cache_rows, side="right") - 1]


@dataclass
class DecodedGroup:
    """One row group in memory: ``row_id`` / ``subclass`` int64 (g,), ``latents`` float32 (g, 2, C, h, w)."""

    row_id: np.ndarray
    subclass: np.ndarray
    latents: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.row_id.nbytes + self.subclass.nbytes + self.latents.nbytes


class BudgetedReader:
    """Gather rows of a :class:`LatentShards` through an LRU cache of decoded row groups of at most
    ``cache_bytes`` bytes. Counts what it holds (``held_bytes``, ``peak_held_bytes``) and reads
    (``groups_read``, ``bytes_read``: decoded bytes)."""

    def __init__(self, shards: LatentShards, cache_bytes: int):
        self.shards = shards
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[int, int], DecodedGroup] = OrderedDict()
        self.held_bytes = self.peak_held_bytes = 0
        self.groups_read = self.bytes_read = 0
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()

    @property
    def group_bytes(self) -> int:
        """Bytes of a full decoded row group (latents, row id and subclass)."""
        return self.shards.rows_per_group * (self.shards.row_bytes + 16)

    def _file(self, shard: int) -> pq.ParquetFile:
        """The shard's open parquet file (its footer parsed once), from a small LRU of open files."""
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        if len(self._files) >= OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        self._files[shard] = pq.ParquetFile(self.shards.fs.open_input_file(self.shards.files[shard]))
        return self._files[shard]

    def _read(self, shard: int, groups: list[int]) -> None:
        pf = self._file(shard)
        for g in groups:
            table = pf.read_row_group(g, use_threads=False)
            decoded = DecodedGroup(
                table.column("row_id").to_numpy(),
                table.column("subclass").to_numpy(),
                table.column("latents").combine_chunks().to_numpy_ndarray(),
            )
            del table
            first = int(self.shards.shard_start[shard]) + g * self.shards.rows_per_group
            expected = self.shards.subclass_of(np.arange(first, first + len(decoded.row_id)))
            if not np.array_equal(decoded.subclass, expected):
                raise DataError(
                    f"{self.shards.describe(self.shards.files[shard])}, row group {g}: subclass ids "
                    f"{np.unique(decoded.subclass).tolist()} do not match {INDEX_FILE}'s ranges "
                    f"({np.unique(expected).tolist()}); rows must be stored sorted by subclass"
                )
            self._cache[(shard, g)] = decoded
            self.held_bytes += decoded.nbytes
            self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
            self.groups_read += 1
            self.bytes_read += decoded.nbytes

    def load(self, cache_rows: np.ndarray) -> None:
        """Make every group holding ``cache_rows`` resident: evict least-recently-used groups not needed,
        then read the missing ones, shard by shard in file order. Raises when they cannot all fit."""
        shard, group, _ = self.shards.locate(np.asarray(cache_rows, np.int64))
        needed = sorted(set(zip(shard.tolist(), group.tolist())))
        if len(needed) * self.group_bytes > self.cache_bytes:
            raise ValueError(
                f"{len(needed)} row groups of {self.group_bytes / MB:.2f} MB do not fit the cache's "
                f"{self.cache_bytes / MB:.2f} MB; read fewer rows at once"
            )
        for key in needed:
            if key in self._cache:
                self._cache.move_to_end(key)
        missing = [key for key in needed if key not in self._cache]
        wanted = set(needed)
        room = self.cache_bytes - len(missing) * self.group_bytes
        for key in list(self._cache):
            if self.held_bytes <= room:
                break
            if key not in wanted:
                self.held_bytes -= self._cache.pop(key).nbytes
        by_shard: dict[int, list[int]] = {}
        for s, g in missing:
            by_shard.setdefault(s, []).append(g)
        for s, groups in by_shard.items():
            self._read(s, groups)

    def gather(self, cache_rows: np.ndarray, flips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latents float32 (n, C, h, w) of flip ``flips[i]`` of each row, row ids int64 (n,), subclass int64 (n,))
        of resident rows (call :meth:`load` first); the latents are a copy, safe after eviction."""
        shard, group, within = self.shards.locate(np.asarray(cache_rows, np.int64))
        n = len(shard)
        latents = np.empty((n, *self.shards.shape[1:]), np.float32)
        row_id, subclass = np.empty(n, np.int64), np.empty(n, np.int64)
        for i, key in enumerate(zip(shard.tolist(), group.tolist())):
            decoded = self._cache[key]
            latents[i] = decoded.latents[within[i], flips[i]]
            row_id[i], subclass[i] = decoded.row_id[within[i]], decoded.subclass[within[i]]
        return latents, row_id, subclass
