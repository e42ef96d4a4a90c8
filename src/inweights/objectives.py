"""Training objectives turn synthetic examples into training rows for the one loop in train.py.

- `sft`: next-token cross-entropy on the completion tokens (hard labels).
- `distill` (context distillation, as in Cartridges): the teacher is the frozen base model *with the source
  chunk in its context*; the student (base + memory, no chunk) is trained toward the teacher's next-token
  distribution over the completion tokens, as a KL over the teacher's top-k. The top-k is computed once per
  example and cached. The teacher's distribution carries what the model would say with the document in front
  of it, including its uncertainty, rather than one hard answer string.

A row is `(ids, labels)` for hard labels or `(ids, labels, (start, top_ids, top_logprobs))` for soft targets:
the KL applies at positions start .. start + len(top_ids) - 1 (each predicting the next token).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from inweights.prompt import render
from inweights.train import IGNORE, tokenize_example

OBJECTIVES = ("sft", "distill")


def sft_rows(tokenizer, examples, max_len: int, end_id: int | None) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example; an example whose prompt alone fills `max_len` has nothing to learn
    from and is left out."""
    rows = [tokenize_example(tokenizer, e.prompt, e.completion, max_len, end_id) for e in examples]
    return [row for row in rows if any(label != IGNORE for label in row[1][1:])]


def distill_rows(base, examples, chunk_texts: dict[str, str], max_len: int, end_id: int | None, cache_dir: Path,
                 top_k: int = 32, batch_size: int = 8, progress: bool = True, context: bool = True) -> list[tuple]:
    """Soft-target rows for every example: the base model reads the example's source chunk, then the example.
    `context=False`: the base model reads the example alone (its own answer, without the document)."""
    tokenizer = base.tokenizer
    rows: list[tuple | None] = [None] * len(examples)
    by_chunk: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_chunk.setdefault(e.chunk_sha256, []).append(i)
    for chunk_sha, indices in tqdm(by_chunk.items(), desc="distill targets", unit="chunk", disable=not progress):
        prefix = chunk_texts[chunk_sha] + "\n\n" if context else ""
        student = [tokenize_example(tokenizer, examples[i].prompt, examples[i].completion, max_len, end_id)
                   for i in indices]
        n_prompt = [len(tokenizer(render(tokenizer, examples[i].prompt))["input_ids"]) for i in indices]  # with BOS
        # The teacher sees prefix + the same tokens without BOS; it scores every completion token.
        continuations = [ids[1:] for ids, _ in student]
        starts = [max(p, 2) - 1 for p in n_prompt]  # student position predicting the first scored token
        key = hashlib.sha256(json.dumps([base.fingerprint, prefix, continuations, top_k]).encode()).hexdigest()
        targets = _cached_topk(base, prefix, continuations, [s - 1 for s in starts], top_k, batch_size,
                               Path(cache_dir) / f"{key}.safetensors")
        for i, (ids, _), start, (top_ids, top_logprobs) in zip(indices, student, starts, targets):
            rows[i] = (ids, [IGNORE] * len(ids), (start, top_ids, top_logprobs))
    return rows


def _cached_topk(base, prefix: str, continuations: Sequence[list[int]], first: Sequence[int], top_k: int,
                 batch_size: int, path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return cached_targets(path, len(continuations), lambda: teacher_topk(
        base.model, base.tokenizer, prefix, continuations, first, top_k, batch_size))


TENSOR_FILE_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)
"""What reading a missing, truncated or otherwise damaged safetensors file raises."""


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; empty when it is missing or damaged (the caller computes them again)."""
    try:
        return dict(load_file(path)) if path.is_file() else {}
    except TENSOR_FILE_ERRORS:
        return {}


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save `tensors` to `path` through a temporary file and a rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, tmp)
    os.replace(tmp, path)


def cached_targets(path: Path, n: int, compute) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` (top-k ids, top-k log-probs) pairs from a safetensors file, or from `compute()` then saved atomically.
    A damaged file is recomputed."""
    saved = read_tensors(path)
    if all(f"ids{i}" in saved and f"logprobs{i}" in saved for i in range(n)):
        return [(saved[f"ids{i}"], saved[f"logprobs{i}"]) for i in range(n)]
    out = compute()
    tensors = {}
    for i, (ids, values) in enumerate(out):
        tensors[f"ids{i}"], tensors[f"logprobs{i}"] = ids.contiguous(), values.contiguous()
    write_tensors(path, tensors)
    return out


@torch.no_grad()
def teacher_topk(model, tokenizer, prefix: str, continuations: Sequence[list[int]], first: Sequence[int],
                 top_k: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Top-k next-token log-probs of `prefix + continuation` at continuation positions first .. len - 2.

    The prefix (the chunk) is run once; its KV cache is shared by every row of a batch.
    """
    device = next(model.parameters()).device
    prefix_ids = tokenizer(prefix)["input_ids"]
    prefix_cache = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True).cache
    p = len(prefix_ids)
    out = []
    for start in range(0, len(continuations), batch_size):
        batch = continuations[start : start + batch_size]
        width = max(len(c) for c in batch)
        ids = torch.tensor([c + [tokenizer.pad_token_id] * (width - len(c)) for c in batch], device=device)
        mask = torch.tensor([[1] * (p + len(c)) + [0] * (width - len(c)) for c in batch], device=device)
        positions = torch.arange(p, p + width, device=device).expand(len(batch), -1)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(batch))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
        for b, c in enumerate(batch):
            lo = first[start + b]
            logprobs = torch.log_softmax(logits[b, lo : len(c) - 1].float(), dim=-1)
            values, indices = logprobs.topk(top_k, dim=-1)
            out.append((indices.cpu(), values.cpu()))
    return out
