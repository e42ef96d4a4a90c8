"""API keys: who may call the server and which memories each key may use.

The keys file ($INWEIGHTS_HOME/keys.json unless the server is given another) stores only sha256 hashes:

    {"keys": [{"id": "3f9a1c2b7d4e", "sha256": "...", "tenant": "acme-co", "memories": ["acme", "acme-hr"],
               "created": "2025-01-01T00:00:00+00:00"}]}

`memories` is a list of memory names (every version of each) or "*" for all. `add_key` returns the plaintext
key once; it cannot be recovered later. The server rereads the file when it changes, so adding or revoking a
key needs no restart. With no keys file the server runs open, and only on a loopback address.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from inweights.errors import InweightsError
from inweights.paths import home
from inweights.store import validate_name

KEY_PREFIX = "iw-"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def default_keys_file() -> Path:
    return home() / "keys.json"


@dataclass(frozen=True)
class Tenant:
    """The caller behind one API key."""

    name: str
    key_id: str
    memories: frozenset[str] | None  # None: every memory

    def may_use(self, memory_name: str) -> bool:
        return self.memories is None or memory_name in self.memories


OPEN = Tenant("open", "open", None)
"""The caller of a server without keys: any memory (the server then listens on loopback only)."""


def add_key(tenant: str, memories: list[str] | str, path: Path | None = None) -> str:
    """Create a key for `tenant` that may use `memories` (names, or "*"); returns the plaintext key, shown once."""
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise InweightsError(f"invalid tenant name {tenant!r}: use 1-64 letters, digits, '-', '_', '.' or '@'")
    if memories == "*" or memories == ["*"]:
        allowed: list[str] | str = "*"
    else:
        if isinstance(memories, str) or not memories:
            raise InweightsError("give the memories the key may use: a list of names, or '*' for all")
        allowed = sorted({validate_name(m) for m in memories})
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = _hash(key)
    path = Path(path or default_keys_file())
    entries = _read(path)
    entries.append({"id": digest[:12], "sha256": digest, "tenant": tenant, "memories": allowed,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    _write(path, entries)
    return key


def revoke_key(key_or_id: str, path: Path | None = None) -> int:
    """Remove a key, given the plaintext key or its id (from `list_keys`); returns how many were removed."""
    path = Path(path or default_keys_file())
    entries = _read(path)
    digest = _hash(key_or_id) if key_or_id.startswith(KEY_PREFIX) else None
    kept = [e for e in entries if e["id"] != key_or_id and e["sha256"] != digest]
    if len(kept) == len(entries):
        raise InweightsError(f"no key {key_or_id!r} in {path}; `inweights keys list` shows the ids")
    _write(path, kept)
    return len(entries) - len(kept)


def list_keys(path: Path | None = None) -> list[dict]:
    """The keys' ids, tenants, memories and creation times (never the hashes)."""
    return [{k: e[k] for k in ("id", "tenant", "memories", "created")}
            for e in _read(Path(path or default_keys_file()))]


class KeyStore:
    """Looks up the tenant of a presented key; rereads the file when it changes on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._by_hash: dict[str, Tenant] = {}
        self._reload()

    def authenticate(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        self._reload()
        return self._by_hash.get(_hash(key))

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # writes replace the file: a new inode
        except FileNotFoundError:
            stamp = ()  # deleted: nobody gets in until it is back
        with self._lock:
            if stamp == self._stamp:
                return
            table = {}
            for e in _read(self.path) if stamp else []:
                allowed = None if e["memories"] == "*" else frozenset(e["memories"])
                table[e["sha256"]] = Tenant(e["tenant"], e["id"], allowed)
            self._by_hash, self._stamp = table, stamp


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["keys"]
        for e in entries:
            assert {"id", "sha256", "tenant", "memories"} <= set(e)
        return entries
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise InweightsError(f"the keys file {path} is not valid ({exc}); fix it or remove it and add keys again "
                             "with `inweights keys add`") from None


def _write(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # hashes only, but still private
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": entries}, fh, indent=2)
    os.replace(staging, path)
