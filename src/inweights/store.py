"""The workspace: named memories as numbered versions on disk, plus caches.

    $INWEIGHTS_HOME/
      memories/<name>/v1/  adapter_config.json  adapter_model.safetensors  manifest.json
      memories/<name>/v2/  ...
      models/              cached base models (see models.py)
      cache/synth/         synthetic examples by content (see synth/__init__.py)
      cache/replay/        general-text samples of each base model (the forgetting guard)
      runs/<name>/<key>/   checkpoints of an unfinished training run (removed when it finishes)

A version is built in a hidden staging folder and renamed into place in one step, so a crash never leaves a
half-written version visible; the manifest is written before the rename.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from inweights.errors import InweightsError
from inweights.paths import home

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
MANIFEST = "manifest.json"


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
                version = max([v.version for v in self.versions(name)] + [0]) + 1
                target = directory / f"v{version}"
                try:
                    os.rename(staging, target)  # atomic; fails if another process took this number
                    return MemoryVersion(name, version, target)
                except OSError:
                    if not target.exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
