"""Scoring functions: SQuAD-style answer matching, option log-likelihoods and perplexity.

The string metrics are pure functions of (prediction, gold). Each takes one gold string or a list of golds
and returns the best score over them. The model metrics work for any Hugging Face causal LM and for a
PEFT-wrapped one. Put the model in eval mode first; they do not change its mode.
"""

from __future__ import annotations

import copy
import re
import string
from collections import Counter
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from inweights.train import lm_parts

Gold = str | Sequence[str]
HEAD_ROWS = 128
"""Positions whose vocabulary-wide logits are computed at once when scoring every position (perplexity)."""

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: Gold) -> float:
    """1.0 when the normalised prediction equals a normalised gold."""
    return _best(_exact_match_one, pred, gold)


def f1(pred: str, gold: Gold) -> float:
    """SQuAD v1.1 token F1 between the normalised prediction and the best gold (0.0 when either is empty)."""
    return _best(_f1_one, pred, gold)


def contains(pred: str, gold: Gold) -> float:
    """1.0 when a normalised gold appears in the normalised prediction as a whole-word span.

    Whole words, not raw substrings, so the gold "1" does not match "1990" and "art" does not match
    "party". A gold that normalises to nothing (e.g. "The") never matches: it would match everything.
    """
    return _best(_contains_one, pred, gold)


def alias_match(pred: str, aliases: Gold) -> float:
    """TriviaQA-style match: 1.0 when any alias appears in the prediction as a whole-word span.

    We chose containment over equality because greedy answers from a base model are often short phrases
    ("Onion, a vegetable"). Equality would miss them. Matching whole words keeps short aliases from
    matching inside longer words. See `contains`.
    """
    return _best(_contains_one, pred, aliases)


def _best(score: Callable[[str, str], float], pred: str, gold: Gold) -> float:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("no gold answers to compare against")
    return max(score(pred, g) for g in golds)


def _exact_match_one(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _f1_one(pred: str, gold: str) -> float:
    pred_tokens = normalize_answer(pred).split()
    gold_tokens = normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _contains_one(pred: str, gold: str) -> float:
    gold_n = normalize_answer(gold)
    if not gold_n:
        return 0.0
    # Normalised text is single-space-separated words, so padding both with spaces makes `in` match whole words.
    return float(f" {gold_n} " in f" {normalize_answer(pred)} ")


@torch.no_grad()
def option_logliks(
    model,
    tokenizer,
    contexts: Sequence[str],
    options: Sequence[Sequence[str]],
    batch_size: int = 8,
    shared_prefix: int = 256,
) -> list[list[tuple[float, int]]]:
    """For each context and each of its options: (sum of log p(option tokens | context), number of option tokens).

    The context is tokenized with special tokens (so it starts with BOS where the tokenizer adds one). The
    option is tokenized without them, as " " + option.lstrip(), or just option.lstrip() when the context
    already ends in whitespace. The two id lists are concatenated, so the context/option boundary is exact
    and does not depend on how the tokenizer would merge across it. Pairs are sorted by length and run in
    right-padded batches. Logits are computed only for the positions that predict option tokens.

    Contexts that share a long token prefix (a document in the prompt, asked several questions, each with
    several options) run that prefix once: its KV cache is copied under every batch of their continuations.
    With a 4k-token story this is the difference between one prefill per story and one per option. Models
    whose forward takes no `past_key_values` (or contexts shorter than `shared_prefix`) take the plain path.
    """
    if len(contexts) != len(options):
        raise ValueError(f"{len(contexts)} contexts but {len(options)} option lists")
    pairs = []  # (context index, option index, token ids, context length)
    for i, (context, opts) in enumerate(zip(contexts, options)):
        context_ids = tokenizer(context)["input_ids"]
        if not context_ids:
            raise ValueError(f"context {i} is empty and the tokenizer adds no BOS: nothing to condition on")
        sep = "" if context[-1:].isspace() else " "
        for j, option in enumerate(opts):
            text = sep + option.lstrip()
            option_ids = tokenizer(text, add_special_tokens=False)["input_ids"] if option.strip() else []
            pairs.append((i, j, context_ids + option_ids, len(context_ids)))

    results: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(opts) for opts in options]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for prefix, group in _prefix_groups(pairs, shared_prefix):
        cache = _prefix_cache(model, prefix, device) if prefix else None
        rows = [(i, j, ids[len(prefix):], n_ctx - len(prefix)) for i, j, ids, n_ctx in group]
        rows.sort(key=lambda p: len(p[2]), reverse=True)
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for (i, j, ids, n_ctx), score in zip(batch, _score_batch(model, batch, pad, device, cache, len(prefix))):
                results[i][j] = (score, len(ids) - n_ctx)
    return results


def _prefix_groups(pairs, min_prefix: int) -> list[tuple[list[int], list]]:
    """(shared prefix ids, pairs) groups: pairs whose contexts agree on their first `min_prefix` tokens share
    the longest prefix common to all their contexts, less the last context token (whose logits score the
    first option token, so it must run with the option). Everything else is one group with no prefix."""
    groups: dict[tuple, list] = {}
    rest = []
    for pair in pairs:
        ids, n_ctx = pair[2], pair[3]
        (groups.setdefault(tuple(ids[:min_prefix]), []) if min_prefix and n_ctx > min_prefix else rest).append(pair)
    out = [([], rest)] if rest else []
    for group in groups.values():
        first = group[0][2]
        n = min(n_ctx for *_, n_ctx in group) - 1
        for _, _, ids, _ in group[1:]:
            n = next((k for k in range(n) if ids[k] != first[k]), n)
        out.append((list(first[:n]), group) if n >= min_prefix else ([], group))
    return out


def _prefix_cache(model, prefix: list[int], device):
    """The KV cache of `prefix` (batch 1), in a cache whose every layer keeps all positions (a sliding-window
    layer's cache would drop the ones the continuations' earliest tokens still attend to)."""
    from transformers import DynamicCache

    out = model(input_ids=torch.tensor([prefix], device=device), cache=DynamicCache(), use_cache=True,
                logits_to_keep=1)
    return out.cache


def _score_batch(model, batch, pad: int, device, cache=None, offset: int = 0) -> list[float]:
    """Sum of option-token log-probs for each (.., ids, context length) row of one right-padded batch; with a
    prefix `cache` of `offset` tokens, the rows are continuations of that prefix (a copy of it, per batch).
    The vocabulary-wide logits are computed only at the positions that predict an option token."""
    lengths = torch.tensor([len(ids) for _, _, ids, _ in batch])
    context_lengths = torch.tensor([n_ctx for _, _, _, n_ctx in batch])
    width = int(lengths.max())
    # Position p predicts token p + 1; option tokens sit at [context length, length).
    positions = torch.arange(width - 1)
    scored = (positions[None, :] >= context_lengths[:, None] - 1) & (positions[None, :] < lengths[:, None] - 1)
    if not scored.any():
        return [0.0] * len(batch)
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for _, _, ids, _ in batch])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    extra = {}
    if cache is not None:
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(batch))
        mask = torch.cat([torch.ones(len(batch), offset, dtype=mask.dtype), mask], dim=1)
        extra = {"cache": past, "use_cache": True,
                 "position_ids": (offset + torch.arange(width)).expand(len(batch), -1).to(device)}
    backbone, logits_at = lm_parts(model)
    hidden = backbone(input_ids=input_ids.to(device), attention_mask=mask.to(device), **extra).last_hidden_state
    # Only real positions are read: padded rows can hold NaN states on some attention backends.
    logprobs = torch.log_softmax(logits_at(hidden[:, :-1][scored.to(hidden.device)]), dim=-1)
    targets = input_ids[:, 1:][scored].to(logprobs.device)
    token_logprobs = logprobs.gather(-1, targets[:, None]).squeeze(-1).cpu()
    rows = torch.arange(len(batch))[:, None].expand_as(scored)[scored]
    return torch.zeros(len(batch), dtype=token_logprobs.dtype).index_add_(0, rows, token_logprobs).tolist()


def choose(logliks: Sequence[tuple[float, int]], normalize: bool = False) -> int:
    """Index of the best option, by total log-likelihood or (normalize=True) by log-likelihood per token."""
    if not logliks:
        raise ValueError("no options to choose from")
    scores = [total / max(n, 1) if normalize else total for total, n in logliks]
    return max(range(len(scores)), key=scores.__getitem__)  # ties go to the first option


@torch.no_grad()
def perplexity(model, tokenizer, text: str, max_tokens: int = 1024, window: int = 512) -> float:
    """exp(mean next-token NLL) over the first `max_tokens` tokens of `text`.

    The tokens are cut into consecutive, non-overlapping windows. With a BOS token, each window is BOS plus
    the next `window - 1` text tokens, and every text token is scored. Without one, each window is the next
    `window` tokens and its first token is only context. Windows never see earlier windows. This is simple
    and reproducible, but it scores a little higher than a sliding window with overlap would.
    """
    nll, count = sum_nll(model, tokenizer, text, max_tokens, window)
    return float(torch.exp(torch.tensor(nll / count)))


def sum_nll(model, tokenizer, text: str, max_tokens: int, window: int) -> tuple[float, int]:
    """(summed next-token NLL, number of scored tokens), windowed as `perplexity` describes."""
    bos = tokenizer.bos_token_id
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    ids = _leading_token_ids(tokenizer, text, max_tokens)
    step = window - 1 if bos is not None else window
    device = next(model.parameters()).device
    backbone, logits_at = lm_parts(model)
    nll, count = 0.0, 0
    for start in range(0, len(ids), step):
        chunk = ([bos] if bos is not None else []) + ids[start : start + step]
        if len(chunk) < 2:
            continue
        input_ids = torch.tensor([chunk], device=device)
        hidden = backbone(input_ids=input_ids).last_hidden_state[0, :-1]
        targets = input_ids[0, 1:]
        for start_at in range(0, len(targets), HEAD_ROWS):  # the vocabulary-wide logits, a slice at a time
            nll += float(F.cross_entropy(logits_at(hidden[start_at : start_at + HEAD_ROWS]),
                                         targets[start_at : start_at + HEAD_ROWS], reduction="sum"))
        count += len(chunk) - 1
    if count == 0:
        raise ValueError("text is too short to score: it needs at least one token after the first")
    return nll, count


def _leading_token_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    """The first `max_tokens` token ids of `text` (no special tokens).

    Only a prefix of the text is tokenized, with some spare tokens so the cut cannot change the kept ones.
    WikiText is over a megabyte, and tokenizing all of it to keep 1,024 tokens is slow.
    """
    chars = max(4096, 8 * max_tokens)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens + 16 or chars >= len(text):
            return ids[:max_tokens]
        chars *= 2
