"""Content fingerprints of a stage's external inputs (files and folders named in the config).

A stage key hashes what a stage reads: its config slice, its input stages' keys and, through
this module, the **contents** of the files and folders its config names (the Fitzpatrick17k
CSV, the image folder, local model folders, the Inception weights file). Never their mtimes:
a copied folder has the same fingerprint. Relative paths are resolved against the working
directory (as the stages read them) before hashing.

Hashing gigabytes on every run would be slow, so each result is cached in
``<runs root>/cache/fingerprints.json`` under the resolved path and a *stat signature* (file
sizes and mtimes, or for a folder a hash of its files' names, sizes and mtimes). The
signature is only the cache's key: a changed mtime re-hashes, it never changes the value.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from fairskin.io import atomic_write_json

CACHE_FILE = Path("cache") / "fingerprints.json"
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".bin", ".model", ".pth", ".pt", ".ckpt")


def resolve_path(value: str | os.PathLike) -> Path:
    """``~`` expanded, relative paths made absolute against the working directory, links resolved."""
    return Path(os.path.expanduser(str(value))).resolve()


def _file_sha(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


class FingerprintCache:
    """``path -> (stat signature, fingerprint)``, persisted as a small JSON (one entry per file or folder)."""

    def __init__(self, file: Path | None = None):
        self.file = Path(file) if file is not None else None
        self.entries: dict[str, dict[str, str]] = {}
        self.dirty = False
        if self.file is not None and self.file.is_file():
            try:
                self.entries = dict(json.loads(self.file.read_text()).get("entries", {}))
            except (OSError, ValueError, AttributeError):
                self.entries = {}  # a damaged cache only costs a re-hash

    @classmethod
    def for_runs_root(cls, runs_root: Path) -> FingerprintCache:
        return cls(Path(runs_root) / CACHE_FILE)

    def lookup(self, key: str, signature: str, compute: Callable[[], str]) -> str:
        hit = self.entries.get(key)
        if hit is not None and hit.get("signature") == signature:
            return hit["fingerprint"]
        value = compute()
        self.entries[key] = {"signature": signature, "fingerprint": value}
        self.dirty = True
        return value

    def save(self) -> None:
        if self.dirty and self.file is not None:
            atomic_write_json(self.file, {"entries": self.entries})
            self.dirty = False


def _folder_files(folder: Path, suffixes: Iterable[str] | None, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    wanted = tuple(suffixes) if suffixes is not None else None
    files = []
    for path in found:
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue  # hidden files (.DS_Store, editors' swap files) are not inputs
        if wanted is not None and path.suffix.lower() not in wanted:
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def content_fingerprint(
    path: str | os.PathLike,
    cache: FingerprintCache | None = None,
    *,
    suffixes: Iterable[str] | None = None,
    recursive: bool = True,
) -> str:
    """16 hex digits over the content of a file, or of a folder's files (relative path, size and
    bytes of each; ``suffixes`` limits which, hidden files are skipped). Missing: ``"missing"``."""
    path = resolve_path(path)
    cache = cache or FingerprintCache()
    if path.is_file():
        st = path.stat()
        signature = f"file {st.st_size} {st.st_mtime_ns}"
        return cache.lookup(f"file:{path}", signature, lambda: _file_sha(path)[:16])
    if path.is_dir():
        files = _folder_files(path, suffixes, recursive)
        stats = hashlib.sha256()
        for f in files:
            st = f.stat()
            stats.update(f"{f.relative_to(path).as_posix()}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1e".encode())
        options = f"{sorted(suffixes) if suffixes is not None else '*'} {recursive}"

        def compute() -> str:
            hasher = hashlib.sha256()
            for f in files:
                hasher.update(f"{f.relative_to(path).as_posix()}\x1f{f.stat().st_size}\x1f".encode())
                hasher.update(bytes.fromhex(_file_sha(f)))
                hasher.update(b"\x1e")
            return hasher.hexdigest()[:16]

        return cache.lookup(f"dir:{path}:{options}", stats.hexdigest(), compute)
    return "missing"


def local_path(value: object) -> Path | None:
    """The resolved path when ``value`` names an existing local file or folder (not ``tiny``, not a
    hub id such as ``CompVis/stable-diffusion-v1-4`` that is not a local folder), else None."""
    if value is None or value == "" or value == "tiny":
        return None
    path = resolve_path(str(value))
    return path if path.exists() else None
