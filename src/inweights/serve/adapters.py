"""Many memories on one frozen base: a multi-LoRA linear layer and an LRU cache of loaded memories.

Each targeted `nn.Linear` of the base model is wrapped once by `MultiLoRALinear`, which holds every loaded
memory's LoRA factors stacked in slot tensors (A: [slots, r, in], B: [slots, out, r]; smaller ranks padded
with zeros). A forward pass computes the base projection once for the whole batch and adds each row's own
low-rank update, chosen by a per-row slot index:

    out = base(x) + scale[slot] * ((x @ A[slot].T) @ B[slot].T)

The last slot is always zero: rows for the plain base model use it. When every row uses the same slot (or no
row has an update for this layer) the gather is skipped.

`AdapterCache` decides which memory versions occupy the slots: it loads on first use, evicts the least
recently used unpinned memory that no running request holds before loading a new one (by count and by
bytes), and validates an adapter's config when it loads it, like vLLM's LoRA manager.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn

from inweights.errors import InweightsError
from inweights.store import MemoryVersion

log = logging.getLogger(__name__)


class RowSlots:
    """The slot of each batch row for the forward pass in progress, shared by every wrapped layer."""

    def __init__(self):
        self.rows: torch.Tensor | None = None  # [batch] slot per row
        self.key: tuple[int, ...] = ()  # the same, hashable: layers reuse their gathered factors while it holds
        self.uniform: int | None = None  # the one slot when all rows share it
        self.distinct: frozenset[int] = frozenset()


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, slots: int, row_slots: RowSlots):
        super().__init__()
        self.base = base
        self.row_slots = row_slots
        self.zero_slot = slots  # index of the all-zero slot used by base-model rows
        self.rank = 0
        self.filled: set[int] = set()  # slots that hold a nonzero update for this layer
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.register_buffer("A", torch.zeros(slots + 1, 0, base.in_features, **like), persistent=False)
        self.register_buffer("B", torch.zeros(slots + 1, base.out_features, 0, **like), persistent=False)
        self.register_buffer("scale", torch.zeros(slots + 1, **like), persistent=False)
        # Per-row factors gathered for the current batch composition. Decoding runs many steps with the same
        # rows, so the gather (a copy of every row's A and B) is done once per composition, not once per step.
        self._gathered: tuple | None = None
        self._generation = 0  # bumped by every write/clear, so a reloaded slot is never served stale

    def write(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        r = a.shape[0]
        if r > self.rank:  # grow every slot to the larger rank; the extra rows/columns are zero
            self.A = torch.cat([self.A, self.A.new_zeros(self.A.shape[0], r - self.rank, self.A.shape[2])], dim=1)
            self.B = torch.cat([self.B, self.B.new_zeros(self.B.shape[0], self.B.shape[1], r - self.rank)], dim=2)
            self.rank = r
        self.clear(slot)
        self.A[slot, :r] = a.to(self.A)
        self.B[slot, :, :r] = b.to(self.B)
        self.scale[slot] = scale
        self.filled.add(slot)
        self._generation += 1

    def clear(self, slot: int) -> None:
        if slot in self.filled:
            self.A[slot].zero_()
            self.B[slot].zero_()
            self.scale[slot] = 0.0
            self.filled.discard(slot)
            self._generation += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        slots = self.row_slots
        if slots.rows is None or not (slots.distinct & self.filled):
            return out
        if slots.uniform is not None:
            s = slots.uniform
            return out + self.scale[s] * ((x @ self.A[s].T) @ self.B[s].T)
        key = (slots.key, self._generation)
        if self._gathered is None or self._gathered[0] != key:
            rows = slots.rows
            a = self.A[rows].transpose(1, 2).contiguous()  # [batch, in, r]
            b = (self.B[rows] * self.scale[rows].view(-1, 1, 1)).transpose(1, 2).contiguous()  # [batch, r, out]
            self._gathered = (key, a, b)
        _, a, b = self._gathered
        return out + torch.bmm(torch.bmm(x, a), b)


@dataclass
class _Loaded:
    version: MemoryVersion
    slot: int
    nbytes: int
    modules: list[str]
    users: int = 0  # running requests that hold this slot


class CacheFull(Exception):
    """Every slot is held by a running request: the new request must wait for one to finish."""


class AdapterCache:
    """Which memory versions occupy the LoRA slots of one base model. Used by one thread (the batcher's)."""

    def __init__(self, model: nn.Module, base_fingerprint: str, max_memories: int, max_bytes: int,
                 pinned: tuple[str, ...] = ()):
        self.model = model
        self.base_fingerprint = base_fingerprint
        self.max_memories = max_memories
        self.max_bytes = max_bytes
        self.pinned = set(pinned)
        self.row_slots = RowSlots()
        self.layers: dict[str, MultiLoRALinear] = {}
        self.loaded: OrderedDict[str, _Loaded] = OrderedDict()  # ref -> entry, least recently used first
        self.loads = self.evictions = 0

    @property
    def zero_slot(self) -> int:
        return self.max_memories

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.loaded.values())

    def acquire(self, version: MemoryVersion) -> int:
        """The slot holding `version`, loading it first if needed; the caller must `release` it when done."""
        entry = self.loaded.get(version.ref)
        if entry is None:
            entry = self._load(version)
        self.loaded.move_to_end(version.ref)
        entry.users += 1
        return entry.slot

    def release(self, ref: str) -> None:
        entry = self.loaded.get(ref)
        if entry is not None:
            entry.users -= 1

    def is_pinned(self, ref: str) -> bool:
        """A pin holds the newest loaded version of a pinned name; older versions of it may go."""
        entry = self.loaded[ref]
        if entry.version.name not in self.pinned:
            return False
        newest = max(e.version.version for e in self.loaded.values() if e.version.name == entry.version.name)
        return entry.version.version == newest

    @contextmanager
    def rows(self, slots: list[int]):
        """Route each batch row of the forward passes inside this block through its slot."""
        state = self.row_slots
        device = next(self.model.parameters()).device
        state.rows = torch.tensor(slots, dtype=torch.long, device=device)
        state.key = tuple(slots)
        state.distinct = frozenset(slots)
        state.uniform = slots[0] if len(state.distinct) == 1 else None
        try:
            yield
        finally:
            state.rows, state.key, state.uniform, state.distinct = None, (), None, frozenset()

    def close(self) -> None:
        """Put the base model's own linear layers back."""
        for name, layer in self.layers.items():
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer.base)
        self.layers.clear()
        self.loaded.clear()

    # --- loading and eviction -------------------------------------------------------------------------------

    def _load(self, version: MemoryVersion) -> _Loaded:
        factors, nbytes = read_adapter(version, self.base_fingerprint)
        if nbytes > self.max_bytes:
            raise InweightsError(f"memory {version.ref} needs {nbytes / 2**20:.1f} MiB but the server's memory budget "
                                 f"is {self.max_bytes / 2**20:.1f} MiB; restart it with a larger --max-memory-mb")
        self._make_room(nbytes)
        used = {e.slot for e in self.loaded.values()}
        slot = min(set(range(self.max_memories)) - used)
        for layer in self.layers.values():
            layer.clear(slot)
        for module_name, (a, b, scale) in factors.items():
            self._layer(module_name, version).write(slot, a, b, scale)
        entry = _Loaded(version, slot, nbytes, sorted(factors))
        self.loaded[version.ref] = entry
        self.loads += 1
        log.info("loaded memory %s into slot %d (%.1f MiB)", version.ref, slot, nbytes / 2**20)
        return entry

    def _make_room(self, nbytes: int) -> None:
        while len(self.loaded) >= self.max_memories or self.nbytes + nbytes > self.max_bytes:
            victim = next((ref for ref, e in self.loaded.items() if e.users == 0 and not self.is_pinned(ref)), None)
            if victim is None:
                if all(self.is_pinned(ref) for ref in self.loaded):
                    raise InweightsError(
                        f"the pinned memories fill the server's memory cache ({len(self.loaded)} of "
                        f"{self.max_memories} slots, {self.nbytes / 2**20:.1f} MiB); pin fewer or raise "
                        "--max-memories / --max-memory-mb")
                raise CacheFull()  # the rest are in use: wait for a request to finish
            self._evict(victim)

    def _evict(self, ref: str) -> None:
        entry = self.loaded.pop(ref)
        for name in entry.modules:
            self.layers[name].clear(entry.slot)
        self.evictions += 1
        log.info("evicted memory %s from slot %d", ref, entry.slot)

    def _layer(self, module_name: str, version: MemoryVersion) -> MultiLoRALinear:
        layer = self.layers.get(module_name)
        if layer is not None:
            return layer
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            raise InweightsError(f"memory {version.ref} has weights for {module_name!r}, which the base model does "
                                 "not have; it was trained on another base") from None
        if not isinstance(module, nn.Linear):
            raise InweightsError(f"memory {version.ref} adapts {module_name!r}, a {type(module).__name__}; the "
                                 "server batches LoRA on linear layers only")
        layer = MultiLoRALinear(module, self.max_memories, self.row_slots)
        parent, _, child = module_name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
        self.layers[module_name] = layer
        return layer


def read_adapter(version: MemoryVersion, base_fingerprint: str | None = None):
    """Validate a memory's PEFT LoRA adapter and return {module: (A, B, scale)} and its size in bytes."""
    manifest = version.manifest
    if manifest.get("method") != "lora":
        raise InweightsError(f"memory {version.ref} uses method {manifest.get('method')!r}; the server serves LoRA "
                             "memories only")
    if base_fingerprint and manifest["base"]["fingerprint"] != base_fingerprint:
        raise InweightsError(f"memory {version.ref} was trained on base {manifest['base']['name']!r} "
                             f"({manifest['base']['fingerprint']}), not on the base this server runs")
    config = json.loads((version.path / "adapter_config.json").read_text())
    problems = adapter_problems(config)
    if problems:
        raise InweightsError(f"memory {version.ref} cannot be served: " + "; ".join(problems))
    weights = load_file(str(version.path / "adapter_model.safetensors"))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module_name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = weights.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise InweightsError(f"memory {version.ref} is damaged: {key} has no matching lora_B")
        r = a.shape[0]
        alpha = config["lora_alpha"]
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        factors[module_name] = (a, b, scale)
    unknown = [k for k in weights if ".lora_A." not in k and ".lora_B." not in k]
    if unknown or not factors:
        raise InweightsError(f"memory {version.ref} holds weights the server cannot apply "
                             f"({', '.join(unknown[:3]) or 'no LoRA factors'})")
    return factors, sum(t.numel() * t.element_size() for t in weights.values())


def adapter_problems(config: dict) -> list[str]:
    """What in a PEFT adapter_config.json a plain multi-LoRA server (ours or vLLM) cannot handle."""
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if config.get("use_dora"):
        problems.append("it uses DoRA (use_dora: true)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config.get('bias')!r}; only 'none' is supported")
    if config.get("modules_to_save"):
        problems.append(f"it trains whole modules ({config['modules_to_save']}: modules_to_save)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("it sets per-layer ranks or alphas (rank_pattern / alpha_pattern)")
    return problems
