"""``python -m fairskin runs``: what a runs root holds, what the current configuration still uses,
and removing the rest.

    python -m fairskin runs [--preset P] [--config FILE] [key=value ...]                 # list
    python -m fairskin runs ... --remove-unused --dry-run                                # what would go
    python -m fairskin runs ... --remove-unused                                          # remove it

"In use" is decided the way the pipeline decides what to skip: the stage keys of the current
configuration (same ``--preset`` / ``--config`` / overrides as the pipeline), computed along the
stage inputs chain by :func:`fairskin.pipeline.pipeline_stage_key`'s rule. Then

* ``stages/<stage>-<key>`` (its pools, for ``generate``) is in use when ``<key>`` is the
  current key of ``<stage>``; ``stages/generate-<key>.work`` (a killed generate's finished
  items) likewise;
* ``checkpoints/finetune-<key>`` is in use when ``<key>`` is the current fine-tune key;
* ``generators/<generator>-<key>`` and ``pools/<generator>-<key>`` (:mod:`fairskin.pipeline.store`) when a
  generator of the current configuration has that key (the stage folders hold hard links to them: removing
  a stored folder frees space only once no stage folder links it);
* ``tune/<space>-<preset>-<key>`` (a pipeline's study) when it is the current tune stage's
  study; ``tune/standin-pools/<key>`` when it is the current stand-in pool;
* temporaries (``.<name>.partial-<pid>-…@<host>``) of this host whose writer has ended are unused.

Kept whatever the configuration (listed, never removed): studies named by hand
(``python -m fairskin.tune --study NAME``), the caches under ``cache/`` (rebuilt on demand; delete
them by hand to reclaim their space), the MLflow store and its artifacts, temporaries of a running
writer or of another host, and anything this module does not know. A stage whose key cannot be
computed (an unreadable input) marks its folders and every later stage's as "unknown": kept.

Removal takes the runs-root lock (:mod:`fairskin.lock`), so nothing is removed while a pipeline,
a study or another removal holds it; each folder is first renamed to a temporary name (a kill
midway never leaves a half-deleted folder that looks finished; the next run cleans it up).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fairskin.config import FairSkinConfig
from fairskin.tune.trial_memo import MEMO_DIR

IN_USE, UNUSED, KEPT, UNKNOWN = "in use", "unused", "kept", "unknown"
_KEY = r"[0-9a-f]{12}"
_STAGE_DIR = re.compile(rf"^(?P<stage>[a-z_]+)-(?P<key>{_KEY})(?P<work>\.work)?$")
_STUDY_DIR = re.compile(rf"^(?P<space>.+)-(?P<preset>[A-Za-z0-9_]+)-(?P<key>{_KEY})$")
_CHECKPOINTS_DIR = re.compile(rf"^finetune-(?P<key>{_KEY})$")


@dataclass
class Entry:
    """One listed item under the runs root."""

    kind: str  # stage, pool, generate work, checkpoints, study, stand-in pool, partial, cache, tracking, other
    path: Path
    status: str  # IN_USE, UNUSED, KEPT, UNKNOWN
    why: str = ""
    size: int = 0  # bytes (for a pool: already counted in its stage folder)
    modified: float = 0.0  # newest modification time inside (seconds since the epoch)
    part_of: Path | None = None  # a pool: the stage folder that holds it (removed with it)

    @property
    def removable(self) -> bool:
        return self.status == UNUSED and self.part_of is None


@dataclass
class Inventory:
    root: Path
    keys: dict[str, str]  # stage -> current key (stages whose key could be computed)
    unknown: dict[str, str] = field(default_factory=dict)  # stage -> why its key is unknown
    study: str | None = None  # the current tune stage's study name
    entries: list[Entry] = field(default_factory=list)

    def total(self, status: str | None = None) -> int:
        return sum(e.size for e in self.entries if e.part_of is None and (status is None or e.status == status))

    @property
    def unused(self) -> list[Entry]:
        return [e for e in self.entries if e.removable]


# --------------------------------------------------------------------------- current keys


class _ReadOnlyCache:
    """The runs root's fingerprint cache, read but never written (listing changes nothing)."""

    def __new__(cls, root: Path):
        from fairskin.fingerprints import FingerprintCache

        cache = FingerprintCache.for_runs_root(root)
        cache.file = None  # save() becomes a no-op
        return cache


def current_keys(config: FairSkinConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(stage -> key the current configuration computes, stage -> why it could not be computed), for
    every stage a full pipeline run of this preset would run, along the inputs chain."""
    from fairskin.pipeline import STAGES
    from fairskin.pipeline.keyed import StageResult, stage_dir, stage_key
    from fairskin.pipeline.runner import _ordered, _with_inputs
    from fairskin.pipeline.stage import external_fingerprints

    cache = _ReadOnlyCache(config.runtime.runs_root)
    results: dict[str, StageResult] = {}
    unknown: dict[str, str] = {}
    for stage in _with_inputs(_ordered(None, config)):
        missing = [n for n in stage.inputs if n not in results]
        if missing:
            unknown[stage.name] = f"input {missing[0]!r} unknown"
            continue
        try:
            external = external_fingerprints(stage, config, cache)
            key = stage_key(
                stage.name,
                config,
                stage.reads_for(config),
                {n: results[n] for n in stage.inputs},
                stage.version,
                external,
            )
        except Exception as exc:  # an unreadable external input: keep everything of this stage and later
            unknown[stage.name] = f"{type(exc).__name__}: {exc}"
            continue
        results[stage.name] = StageResult(stage.name, key, stage_dir(config, stage.name, key), True, 0.0)
    for name in STAGES:  # stages this preset does not run (presets=...): no current key
        if name not in results and name not in unknown:
            unknown[name] = f"not run by preset {config.preset!r}"
    return {n: r.key for n, r in results.items()}, unknown


def resume_folders(config: FairSkinConfig, keys: dict[str, str]) -> dict[str, Path]:
    """stage -> the folder where it keeps resumable work under its current key, as each stage declares it
    (``Stage.resume_dir``: the fine-tune's checkpoints, generate's finished items, the tune stage's study)."""
    from fairskin.pipeline import STAGES

    out = {}
    for name, stage in STAGES.items():
        if stage.resume_dir is not None and name in keys:
            try:
                out[name] = stage.resume_dir(config, keys[name])
            except Exception:  # e.g. a search space that no longer loads: its folder is "unknown", kept
                continue
    return out


def current_study(config: FairSkinConfig, keys: dict[str, str]) -> str | None:
    """The study the pipeline's tune stage runs with this configuration (None: no tune key)."""
    folder = resume_folders(config, keys).get("tune")
    return None if folder is None else folder.name


# --------------------------------------------------------------------------- scanning


def tree_stats(path: Path) -> tuple[int, float]:
    """(bytes on disk of every file below ``path``, newest modification time); symlinks not followed."""
    try:
        st = path.lstat()
    except OSError:
        return 0, 0.0
    if not path.is_dir() or path.is_symlink():
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for folder, dirs, files in os.walk(path, onerror=lambda _: None):
        for name in dirs + files:
            try:
                s = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            newest = max(newest, s.st_mtime)
            if name in files:
                size += s.st_size
    return size, newest


def _partial_status(path: Path) -> tuple[str, str] | None:
    """(status, why) of a temporary folder, or None when ``path`` is not one."""
    from fairskin.io import host_tag
    from fairskin.lock import pid_alive
    from fairskin.pipeline.keyed import _PARTIAL

    match = _PARTIAL.match(path.name)
    if not match:
        return None
    host, pid = match.group("host"), int(match.group(2))
    if host not in (None, host_tag()):
        return KEPT, f"written on host {host} (its writer may still run there)"
    if pid != os.getpid() and pid_alive(pid):
        return KEPT, f"its writer (PID {pid}) is running"
    return UNUSED, f"left by PID {pid}, which has ended"


def _last_look(config: FairSkinConfig) -> FairSkinConfig:
    """``config`` itself, or with ``report.until_conclusive`` its last look's (``diffusion.max_repeats`` repeats)."""
    if not config.report.until_conclusive:
        return config
    from fairskin.pipeline.conclusive import look_config

    return look_config(config, int(config.diffusion.max_repeats))


def scan(config: FairSkinConfig) -> Inventory:
    """Every stage folder, pool, checkpoint folder, study, cache and temporary under the runs root.

    With ``report.until_conclusive`` "current" means the last look's configuration (``diffusion.max_repeats``
    repeats): every stored generator and pool a look may use is in use, the stage folders of earlier looks are
    not (a rerun replays those looks from the stored generators and pools)."""
    from fairskin.fingerprints import CACHE_FILE
    from fairskin.lock import LOCK_FILE
    from fairskin.pipeline import STAGES
    from fairskin.pipeline.store import EVALUATIONS, GENERATORS, POOLS

    config = _last_look(config)
    root = config.runtime.runs_root
    keys, unknown = current_keys(config)
    inv = Inventory(root, keys, unknown, current_study(config, keys))
    add = inv.entries.append

    resumes = resume_folders(config, keys)

    def keyed(kind: str, path: Path, stage: str, key: str) -> Entry:
        if stage in keys:
            current = resumes.get(stage) if kind in ("checkpoints", "generate work") else None
            status = IN_USE if (path == current if current is not None else keys[stage] == key) else UNUSED
            why = "current key" if status == IN_USE else f"current {stage} key is {keys[stage]}"
        else:
            status, why = UNKNOWN, f"current {stage} key unknown ({unknown.get(stage, '?')})"
        return Entry(kind, path, status, why)

    stages = root / "stages"
    for child in sorted(stages.iterdir()) if stages.is_dir() else []:
        partial = _partial_status(child)
        match = _STAGE_DIR.match(child.name)
        if partial is not None:
            entry = Entry("partial", child, *partial)
        elif match and match["stage"] in STAGES:
            kind = "generate work" if match["work"] else "stage"
            entry = keyed(kind, child, match["stage"], match["key"])
            if kind == "stage" and not (child / "_stage.json").is_file():
                entry.why += "; unfinished (no stage record)"
        else:
            entry = Entry("other", child, KEPT, "not a stage folder")
        add(entry)
        if entry.kind == "stage" and match["stage"] == "generate":
            for index in sorted(child.glob("*/index.json")):
                add(Entry("pool", index.parent, entry.status, f"in {child.name}", part_of=child))

    checkpoints = root / "checkpoints"
    for child in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []:
        partial = _partial_status(child)
        match = _CHECKPOINTS_DIR.match(child.name)
        if partial is not None:
            add(Entry("partial", child, *partial))
        elif match:
            add(keyed("checkpoints", child, "finetune", match["key"]))
        else:
            add(Entry("other", child, KEPT, "not a fine-tune checkpoint folder"))

    _scan_tune(config, root / "tune", inv, keys, unknown)
    _scan_store(config, root, inv, keys, unknown)

    cache = root / "cache"
    for child in sorted(cache.iterdir()) if cache.is_dir() else []:
        why = "content fingerprints of inputs" if child.name == CACHE_FILE.name else "shared cache, rebuilt on demand"
        add(Entry("cache", child, KEPT, why))

    known = {"stages", "checkpoints", "tune", "cache", GENERATORS, POOLS, LOCK_FILE}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.name in known or child.name.startswith(LOCK_FILE):
            continue
        if child.name in ("mlflow.db", "mlartifacts"):
            add(Entry("tracking", child, KEPT, "MLflow store" if child.suffix == ".db" else "MLflow artifacts"))
        elif child.name == "last_config.yaml":
            continue
        elif child.name == EVALUATIONS:
            add(Entry("evaluations", child, KEPT, "each pool's evaluation, reused by later runs over more pools"))
        elif child.name == MEMO_DIR:
            add(Entry("trials", child, KEPT, "finished classifier trials, replayed by later studies (a few KB each)"))
        else:
            add(Entry("other", child, KEPT, ""))

    for entry in inv.entries:
        entry.size, entry.modified = tree_stats(entry.path)
    return inv


def _scan_store(config: FairSkinConfig, root: Path, inv: Inventory, keys: dict, unknown: dict) -> None:
    """The stored generators and pools (:mod:`fairskin.pipeline.store`): in use when the current configuration's
    stages would link them; unknown (kept) while the fine-tune's key is unknown."""
    from fairskin.pipeline.store import GENERATORS, POOLS, stored_in_use

    used = stored_in_use(config, keys)
    for kind, label in ((GENERATORS, "stored generator"), (POOLS, "stored pool")):
        folder = root / kind
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            partial = _partial_status(child)
            if partial is not None:
                inv.entries.append(Entry("partial", child, *partial))
            elif "finetune" in unknown:
                inv.entries.append(
                    Entry(label, child, UNKNOWN, f"current finetune key unknown ({unknown['finetune']})")
                )
            elif child in used:
                inv.entries.append(Entry(label, child, IN_USE, "a generator of the current configuration"))
            else:
                inv.entries.append(Entry(label, child, UNUSED, "no generator of the current configuration"))


def _scan_tune(config: FairSkinConfig, tune: Path, inv: Inventory, keys: dict, unknown: dict) -> None:
    """The studies and stand-in pools under ``<runs root>/tune``: the current tune stage's study and stand-in pool
    are in use, other pipeline studies unused, studies named by hand kept."""
    from fairskin.config import PRESETS
    from fairskin.tune.inputs import STANDIN_POOLS, standin_key

    add = inv.entries.append
    for child in sorted(tune.iterdir()) if tune.is_dir() else []:
        partial = _partial_status(child)
        if partial is not None:
            add(Entry("partial", child, *partial))
        elif child.name == STANDIN_POOLS and child.is_dir():
            current = standin_key(config)
            for pool in sorted(child.iterdir()):
                partial = _partial_status(pool)
                if partial is not None:
                    add(Entry("partial", pool, *partial))
                elif pool.name == current:
                    add(Entry("stand-in pool", pool, IN_USE, "current stand-in pool key"))
                elif re.fullmatch(_KEY, pool.name):
                    add(Entry("stand-in pool", pool, UNUSED, f"current stand-in pool key is {current}"))
                else:
                    add(Entry("other", pool, KEPT, "not a stand-in pool"))
        else:
            match = _STUDY_DIR.match(child.name)
            if match and match["preset"] in PRESETS:  # named by a pipeline's tune key
                if child.name == inv.study:
                    add(Entry("study", child, IN_USE, "the current tune stage's study"))
                elif match["preset"] != config.preset or "tune" in keys:
                    add(Entry("study", child, UNUSED, f"current study is {inv.study or 'none'}"))
                else:
                    add(Entry("study", child, UNKNOWN, f"current tune key unknown ({unknown.get('tune', '?')})"))
            else:
                add(Entry("study", child, KEPT, "named by hand (python -m fairskin.tune --study)"))


# --------------------------------------------------------------------------- removal


def remove_unused(
    config: FairSkinConfig, dry_run: bool = False, break_lock: bool = False, echo: Callable[[str], None] = print
) -> tuple[Inventory, list[Entry]]:
    """Scan and remove the unused entries, holding the runs-root lock (:class:`fairskin.lock.RunsRootLocked`
    when another process holds it). ``dry_run``: scan and return what would go, remove nothing
    (no lock taken; a held lock is only reported)."""
    from fairskin.lock import LOCK_FILE, describe_holder, holder_alive, read_holder, runs_root_lock

    root = config.runtime.runs_root
    if dry_run:
        holder = read_holder(root / LOCK_FILE)
        if holder is not None and holder_alive(holder) is not False:
            echo(f"note: the runs root is in use ({describe_holder(holder)}); removal would be refused now")
        inv = scan(config)
        return inv, inv.unused
    if not root.is_dir():
        return Inventory(root, {}), []
    with runs_root_lock(root, command="python -m fairskin runs --remove-unused", break_lock=break_lock):
        inv = scan(config)  # under the lock: nothing starts writing meanwhile
        removed = []
        for entry in inv.unused:
            _remove(entry.path)
            removed.append(entry)
    return inv, removed


def _remove(path: Path) -> None:
    """Rename to a temporary sibling (one atomic step: never a half-deleted folder that looks finished),
    then delete it."""
    from fairskin.io import _temp_sibling

    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        doomed = _temp_sibling(path, "old")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink()


# --------------------------------------------------------------------------- output


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f} {unit}"
    return f"{seconds:.0f} s"


_STYLE = {IN_USE: "green", UNUSED: "yellow", KEPT: "cyan", UNKNOWN: "magenta"}


def render(inv: Inventory, marked: Iterable[Entry] = (), title: str | None = None, console=None) -> None:
    """The inventory as a rich table (``marked``: rows flagged as removed / to be removed)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    marked_paths = {e.path for e in marked}
    now = time.time()
    table = Table(title=title or f"runs root {inv.root}")
    for col, justify in (
        ("kind", "left"),
        ("path", "left"),
        ("size", "right"),
        ("age", "right"),
        ("status", "left"),
        ("why", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")
    for e in inv.entries:
        rel = e.path.relative_to(inv.root).as_posix() if e.path.is_relative_to(inv.root) else str(e.path)
        status = f"[{_STYLE[e.status]}]{e.status}[/]" + (" [bold red](removed)[/]" if e.path in marked_paths else "")
        size = human_size(e.size) if e.part_of is None else f"({human_size(e.size)})"
        table.add_row(
            e.kind,
            ("  " if e.part_of else "") + rel,
            size,
            human_age(now - e.modified) if e.modified else "-",
            status,
            e.why,
        )
    console.print(table)
    console.print(
        f"{len([e for e in inv.entries if e.part_of is None])} item(s), {human_size(inv.total())}: "
        f"in use {human_size(inv.total(IN_USE))}, unused {human_size(inv.total(UNUSED))}, "
        f"kept {human_size(inv.total(KEPT))}, unknown {human_size(inv.total(UNKNOWN))}"
    )
    if inv.unknown:
        shown = {k: v for k, v in inv.unknown.items() if not v.startswith("not run by preset")}
        if shown:
            console.print("stage keys not computed: " + "; ".join(f"{k}: {v}" for k, v in shown.items()))


def as_json(inv: Inventory, removed: Iterable[Entry] = ()) -> dict:
    gone = {e.path for e in removed}
    return {
        "runs_root": str(inv.root),
        "keys": inv.keys,
        "study": inv.study,
        "entries": [
            {
                "kind": e.kind,
                "path": str(e.path),
                "status": e.status,
                "why": e.why,
                "size": e.size,
                "modified": e.modified,
                "part_of": str(e.part_of) if e.part_of else None,
                "removed": e.path in gone,
            }
            for e in inv.entries
        ],
        "total": inv.total(),
        "unused": inv.total(UNUSED),
    }
