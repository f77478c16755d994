"""Provenance: content fingerprints of a run's inputs, generator ids, and the tags that carry them.

The report joins MLflow runs by these tags, never by "latest": a classifier trial and an
evaluate figure share a row only when they were computed on the same pool (same
``fairskin.pool_fingerprint``), and a study belongs to a pipeline's report when its pools
are that pipeline's pools.

* A **generator** is one (variant, repeat) pair: a fine-tune and its pool. Its id is the
  variant name for repeat 0 and ``<variant>-r<repeat>`` after that (variant names hold no
  ``-``, so the id splits back unambiguously).
* A **fingerprint** is 16 hex digits of a SHA-256 over content, never over paths or mtimes:
  a shard folder's rows (id, labels, split and each image's checksum), a model folder's
  weight and config files.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

TAG_PIPELINE = "fairskin.pipeline_run"
TAG_STAGE_KEY = "fairskin.stage_key"
TAG_VARIANT = "fairskin.variant"
TAG_REPEAT = "fairskin.repeat"
TAG_GENERATOR = "fairskin.generator"
TAG_POOL_SEED = "fairskin.pool_seed"  # which of generation.pool_seeds a pool (and what read it) was sampled under
TAG_POOL = "fairskin.pool_fingerprint"
TAG_REAL = "fairskin.real_fingerprint"
TAG_FINETUNE = "fairskin.finetune_fingerprint"

_GENERATOR = re.compile(r"^(?P<variant>[a-z][a-z0-9_]*)(?:-r(?P<repeat>\d+))?(?:-p(?P<pool>\d+))?$")
_WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".bin", ".model")


def generator_id(variant: str, repeat: int) -> str:
    """``vanilla``, ``vanilla-r1``, ...: the folder and pool name of repeat ``repeat`` of ``variant``."""
    return variant if repeat == 0 else f"{variant}-r{repeat}"


def split_generator_id(generator: str) -> tuple[str, int]:
    """Inverse of :func:`generator_id`: ``"fairskin_s-r2"`` -> ``("fairskin_s", 2)``; a pool id's pool seed is left
    out (``"fairskin_s-r2-p1"`` -> ``("fairskin_s", 2)``)."""
    match = _GENERATOR.match(generator)
    if match is None:
        raise ValueError(f"{generator!r} is not a generator id (<variant> or <variant>-r<repeat>, then -p<pool seed>)")
    return match.group("variant"), int(match.group("repeat") or 0)


def pool_id(generator: str, pool_seed: int) -> str:
    """The folder and name of a generator's pool sampled under ``pool_seed`` (``generation.pool_seeds``):
    ``vanilla-r1`` for pool seed 0 (the pool every run made before pool seeds existed), ``vanilla-r1-p3`` for 3."""
    return generator if pool_seed == 0 else f"{generator}-p{pool_seed}"


def split_pool_id(pool: str) -> tuple[str, int]:
    """Inverse of :func:`pool_id`: ``"vanilla-r1-p3"`` -> ``("vanilla-r1", 3)``, ``"vanilla"`` -> ``("vanilla", 0)``."""
    match = _GENERATOR.match(pool)
    if match is None:
        raise ValueError(f"{pool!r} is not a pool id (<variant>[-r<repeat>][-p<pool seed>])")
    seed = int(match.group("pool") or 0)
    return (pool[: match.start("pool") - 2] if match.group("pool") is not None else pool), seed


def generator_tags(generator: str) -> dict[str, str]:
    """The ``fairskin.variant`` / ``repeat`` / ``generator`` / ``pool_seed`` tags of a generator or pool id."""
    variant, repeat = split_generator_id(generator)
    gen, pool_seed = split_pool_id(generator)
    return {TAG_VARIANT: variant, TAG_REPEAT: str(repeat), TAG_GENERATOR: gen, TAG_POOL_SEED: str(pool_seed)}


def _digest(hasher: hashlib._Hash) -> str:
    return hasher.hexdigest()[:16]


def shard_fingerprint(folder: Path) -> str:
    """Fingerprint of a shard folder (real images or a pool): its rows' ids, labels, splits and
    image checksums, in id order. Independent of file names, shard boundaries and mtimes."""
    from fairskin.data.shards import read_metadata

    meta = read_metadata(Path(folder))
    cols = [c for c in ("id", "group", "disease", "split", "sha256") if c in meta]
    rows = meta[cols].astype(str).sort_values(cols[0]).itertuples(index=False, name=None)
    hasher = hashlib.sha256()
    for row in rows:
        hasher.update("\x1f".join(row).encode())
        hasher.update(b"\x1e")
    return _digest(hasher)


def folder_fingerprint(folder: Path, suffixes: tuple[str, ...] = _WEIGHT_SUFFIXES) -> str:
    """Fingerprint of a model folder: relative path and bytes of every weight / config file
    (``suffixes``) below it, in path order (streamed: a 3 GB UNet is read once, not held).

    A JSON config counts by its content less diffusers' ``_name_or_path`` (where the model was loaded from: a
    fine-tune's checkpoint folder, named by its time), so the same weights and settings give the same fingerprint
    whichever run wrote them."""
    folder = Path(folder)
    hasher = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes):
        hasher.update(str(path.relative_to(folder)).encode() + b"\x1e")
        if path.suffix == ".json":
            hasher.update(_config_bytes(path))
            continue
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
    return _digest(hasher)


def _config_bytes(path: Path) -> bytes:
    """A JSON file's canonical bytes without ``_name_or_path`` (its bytes as they are when it is not an object)."""
    import json

    data = path.read_bytes()
    try:
        tree = json.loads(data)
    except ValueError:
        return data
    if not isinstance(tree, dict):
        return data
    tree.pop("_name_or_path", None)
    return json.dumps(tree, sort_keys=True).encode()
