"""Batched text generation: greedy answers for `ask` and evaluation, sampling for the synthetic-data teacher."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    stop_token_ids: Sequence[int] | None = None,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_k: int = 50,
    top_p: float = 0.95,
    seed: int | None = None,
    prefix: str | None = None,
    progress: str | None = None,
) -> list[str]:
    """Continue each prompt (`prefix + prompt` when a shared prefix is given); returns only the new text, stripped.

    Greedy when temperature is 0. Prompts are sorted by length and padded in batches so padding stays small;
    the output order matches the input order. A shared `prefix` (a passage and instructions that many prompts
    start with) is run through the model once and its KV cache reused by every row: on a CPU the prefill of a
    300-token passage per row would otherwise dominate. Sampling uses a top-k cut first: sorting all 262k
    logits for top-p is slow. `progress`, when given, labels a progress bar over the batches.
    """
    if not prompts:
        return []
    stop = list(stop_token_ids or [tokenizer.eos_token_id])
    if prefix:
        prefix_ids = tokenizer(prefix)["input_ids"]
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] or [tokenizer.pad_token_id] for p in prompts]
    else:
        prefix_ids = []
        encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    device = next(model.parameters()).device
    prefix_cache = _prefill(model, prefix_ids, device) if prefix_ids else None
    for start in tqdm(range(0, len(order), batch_size), desc=progress, unit="batch", disable=progress is None):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in rows], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows], device=device)
        new_tokens = _decode_loop(model, input_ids, mask, max_new_tokens, stop, temperature, top_k, top_p, generator,
                                  prefix_cache, len(prefix_ids))
        for row, tokens in zip(rows, new_tokens):
            outputs[row] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return outputs


def _prefill(model, prefix_ids: list[int], device):
    out = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True, logits_to_keep=1)
    return out.cache


def _decode_loop(model, input_ids, mask, max_new_tokens, stop, temperature, top_k, top_p, generator,
                 prefix_cache=None, prefix_len: int = 0):
    """A plain KV-cached decode loop; it stops each row at its first stop token (which is not returned).

    With a prefix cache, each row's padding sits between the shared prefix and its own tokens; the attention
    mask hides it and the position ids skip it, so every row sees exactly `prefix + prompt`.
    """
    batch = input_ids.shape[0]
    positions = prefix_len + (mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(batch)
        mask = torch.cat([torch.ones(batch, prefix_len, dtype=mask.dtype, device=mask.device), mask], dim=1)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    past = out.cache
    done = torch.zeros(batch, dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    stop_tensor = torch.tensor(stop)
    next_pos = positions[:, -1:] + 1
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float().cpu()
        next_ids = _pick(logits, temperature, top_k, top_p, generator)
        finished_now = torch.isin(next_ids, stop_tensor)
        for b in range(batch):
            if not done[b] and not finished_now[b]:
                tokens[b].append(int(next_ids[b]))
        done |= finished_now
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        out = model(
            input_ids=next_ids.unsqueeze(1).to(mask.device), attention_mask=mask, position_ids=next_pos,
            cache=past, use_cache=True,
        )
        past = out.cache
        next_pos = next_pos + 1
    return tokens


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    if top_k <= 0 and top_p >= 1.0:  # plain sampling from the whole distribution
        return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(-1)
    if top_k <= 0:
        top_k = logits.shape[-1]
    values, indices = torch.topk(logits / temperature, k=min(top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(values, dim=-1)
    cumulative = probs.cumsum(-1)
    probs[(cumulative - probs) > top_p] = 0.0  # nucleus inside the top-k: keeps at least the best token
    choice = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator)
    return indices.gather(-1, choice).squeeze(-1)
