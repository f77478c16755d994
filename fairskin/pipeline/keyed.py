"""Stages: keyed, skippable, atomic units of the pipeline.

A stage is a function of (config slice, inputs) to an output folder under
``<runs_root>/stages/<name>-<key>``. The key hashes the config slice the stage reads,
the contents of the external files and folders it reads (``external``) and its inputs' keys,
so changing anything upstream changes every key downstream. The
folder is written under a temporary name and renamed when complete: a stage that was
killed leaves only a hidden ``.…partial-…`` folder, never one that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.io import atomic_directory, atomic_write_json
from fairskin.lock import pid_alive

STAGE_RECORD = "_stage.json"
# ``.<name>.partial-<pid>-<8 hex>@<host>`` (older trees: without ``@<host>``, taken as this host's).
_PARTIAL = re.compile(r"^\..+\.(partial|old)-(\d+)-[0-9a-f]{8}(?:@(?P<host>[A-Za-z0-9._-]+))?$")


@dataclass(frozen=True)
class StageResult:
    """Where a stage's output lives and whether this invocation computed it."""

    name: str
    key: str
    path: Path
    skipped: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def stage_key(
    name: str,
    config: FairSkinConfig,
    reads: Iterable[str],
    inputs: Mapping[str, StageResult] | None = None,
    version: int = 1,
    external: Mapping[str, str] | None = None,
) -> str:
    """12-hex-digit hash of (stage name, its code version, the dotted config paths it reads, its inputs' keys,
    and the content fingerprints of the external files and folders it reads).

    ``external``: dotted config path -> content fingerprint (see :mod:`fairskin.fingerprints`). Where
    that path lies inside what the stage reads (``data.csv_path`` inside ``data``), its value (a
    path) is replaced by the fingerprint, so the key follows the file's contents, not its name or
    place. Without external inputs the key is what it was before fingerprints existed.
    """
    payload = {
        "stage": name,
        "version": version,
        "reads": config_slice(config, reads, external),
        "inputs": {k: v.key for k, v in sorted((inputs or {}).items())},
    }
    if external:
        payload["external"] = dict(sorted(external.items()))
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def config_slice(config: FairSkinConfig, reads: Iterable[str], external: Mapping[str, str] | None = None) -> dict:
    """The config slices a stage reads (dotted path -> value), with each external path replaced by its content
    fingerprint."""
    out = {path: config.section(path) for path in sorted(reads)}
    for dotted, fingerprint in (external or {}).items():
        for path in out:
            if dotted == path:
                out[path] = {"content": fingerprint}
            elif dotted.startswith(path + "."):
                node, parts = out[path], dotted[len(path) + 1 :].split(".")
                for part in parts[:-1]:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict) and parts[-1] in node:
                    node[parts[-1]] = {"content": fingerprint}
    return out


def stages_root(config: FairSkinConfig) -> Path:
    return config.runtime.runs_root / "stages"


def stage_dir(config: FairSkinConfig, name: str, key: str) -> Path:
    return stages_root(config) / f"{name}-{key}"


def is_finished(path: Path) -> bool:
    """A stage folder is finished when its record exists (written last, inside the rename)."""
    return (path / STAGE_RECORD).is_file()


def clean_stale_partials(root: Path) -> list[Path]:
    """Remove temporary folders left by killed processes of this host (their PID no longer runs).

    A folder written by another host is kept: its PID says nothing here, and on shared cluster
    storage its writer may be alive (delete such folders by hand once you know it has ended). A folder
    this process is still writing (a stage running beside this one) is kept too.
    """
    from fairskin.io import host_tag, writing_now

    removed = []
    if not root.is_dir():
        return removed
    busy = writing_now()
    for child in root.iterdir():
        match = _PARTIAL.match(child.name)
        if not match or child in busy:
            continue
        if match.group("host") not in (None, host_tag()):
            continue
        pid = int(match.group(2))
        if pid != os.getpid() and pid_alive(pid):
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def run_stage(
    config: FairSkinConfig,
    name: str,
    reads: Iterable[str],
    body: Callable[[Path], Mapping[str, Any] | None],
    *,
    inputs: Mapping[str, StageResult] | None = None,
    force: bool = False,
    version: int = 1,
    external: Mapping[str, str] | None = None,
) -> StageResult:
    """Run ``body(tmp_dir)`` unless a finished folder for this key exists.

    ``body`` writes everything into the folder it is given (use relative paths inside it)
    and returns a small JSON-able summary, stored in the stage record. With ``force`` the
    stage is recomputed and the old folder is replaced only once the new one is complete.
    ``external``: content fingerprints of the files and folders it reads (part of the key).
    """
    reads = list(reads)
    key = stage_key(name, config, reads, inputs, version, external)
    final = stage_dir(config, name, key)
    if is_finished(final) and not force:
        record = json.loads((final / STAGE_RECORD).read_text())
        return StageResult(name, key, final, True, 0.0, record.get("summary", {}))
    clean_stale_partials(final.parent)
    started = time.time()
    with atomic_directory(final, replace=True) as tmp:
        summary = dict(body(tmp) or {})
        seconds = time.time() - started
        atomic_write_json(
            tmp / STAGE_RECORD,
            {
                "stage": name,
                "key": key,
                "version": version,
                "reads": {path: config.section(path) for path in sorted(reads)},
                "external": dict(external or {}),
                "inputs": {k: {"key": v.key, "path": str(v.path)} for k, v in (inputs or {}).items()},
                "started": started,
                "seconds": seconds,
                "summary": summary,
            },
        )
    return StageResult(name, key, final, False, seconds, summary)
