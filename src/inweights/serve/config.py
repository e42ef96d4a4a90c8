"""Settings of the server: one dataclass, the single source of defaults (the CLI's `serve` flags mirror it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass
class ServeConfig:
    """How the server listens, how much it keeps loaded, and what each caller may ask for."""

    host: str = "127.0.0.1"
    """Address to listen on. Without a keys file the server only accepts a loopback address."""
    port: int = 8000
    """TCP port."""
    keys_file: str | None = None
    """API keys file (JSON, see `inweights keys`); default $INWEIGHTS_HOME/keys.json when it exists, else the
    server runs open, on loopback only."""
    max_memories: int = 8
    """Memories held loaded at once (LoRA slots); the least recently used unpinned one is evicted first."""
    max_memory_mb: float = 1024.0
    """Budget in MiB for the loaded memories' weights; evicts before loading one that would not fit."""
    pin: tuple[str, ...] = ()
    """Memory names loaded at start and never evicted (their newest version)."""
    max_batch: int = 16
    """Requests decoded together in one forward pass."""
    max_queue: int = 64
    """Requests waiting for a place in the batch; beyond this the server answers 429 at once."""
    max_prompt_tokens: int = 4096
    """Longest prompt accepted, in tokens."""
    max_tokens: int = 512
    """Largest `max_tokens` a request may ask for."""
    default_max_tokens: int = 64
    """`max_tokens` of a request that does not set it (capped at `max_tokens`)."""
    max_body_kb: int = 256
    """Largest request body in KiB."""
    max_concurrent_per_key: int = 8
    """Requests one API key may have in progress at once; more get 429."""

    def __post_init__(self):
        self.pin = tuple(self.pin)
        for name in ("port", "max_memories", "max_batch", "max_queue", "max_prompt_tokens", "max_tokens",
                     "default_max_tokens", "max_body_kb", "max_concurrent_per_key"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_memory_mb <= 0:
            raise ValueError("max_memory_mb must be positive")

    @property
    def max_memory_bytes(self) -> int:
        return int(self.max_memory_mb * (1 << 20))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
