"""The workspace: named memories as numbered versions on disk, plus caches.

    $INWEIGHTS_HOME/
      memories/<name>/v1/  adapter_config.json  adapter_model.safetensors  manifest.json
      memories/<name>/v2/  ...
      models/              cached base models (see models.py)
      cache/synth/         synthetic examples by content (see synth/__init__.py)
      cache/replay/        general-text samples of each base model (the forgetting guard)
      runs/<name>/<key>/   checkpoints of an unfinished training run (removed when it finishes)

A version is built in a hidden staging folder and renamed into place in one step, so a crash never leaves a
half-written version visible; the manifest is written before the rename. Version numbers are never reused,
even after `remove` (memories/<name>/.last_version keeps the highest one given). Whatever changes a memory
(learn, forget, rollback, rm) holds its lock, memories/<name>/.lock, so two runs on one memory never
interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from inweights.errors import InweightsError
from inweights.paths import home

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
MANIFEST = "manifest.json"
LAST_VERSION = ".last_version"
LOCK = ".lock"


def validate_name(name: str) -> str:
    """Memory names are plain identifiers: no paths, no dots, no surprises in a URL or a file system."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InweightsError(
            f"invalid memory name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit (for example 'acme-wiki')")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'acme' -> ('acme', None) meaning newest; 'acme@3' -> ('acme', 3)."""
    name, _, version = ref.partition("@")
    validate_name(name)
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InweightsError(f"invalid version in {ref!r}: write NAME@N with N a version number >= 1")
    return name, int(version)


@dataclass(frozen=True)
class MemoryVersion:
    name: str
    version: int
    path: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Workspace:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else home()

    @property
    def memories_dir(self) -> Path:
        return self.root / "memories"

    def cache_dir(self, kind: str) -> Path:
        return self.root / "cache" / kind

    def run_dir(self, name: str, key: str) -> Path:
        return self.root / "runs" / validate_name(name) / key

    def memories(self) -> list[str]:
        if not self.memories_dir.is_dir():
            return []
        return sorted(p.name for p in self.memories_dir.iterdir() if _NAME.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[MemoryVersion]:
        directory = self.memories_dir / validate_name(name)
        if not directory.is_dir():
            return []
        found = []
        for child in directory.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and (child / MANIFEST).is_file():
                found.append(MemoryVersion(name, int(match.group(1)), child))
        return sorted(found, key=lambda v: v.version)

    def get(self, ref: str) -> MemoryVersion:
        """Resolve 'name' (newest version) or 'name@N'; a clear error when it does not exist."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.memories()) or "none yet"
            raise InweightsError(f"no memory named {name!r} (memories: {known}); create it with "
                                 f"`inweights learn DOCS --memory {name}`")
        if version is None:
            return versions[-1]
        for v in versions:
            if v.version == version:
                return v
        raise InweightsError(f"memory {name!r} has no version {version} (versions: "
                             f"{', '.join(str(v.version) for v in versions)})")

    def publish(self, name: str, write) -> MemoryVersion:
        """Create the next version of `name`: `write(staging_dir)` fills a staging folder, which is then
        renamed into place atomically. If `write` raises, nothing becomes visible."""
        directory = self.memories_dir / validate_name(name)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".staging-{os.getpid()}-{os.urandom(4).hex()}"
        staging.mkdir()
        try:
            write(staging)
            if not (staging / MANIFEST).is_file():
                raise RuntimeError("a memory version needs a manifest.json")
            while True:
                version = max([v.version for v in self.versions(name)] + [self._last_version(name)]) + 1
                target = directory / f"v{version}"
                try:
                    os.rename(staging, target)  # atomic; fails if another process took this number
                except OSError:
                    if not target.exists():
                        raise
                    continue
                write_atomic(directory / LAST_VERSION, str(version))
                return MemoryVersion(name, version, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _last_version(self, name: str) -> int:
        try:
            return int((self.memories_dir / name / LAST_VERSION).read_text().strip())
        except (OSError, ValueError):
            return 0

    @contextlib.contextmanager
    def lock(self, name: str, action: str):
        """Hold memory `name`'s lock while changing it; raise InweightsError at once if another run holds it.
        The operating system drops the lock when its process ends, so a crashed run never leaves it stuck."""
        directory = self.memories_dir / validate_name(name)
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / LOCK, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise InweightsError(f"memory {name!r} is being changed by {holder}; wait for it to finish (two "
                                     "runs on one memory at once would race for its next version)") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"`{action}` (pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
            fh.flush()
            yield
        finally:
            fh.close()  # closing releases the lock

    def copy_version(self, source: MemoryVersion, manifest_update: dict) -> MemoryVersion:
        """A new version with `source`'s files and its manifest updated by `manifest_update` (rollback)."""
        def write(staging: Path) -> None:
            for item in source.path.iterdir():
                if item.name != MANIFEST and item.is_file():
                    shutil.copy2(item, staging / item.name)
            manifest = source.manifest | manifest_update
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))

        return self.publish(source.name, write)

    def remove(self, name: str, version: int | None = None) -> list[MemoryVersion]:
        """Delete one version, or the whole memory when `version` is None; returns what was deleted. A version
        is first renamed out of sight (one atomic step), so a server never sees half of one."""
        targets = [self.get(f"{name}@{version}")] if version is not None else self.versions(name)
        if not targets:
            self.get(name)  # the usual "no memory named" error
        for v in targets:
            hidden = v.path.with_name(f".removing-{v.path.name}-{os.getpid()}")
            os.rename(v.path, hidden)
            shutil.rmtree(hidden)
        if version is None:
            shutil.rmtree(self.memories_dir / name, ignore_errors=True)
        return targets


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename: a reader sees the old file or the
    new one, never half of it. Safe from several threads and processes at once."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
