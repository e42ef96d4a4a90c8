"""The forgetting guard: a KL penalty to the frozen base model on general text that the base model wrote itself.

General text is sampled once from the base model (no bundled corpus, no network, never the evaluation texts),
and the base model's own next-token distribution on it (top-k log-probabilities) is computed once; both are
cached per base model. During training, a share of every batch is such text, and its loss is the KL
divergence from the base distribution to the student's over those top-k tokens and one more outcome, the rest of
the vocabulary (`TrainConfig.kl_tail`). Until that bucket was added the KL was taken over the top k
renormalised, which is lowest when the student moves the rest's probability onto the top k: it rewarded the
sharpening it was meant to prevent: WikiText-2 perplexity rose 35.7% instead of 10.0% (the SQuAD tuning
passages, docs/benchmarks.md). A first version trained
with plain next-token loss on the samples instead: the memory simply memorised the 48 samples (their
perplexity fell from 12 to 4.5) while general-text perplexity rose tenfold. Soft targets cannot be
memorised past the base distribution, and they penalise the over-confident, sharpened predictions that
fact training produces everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from inweights.generate import generate
from inweights.objectives import TENSOR_FILE_ERRORS, read_tensors, write_tensors
from inweights.store import write_atomic
from inweights.train import lm_parts

SHIPPED = Path(__file__).parent / "data" / "guard"
"""Guard texts shipped with the package, named like the cache's files (see `replay_texts`)."""

SAMPLE_TOP_K = 50
"""The guard's texts are sampled from the base model's top this-many tokens (the shipped ones were); 0: from all."""

_SEEDS = [
    "The history of", "In mathematics,", "Scientists have found that", "The recipe calls for", "In 1850,",
    "The city is known for", "A good way to learn", "The river flows", "According to the report,",
    "The weather in", "Many animals", "The first step is to", "In the novel,", "The museum",
    "Football is", "The human body", "When the war ended,", "The company announced", "Music has",
    "The village", "Water is", "The election", "In computer science,", "The king", "Farmers", "The film",
    "Children often", "The mountain", "Electricity", "The painting", "Trade between", "The doctor said",
]


def cached_texts(base, n: int, cache_dir: Path, seed: int = 0, max_new_tokens: int = 64,
                 top_k: int = SAMPLE_TOP_K) -> list[str] | None:
    """`replay_texts`' samples when the cache or the package already holds them for this base, else None."""
    name = texts_file_name(base.fingerprint, n, seed, max_new_tokens, top_k)
    for found in (Path(cache_dir) / name, SHIPPED / name):
        if found.is_file():
            try:
                data = json.loads(found.read_text())
                if data["base"] == base.fingerprint:
                    return data["texts"]
            except (ValueError, KeyError):
                pass
    return None


def texts_file_name(fingerprint: str, n: int, seed: int, max_new_tokens: int, top_k: int = SAMPLE_TOP_K) -> str:
    """The file (in the cache, or shipped) that holds `replay_texts`' samples for these settings."""
    key = [fingerprint, n, seed, max_new_tokens, _SEEDS] + ([] if top_k == SAMPLE_TOP_K else [top_k])
    return hashlib.sha256(json.dumps(key).encode()).hexdigest() + ".json"


TEXT_SECONDS = 1.3
"""Seconds to write one general-text sample with the embedded model on 2 CPU cores (the plan's estimate)."""
TARGET_SECONDS = 1.6
"""Seconds to compute one row's targets with the embedded model on 2 shared CPU cores (1.6 to 1.7 measured by
benchmarks/guard_targets.py and the handbook demo's first run; the plan's estimate)."""


def replay_texts(base, n: int, cache_dir: Path, seed: int = 0, max_new_tokens: int = 64,
                 batch_size: int = 32, progress: bool = True, top_k: int = SAMPLE_TOP_K) -> list[str]:
    """`n` general-text samples of the base model (cached by base fingerprint, n, seed, length and top_k). Writing
    them takes about 1.3 s a sample on 2 CPU cores with the embedded model, once per base and n; the package
    ships the default 1,024 of the embedded model (`data/guard/`), written by this function, so that a fresh
    machine skips those 22 minutes whenever its converted model has the same fingerprint."""
    if n <= 0:
        return []
    found = cached_texts(base, n, cache_dir, seed, max_new_tokens, top_k)
    if found is not None:
        return found
    path = Path(cache_dir) / texts_file_name(base.fingerprint, n, seed, max_new_tokens, top_k)
    prompts = [_SEEDS[i % len(_SEEDS)] for i in range(n)]
    outputs = generate(base.model, base.tokenizer, prompts, max_new_tokens=max_new_tokens,
                       stop_token_ids=[base.tokenizer.eos_token_id], batch_size=batch_size, temperature=1.0,
                       top_k=top_k, top_p=1.0, seed=seed,
                       progress="guard text" if progress else None)
    texts = [f"{p} {o}".strip() for p, o in zip(prompts, outputs) if o.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"base": base.fingerprint, "texts": texts}))
    return texts


def replay_rows(tokenizer, texts: list[str], max_len: int = 64) -> list[list[int]]:
    """The guard's rows: each text's token ids, BOS first, at most max_len (texts of 8 tokens or fewer are dropped)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [r[:max_len] for r in rows if len(r) > 8]


@torch.no_grad()
def replay_targets(base, texts: list[str], cache_dir: Path, max_len: int = 64, top_k: int = 32,
                   batch_size: int = 8, progress: bool = False, needed: Iterable[int] | None = None
                   ) -> list[tuple[list[int], torch.Tensor | None, torch.Tensor | None]]:
    """For each of `replay_rows(texts)`: its token ids and the base model's top-k next-token ids and
    log-probabilities at every position but the last; with `needed` (row indices), only those rows get targets
    and the others carry None (a training run draws a few hundred of the 1,024 rows: `train.replay_drawn`).

    Targets are cached by base fingerprint and the texts, row by row: a later run computes only the rows it
    needs that no earlier run did. They cost about TARGET_SECONDS per row on 2 CPU cores with the embedded model,
    most of it the backbone's forward (a progress bar with `progress`)."""
    if not texts:
        return []
    path = _targets_path(base, texts, cache_dir, max_len, top_k)
    rows = replay_rows(base.tokenizer, texts, max_len)
    wanted = sorted(set(range(len(rows)) if needed is None else needed))
    saved = read_tensors(path)
    todo = [i for i in wanted if f"ids{i}" not in saved or f"logprobs{i}" not in saved]
    if todo:
        backbone, logits_at = lm_parts(base.model)
        device = next(base.model.parameters()).device
        pad = base.tokenizer.pad_token_id
        for start in tqdm(range(0, len(todo), batch_size), desc="guard targets", unit="batch", disable=not progress):
            batch = [rows[i] for i in todo[start : start + batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=device)
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            for i, r, h in zip(todo[start : start + batch_size], batch, hidden):
                logits = logits_at(h[: len(r) - 1])  # the output head only where there is a next token
                values, indices = logits.topk(top_k, dim=-1)
                saved[f"ids{i}"] = indices.cpu().contiguous()
                saved[f"logprobs{i}"] = (values - logits.logsumexp(-1, keepdim=True)).cpu().contiguous()
        write_tensors(path, saved)
    keep = set(wanted)
    return [(r, saved[f"ids{i}"], saved[f"logprobs{i}"]) if i in keep else (r, None, None) for i, r in enumerate(rows)]


def cached_rows(base, texts: list[str], cache_dir: Path, max_len: int = 64, top_k: int = 32) -> int:
    """How many of the texts' rows already have cached targets."""
    path = _targets_path(base, texts, cache_dir, max_len, top_k)
    try:
        with safe_open(path, "pt") as f:
            return sum(1 for k in f.keys() if k.startswith("ids"))
    except TENSOR_FILE_ERRORS:
        return 0


def _targets_path(base, texts: list[str], cache_dir: Path, max_len: int, top_k: int) -> Path:
    key = hashlib.sha256(json.dumps([base.fingerprint, texts, max_len, top_k]).encode()).hexdigest()
    return Path(cache_dir) / f"{key}.targets.safetensors"

