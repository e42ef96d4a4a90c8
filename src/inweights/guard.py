"""The forgetting guard: a KL penalty to the frozen base model on general text that the base model wrote itself.

General text is sampled once from the base model (no bundled corpus, no network, never the evaluation texts),
and the base model's own next-token distribution on it (top-k log-probabilities) is computed once; both are
cached per base model. During training, a share of every batch is such text, and its loss is the KL
divergence from the base distribution to the student's over those top-k tokens. A first version trained
with plain next-token loss on the samples instead: the memory simply memorised the 48 samples (their
perplexity fell from 12 to 4.5) while general-text perplexity rose tenfold. Soft targets cannot be
memorised past the base distribution, and they penalise the over-confident, sharpened predictions that
fact training produces everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from inweights.generate import generate
from inweights.objectives import cached_targets

SHIPPED = Path(__file__).parent / "data" / "guard"
"""Guard texts shipped with the package, named like the cache's files (see `replay_texts`)."""

_SEEDS = [
    "The history of", "In mathematics,", "Scientists have found that", "The recipe calls for", "In 1850,",
    "The city is known for", "A good way to learn", "The river flows", "According to the report,",
    "The weather in", "Many animals", "The first step is to", "In the novel,", "The museum",
    "Football is", "The human body", "When the war ended,", "The company announced", "Music has",
    "The village", "Water is", "The election", "In computer science,", "The king", "Farmers", "The film",
    "Children often", "The mountain", "Electricity", "The painting", "Trade between", "The doctor said",
]


def texts_file_name(fingerprint: str, n: int, seed: int, max_new_tokens: int) -> str:
    """The file (in the cache, or shipped) that holds `replay_texts`' samples for these settings."""
    return hashlib.sha256(json.dumps([fingerprint, n, seed, max_new_tokens, _SEEDS]).encode()).hexdigest() + ".json"


def replay_texts(base, n: int, cache_dir: Path, seed: int = 0, max_new_tokens: int = 64,
                 batch_size: int = 32, progress: bool = True) -> list[str]:
    """`n` general-text samples of the base model (cached by base fingerprint, n, seed and length). Writing
    them takes about 1.3 s a sample on 2 CPU cores with the embedded model, once per base and n; the package
    ships the default 1,024 of the embedded model (`data/guard/`), written by this function, so that a fresh
    machine skips those 22 minutes whenever its converted model has the same fingerprint."""
    if n <= 0:
        return []
    path = Path(cache_dir) / texts_file_name(base.fingerprint, n, seed, max_new_tokens)
    for found in (path, SHIPPED / path.name):
        if found.is_file():
            try:
                data = json.loads(found.read_text())
                if data["base"] == base.fingerprint:
                    return data["texts"]
            except (ValueError, KeyError):
                pass
    prompts = [_SEEDS[i % len(_SEEDS)] for i in range(n)]
    outputs = generate(base.model, base.tokenizer, prompts, max_new_tokens=max_new_tokens,
                       stop_token_ids=[base.tokenizer.eos_token_id], batch_size=batch_size, temperature=1.0,
                       top_k=50, top_p=1.0, seed=seed,
                       progress="guard text" if progress else None)
    texts = [f"{p} {o}".strip() for p, o in zip(prompts, outputs) if o.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"base": base.fingerprint, "texts": texts}))
    os.replace(tmp, path)
    return texts


@torch.no_grad()
def replay_targets(base, texts: list[str], cache_dir: Path, max_len: int = 64, top_k: int = 32,
                   batch_size: int = 8, progress: bool = False) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """For each text: its token ids (BOS first, at most max_len) and the base model's top-k next-token ids and
    log-probabilities at every position but the last. Cached by base fingerprint and the texts. Computing them
    for the default 1,024 texts takes minutes on a CPU (a progress bar with `progress`)."""
    if not texts:
        return []
    key = hashlib.sha256(json.dumps([base.fingerprint, texts, max_len, top_k]).encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.targets.safetensors"
    tok = base.tokenizer
    rows = [([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok(t, add_special_tokens=False)["input_ids"]
            for t in texts]
    rows = [r[:max_len] for r in rows if len(r) > 8]
    device = next(base.model.parameters()).device

    def compute():
        out = []
        for start in tqdm(range(0, len(rows), batch_size), desc="guard targets", unit="batch", disable=not progress):
            batch = rows[start : start + batch_size]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in batch], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=device)
            logprobs = torch.log_softmax(base.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            values, indices = logprobs.topk(top_k, dim=-1)
            out.extend((indices[b, : len(r) - 1].cpu(), values[b, : len(r) - 1].cpu()) for b, r in enumerate(batch))
        return out

    targets = cached_targets(path, len(rows), compute)
    return [(r, ids, values) for r, (ids, values) in zip(rows, targets)]
