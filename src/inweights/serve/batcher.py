"""Continuous batching: requests for any mix of memories decode together, one forward pass per step.

A worker thread owns the model. Each iteration it admits waiting requests (up to `max_batch` rows), prefills
the newcomers in one pass and samples their first token, merges them into the running batch, then runs one
decode step for every running row. Rows leave as soon as they finish, so a short request never waits for a
long one; a newcomer waits at most one decode step (plus the prefill of the newcomers before it).

The running batch has one KV cache (a transformers `DynamicCache`), rows left-padded to a common length and
the padding hidden by the attention mask; each row carries its own position ids. When newcomers join, their
freshly prefilled cache is left-padded and concatenated to the running one; when rows leave, theirs are
dropped and padding columns that no remaining row needs are trimmed. The trade-off: a short row decoding
beside a long one attends over padding (wasted work, never wrong), and a long prompt's prefill stalls the
decode of the others for its duration (no chunked prefill). Sliding-window layers keep only their window:
their cache is aligned on the right, where every row's newest tokens are.

The bounded queue makes overload explicit: `submit` raises `QueueFull` at once instead of letting a
request time out.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from inweights.errors import InweightsError
from inweights.generate import _pick
from inweights.serve.adapters import AdapterCache, CacheFull
from inweights.store import MemoryVersion

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at capacity: answer 429."""


@dataclass(eq=False)
class Generation:
    """One generation. `on_event(kind, data)` is called from the worker thread and must not block:
    ("text", new_text) any number of times, then exactly one of ("done", {"finish_reason", "prompt_tokens",
    "completion_tokens"}) (finish_reason "stop", "length" or "cancelled") or ("error", (http_status, message))."""

    prompt_ids: list[int]
    max_tokens: int
    version: MemoryVersion | None  # None: the plain base model
    on_event: Callable[[str, object], None]
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # state kept by the batcher
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # text sent so far
    finish_reason: str | None = None
    cancelled: bool = False
    slot: int = -1  # set once admitted
    position: int = 0
    generator: torch.Generator | None = None

    @property
    def ref(self) -> str:
        return self.version.ref if self.version else "base"


class Batcher:
    def __init__(self, model, tokenizer, adapters: AdapterCache, max_batch: int = 16, max_queue: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.device = next(model.parameters()).device
        self._waiting: deque[Generation] = deque()
        self._wake = threading.Condition()
        self._batch: _Batch | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0  # decode steps run, for tests and stats

    # --- the public side: any thread ------------------------------------------------------------------------

    def submit(self, request: Generation) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is at capacity ({self.max_queue} requests waiting); retry shortly")
            self._waiting.append(request)
            self._wake.notify()

    def cancel(self, request: Generation) -> None:
        """Stop a request (its client went away); it leaves the batch at the next step."""
        request.cancelled = True
        with self._wake:
            self._wake.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        batch = self._batch
        return len(batch.rows) if batch else 0

    def start(self) -> "Batcher":
        if self._thread is not None:
            return self
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="inweights-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread:
            self._thread.join()
            self._thread = None

    # --- the worker thread ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self.running:
                    self._wake.wait()
                if self._stopping:
                    break
            newcomers = self._admit()
            try:
                with torch.inference_mode():
                    self._step(newcomers)
            except Exception as exc:  # a bug or an out-of-memory: fail these requests, keep serving
                log.exception("batch step failed")
                rows = (self._batch.rows if self._batch else []) + newcomers
                self._batch = None
                for request in rows:
                    if request.finish_reason is None:
                        self._fail(request, 500, f"generation failed: {type(exc).__name__}: {exc}")
        for request in (self._batch.rows if self._batch else []) + list(self._waiting):
            if request.finish_reason is None:
                self._fail(request, 503, "the server is shutting down")
        self._batch = None

    def _admit(self) -> list[Generation]:
        """Waiting requests that fit in the batch and whose memory has (or can get) a slot, in arrival order.

        When a memory finds every slot busy, later memory requests wait behind it (base-model ones still go):
        otherwise a steady stream for the loaded memories could keep their slots busy forever."""
        room = self.max_batch - self.running
        with self._wake:
            candidates = list(self._waiting)
            self._waiting.clear()
        admitted, blocked = [], []
        slots_busy = False
        for request in candidates:
            if request.cancelled:
                self._finish(request, "cancelled")
                continue
            if len(admitted) >= room or (slots_busy and request.version):
                blocked.append(request)
                continue
            try:
                request.slot = self.adapters.acquire(request.version) if request.version else self.adapters.zero_slot
            except CacheFull:
                blocked.append(request)  # it gets a slot when the running requests of some memory finish
                slots_busy = True
                continue
            except InweightsError as exc:  # the memory cannot be served (its config, its size, its base)
                self._fail(request, 400, str(exc))
                continue
            except Exception as exc:  # e.g. its files vanished since the request resolved it
                log.exception("loading %s failed", request.ref)
                self._fail(request, 500, f"loading memory {request.ref} failed: {type(exc).__name__}: {exc}")
                continue
            admitted.append(request)
        with self._wake:
            self._waiting.extendleft(reversed(blocked))
        return admitted

    def _step(self, newcomers: list[Generation]) -> None:
        if newcomers:
            fresh = self._prefill(newcomers)
            fresh.keep([i for i, r in enumerate(newcomers) if r.finish_reason is None])
            self._batch = _Batch.merge(self._batch, fresh)
        batch = self._batch
        if batch is None:
            return
        for request in batch.rows:
            if request.cancelled and request.finish_reason is None:
                self._finish(request, "cancelled")
        batch.keep([i for i, r in enumerate(batch.rows) if r.finish_reason is None])
        if batch.rows:
            self._decode(batch)
            batch.keep([i for i, r in enumerate(batch.rows) if r.finish_reason is None])
        if not batch.rows:
            self._batch = None

    def _prefill(self, requests: list[Generation]) -> "_Batch":
        width = max(len(r.prompt_ids) for r in requests)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        with self.adapters.rows([r.slot for r in requests]):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                             logits_to_keep=1)
        _check_cache(out.cache)
        for request in requests:
            request.position = len(request.prompt_ids)
            if request.temperature > 0:
                request.generator = torch.Generator().manual_seed(
                    request.seed if request.seed is not None else int(torch.randint(0, 2**31, (1,))))
        self._advance(requests, out.logits[:, -1, :])
        return _Batch(list(requests), out.cache, mask)

    def _decode(self, batch: "_Batch") -> None:
        rows = batch.rows
        ids = torch.tensor([[r.tokens[-1]] for r in rows], device=self.device)
        positions = torch.tensor([[r.position] for r in rows], device=self.device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], dim=1)
        with self.adapters.rows([r.slot for r in rows]):
            out = self.model(input_ids=ids, attention_mask=batch.mask, position_ids=positions, cache=batch.cache,
                             use_cache=True)
        batch.cache = out.cache
        for request in rows:
            request.position += 1
        self.steps += 1
        self._advance(rows, out.logits[:, -1, :])

    def _advance(self, requests: list[Generation], logits: torch.Tensor) -> None:
        """Pick each row's next token, stream the new text, and finish rows that stop."""
        logits = logits.float().cpu()
        greedy = logits.argmax(-1).tolist()
        for i, request in enumerate(requests):
            if request.temperature > 0:
                token = int(_pick(logits[i : i + 1], request.temperature, 50, request.top_p, request.generator)[0])
            else:
                token = greedy[i]
            if token in request.stop_ids:
                self._flush(request, final=True)
                self._finish(request, "stop")
                continue
            request.tokens.append(token)
            if self._flush(request, final=False):
                self._finish(request, "stop")
            elif len(request.tokens) >= request.max_tokens:
                self._flush(request, final=True)
                self._finish(request, "length")

    def _flush(self, request: Generation, final: bool) -> bool:
        """Send the text that is now certain; True when a stop string ended the request."""
        text = self.tokenizer.decode(request.tokens, skip_special_tokens=True)
        hit = min((i for i in (text.find(s) for s in request.stop_strings) if i >= 0), default=-1)
        if hit >= 0:
            self._send(request, text[:hit])
            return True
        end = len(text)
        if not final:
            end -= _held_back(text, request.stop_strings)
            if text[:end].endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                end -= 1
        self._send(request, text[:end])
        return False

    def _send(self, request: Generation, text: str) -> None:
        if len(text) > len(request.text) and text.startswith(request.text):
            request.on_event("text", text[len(request.text):])
            request.text = text

    def _finish(self, request: Generation, reason: str) -> None:
        self._release(request)
        request.finish_reason = reason
        request.on_event("done", {"finish_reason": reason, "prompt_tokens": len(request.prompt_ids),
                                  "completion_tokens": len(request.tokens)})

    def _fail(self, request: Generation, status: int, message: str) -> None:
        self._release(request)
        request.finish_reason = "error"
        request.on_event("error", (status, message))

    def _release(self, request: Generation) -> None:
        if request.version and request.slot >= 0 and request.finish_reason is None:
            self.adapters.release(request.version.ref)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def _check_cache(cache) -> None:
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise InweightsError(f"the server's batching supports full and sliding-window attention caches; this model "
                                 f"uses {type(layer).__name__}")


class _Batch:
    """Rows decoding together: one KV cache, rows left-padded to a common length (`mask` marks real tokens)."""

    def __init__(self, rows: list[Generation], cache: DynamicCache, mask: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.mask = mask

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, then drop the padding columns no remaining row needs."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not indices:
            return
        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        unused = int((self.mask.sum(0) > 0).int().argmax())  # leading columns that are padding in every row
        if unused:
            length = self.mask.shape[1] - unused
            for layer in self.cache.layers:
                kept = min(length, layer.sliding_window - 1) if layer.is_sliding else length
                layer.keys, layer.values = layer.keys[:, :, -kept:], layer.values[:, :, -kept:]
                if layer.is_sliding:
                    layer.cumulative_length = length
            self.mask = self.mask[:, unused:]

    @staticmethod
    def merge(running: "_Batch | None", fresh: "_Batch") -> "_Batch | None":
        """One batch of both: every row left-padded to the longer length, caches stacked along the batch."""
        if running is None or not running.rows:
            return fresh if fresh.rows else None
        if not fresh.rows:
            return running
        length = max(running.mask.shape[1], fresh.mask.shape[1])
        for a, b in zip(running.cache.layers, fresh.cache.layers):
            target = min(length, a.sliding_window - 1) if a.is_sliding else length
            a.keys = torch.cat([_pad_left(a.keys, target, -2), _pad_left(b.keys, target, -2)])
            a.values = torch.cat([_pad_left(a.values, target, -2), _pad_left(b.values, target, -2)])
            if a.is_sliding:
                a.cumulative_length = length
        mask = torch.cat([_pad_left(running.mask, length, -1), _pad_left(fresh.mask, length, -1)])
        return _Batch(running.rows + fresh.rows, running.cache, mask)


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
