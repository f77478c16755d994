"""Fine-tuned generators and their pools, kept under keys of their own so that more repeats or variants reuse them.

The ``finetune`` and ``generate`` stages are keyed by everything they make (``diffusion.variants`` x
``diffusion.repeat_seeds``): adding a batch of repeats (``report.until_conclusive``) or a variant gives new stage
folders. What one generator's fine-tune or pool depends on is narrower, so each is also kept by its own key:

    <runs root>/generators/<generator>-<key>/   its pipeline/ (and method_state.png), STORE_RECORD
    <runs root>/pools/<pool>-<key>/             its pool's shards and preview.png, STORE_RECORD
    <runs root>/evaluations/<pool>-<key>/       its pool's evaluation folder (tables, plots, summary.json)

* a generator's key: the fine-tune stage's config slice without the variant list, custom variants and repeat
  seeds; the stage's version and its inputs' keys (prepare, base, control_base); the generator's id, seed and
  resolved method (spec, module, module version: :meth:`fairskin.methods.Method.fingerprint`);
* a pool's key: the generate stage's slice without the same three and the pool seeds; its version; the pool's id
  and noise seed (one of ``generation.pool_seeds``); the content fingerprint of the fine-tuned weights it samples;
* a pool's evaluation's key: the evaluate stage's slice (with its external inputs' fingerprints), its version, the
  keys of its inputs but the pool set (prepare, reference, judge), the pool's id and the content fingerprint of
  its shards.

Each record holds the content fingerprint of what the folder holds, so a stage linking it need not read it again.
A stage makes what its store lacks, writes it there (temporary name, renamed when complete, the record last)
and fills its own folder with hard links to the stored files (copies where the file system has no hard links),
so every stage after it reads the stage folder as before. ``STORE_FILE`` in the stage folder names the stored
folders it links; ``python -m fairskin runs`` lists a stored folder as in use when a generator or pool of the
configuration has its key (:func:`stored_in_use`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult, config_slice

STORE_RECORD = "_stored.json"
STORE_FILE = "store.json"  # in a stage folder: generator or pool id -> the stored folder it links
GENERATORS, POOLS, EVALUATIONS = "generators", "pools", "evaluations"
# What makes a stage's key depend on the whole set of generators, not on one of them.
SET_READS = ("diffusion.variants", "diffusion.custom_variants", "diffusion.repeat_seeds", "generation.pool_seeds")


def _hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def generator_key(
    config: FairSkinConfig, generator: str, reads: Iterable[str], inputs: Mapping[str, StageResult], version: int
) -> str:
    """12 hex digits: what the fine-tune of ``generator`` (``vanilla``, ``vanilla-r3``) depends on (module doc).

    ``reads``, ``inputs``, ``version``: those of the ``finetune`` stage for ``config``."""
    from fairskin.diffusion.variants import generator_seed
    from fairskin.provenance import split_generator_id

    variant = split_generator_id(generator)[0]
    return _hash(
        {
            "kind": GENERATORS,
            "version": version,
            "reads": config_slice(config, [r for r in reads if r not in SET_READS]),
            "inputs": {k: v.key for k, v in sorted(inputs.items())},
            "generator": generator,
            "seed": generator_seed(config.diffusion, generator),
            "method": config.diffusion.method(variant).fingerprint(),
        }
    )


def pool_key(config: FairSkinConfig, pool: str, weights: str, reads: Iterable[str], version: int) -> str:
    """12 hex digits: what the pool ``pool`` (a pool id, :func:`fairskin.provenance.pool_id`) depends on (module
    doc); ``weights``: the content fingerprint of its generator's fine-tuned pipeline
    (:func:`fairskin.diffusion.models.trained_fingerprint`); ``reads``, ``version``: those of the ``generate``
    stage."""
    from fairskin.diffusion.variants import pool_noise_seed

    return _hash(
        {
            "kind": POOLS,
            "version": version,
            "reads": config_slice(config, [r for r in reads if r not in SET_READS]),
            "generator": pool,
            "seed": pool_noise_seed(config.diffusion, pool),
            "weights": weights,
        }
    )


def evaluation_key(
    config: FairSkinConfig,
    pool: str,
    shards: str,
    reads: Iterable[str],
    inputs: Mapping[str, StageResult],
    version: int,
    external: Mapping[str, str] | None = None,
) -> str:
    """12 hex digits: what the evaluation of pool ``pool`` depends on (module doc); ``shards``: the content
    fingerprint of its shards (:func:`fairskin.provenance.shard_fingerprint`); ``reads``, ``inputs``, ``version``,
    ``external``: those of the ``evaluate`` stage (the ``generate`` input, the whole pool set, is left out)."""
    return _hash(
        {
            "kind": EVALUATIONS,
            "version": version,
            "reads": config_slice(config, reads, external),
            "inputs": {k: v.key for k, v in sorted(inputs.items()) if k != "generate"},
            "pool": pool,
            "shards": shards,
        }
    )


def stored_dir(config: FairSkinConfig, kind: str, generator: str, key: str) -> Path:
    """``<runs root>/<kind>/<generator>-<key>`` (``kind``: ``GENERATORS``, ``POOLS`` or ``EVALUATIONS``)."""
    return config.runtime.runs_root / kind / f"{generator}-{key}"


def stored_record(folder: Path) -> dict[str, Any] | None:
    """The record of a complete stored folder (written last), else None."""
    try:
        return json.loads((Path(folder) / STORE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def link_tree(source: Path, target: Path) -> None:
    """``target``: a tree of hard links to ``source``'s files (copies across file systems), without its record."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, ignore=shutil.ignore_patterns(STORE_RECORD))


def generator_folders(
    config: FairSkinConfig,
    generators: Iterable[str],
    reads: Iterable[str],
    inputs: Mapping[str, StageResult],
    version: int,
    redo: bool = False,
) -> dict[str, Path]:
    """generator id -> its stored folder (:func:`generator_key`; ``reads``, ``inputs``, ``version``: the finetune
    stage's). ``redo`` (``--force``): those folders are removed first."""
    reads = list(reads)
    keys = {g: generator_key(config, g, reads, inputs, version) for g in generators}
    return _folders(config, GENERATORS, keys, redo)


def pool_folders(
    config: FairSkinConfig,
    weights: Mapping[str, str],
    reads: Iterable[str],
    version: int,
    redo: bool = False,
) -> dict[str, Path]:
    """pool id -> its stored folder (:func:`pool_key`); ``weights``: pool id -> the fingerprint of its generator's
    fine-tuned pipeline; ``reads``, ``version``: the generate stage's. ``redo``: those folders are removed first."""
    reads = list(reads)
    keys = {p: pool_key(config, p, w, reads, version) for p, w in weights.items()}
    return _folders(config, POOLS, keys, redo)


def evaluation_folders(
    config: FairSkinConfig,
    shards: Mapping[str, str],
    reads: Iterable[str],
    inputs: Mapping[str, StageResult],
    version: int,
    external: Mapping[str, str] | None = None,
    redo: bool = False,
) -> dict[str, Path]:
    """pool id -> its kept evaluation folder (:func:`evaluation_key`); ``shards``: pool id -> the content fingerprint
    of its shards; the rest: the evaluate stage's. ``redo``: those folders are removed first."""
    reads = list(reads)
    keys = {p: evaluation_key(config, p, fp, reads, inputs, version, external) for p, fp in shards.items()}
    return _folders(config, EVALUATIONS, keys, redo)


def _folders(config: FairSkinConfig, kind: str, keys: Mapping[str, str], redo: bool) -> dict[str, Path]:
    from fairskin.pipeline.keyed import clean_stale_partials

    folders = {name: stored_dir(config, kind, name, key) for name, key in keys.items()}
    if redo:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    clean_stale_partials(config.runtime.runs_root / kind)  # temporaries of dead writers
    return folders


def link_stored(out: Path, stored: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Link each stored folder into ``out/<name>`` (:func:`link_tree`) and name them in ``out/STORE_FILE``;
    returns name -> its record."""
    from fairskin.io import atomic_write_json

    records = {}
    for name, folder in stored.items():
        link_tree(folder, Path(out) / name)
        records[name] = stored_record(folder)
    atomic_write_json(Path(out) / STORE_FILE, {name: str(folder) for name, folder in stored.items()})
    return records


def stored_in_use(config: FairSkinConfig, keys: Mapping[str, str]) -> set[Path]:
    """The stored generators and pools the configuration's finetune and generate stages would link, from the
    current stage keys (``keys``: stage -> key, :func:`fairskin.housekeeping.current_keys`). A pool counts when its
    generator is stored (its key needs the generator's weights). Empty when the fine-tune's inputs' keys are unknown."""
    from fairskin.diffusion.variants import fine_tuned_generators, pool_ids
    from fairskin.pipeline.stage import STAGES

    finetune, generate = STAGES["finetune"], STAGES["generate"]
    if any(name not in keys for name in finetune.inputs):
        return set()
    inputs = {n: StageResult(n, keys[n], Path(), True, 0.0) for n in finetune.inputs}
    used = set()
    for g in fine_tuned_generators(config.diffusion):
        folder = stored_dir(
            config, GENERATORS, g, generator_key(config, g, finetune.reads_for(config), inputs, finetune.version)
        )
        used.add(folder)
        record = stored_record(folder)
        for pool in pool_ids([g], config.generation.pool_seeds) if record is not None else []:
            key = pool_key(config, pool, record["fingerprint"], generate.reads_for(config), generate.version)
            used.add(stored_dir(config, POOLS, pool, key))
    return used
