"""Answering one question set under one condition, scoring it, and measuring what it costs.

Every condition uses the same prompt: the QA template, after an optional context (a document or retrieved
chunks) and a blank line. Short answers are greedy; multiple choice picks the option with the highest total
log-likelihood after "Answer:".
"""

from __future__ import annotations

import math
import resource
import time
from typing import Sequence

import torch

from inweights.evaluate.metrics import choose, contains, exact_match, f1, option_logliks
from inweights.evaluate.questions import MultipleChoice, Question, ShortAnswer
from inweights.generate import generate
from inweights.prompt import qa_prompt as prompt_for
from inweights.prompt import render

MAX_NEW_TOKENS = 24
_MARGIN_TOKENS = 8  # re-tokenizing a cut text can merge or split a token or two at the cut


def model_window(model) -> int:
    """The longest sequence the model was built for (its position embeddings)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.max_position_embeddings)


def fit_context(tokenizer, context: str, question: Question, window: int, max_new_tokens: int = MAX_NEW_TOKENS
                ) -> tuple[str | None, int]:
    """Cut the context's tail so context + question + the answer fit in `window` tokens.

    Returns (the kept context, or None when nothing fits; number of context tokens cut). The head is kept: it
    holds a story's title and opening, and a cut in the middle of a sentence costs at most that sentence.
    """
    if isinstance(question, MultipleChoice):
        answer_room = max(len(tokenizer(" " + o, add_special_tokens=False)["input_ids"]) for o in question.options)
    else:
        answer_room = max_new_tokens
    ids = tokenizer(context.strip(), add_special_tokens=False)["input_ids"]
    fixed = len(tokenizer(render(tokenizer, prompt_for(question.question, "x")))["input_ids"])  # template, BOS, question
    budget = window - fixed - answer_room - _MARGIN_TOKENS
    if len(ids) <= budget:
        return context, 0
    if budget <= 0:
        return None, len(ids)
    return tokenizer.decode(ids[:budget], skip_special_tokens=True), len(ids) - budget


def question_prompts(tokenizer, questions: Sequence[Question], contexts: Sequence[str | None]) -> list[str]:
    """The prompt of every question after its context (None: closed book), as every condition asks it."""
    return [render(tokenizer, prompt_for(q.question, c)) for q, c in zip(questions, contexts)]


def answer_short(model, tokenizer, stop_ids: Sequence[int], questions: Sequence[ShortAnswer],
                 contexts: Sequence[str | None], max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 8
                 ) -> list[str]:
    """Greedy answers, first line only."""
    prompts = question_prompts(tokenizer, questions, contexts)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_token_ids=stop_ids,
                       batch_size=batch_size)
    return [a.split("\n", 1)[0].strip() for a in answers]


def answer_mc(model, tokenizer, questions: Sequence[MultipleChoice], contexts: Sequence[str | None],
              batch_size: int = 8) -> list[int]:
    """Index of the chosen option per question: highest total log-likelihood after the prompt."""
    prompts = question_prompts(tokenizer, questions, contexts)
    logliks = option_logliks(model, tokenizer, prompts, [q.options for q in questions], batch_size=batch_size)
    return [choose(scores) for scores in logliks]


def answer_logliks(model, tokenizer, questions: Sequence[ShortAnswer], contexts: Sequence[str | None],
                   batch_size: int = 8) -> list[tuple[float, int]]:
    """Per question, (log p, tokens) of its likeliest gold answer (or alias) after the answer prompt: how close
    the model is to saying the answer, a continuous score where exact match counts only what greedy decoding
    reaches. Answers are scored as `answer_short` would write them, after the prompt and a space."""
    prompts = question_prompts(tokenizer, questions, contexts)
    golds = [list(dict.fromkeys(a.strip() for a in q.answers if a.strip())) for q in questions]
    logliks = option_logliks(model, tokenizer, prompts, golds, batch_size=batch_size)
    return [max(scores, key=lambda s: s[0]) for scores in logliks]


def gold_summary(logliks: Sequence[tuple[float, int]]) -> dict:
    """Mean probability of the gold answer (a soft exact match, in [0, 1]) and mean NLL per answer token (nats)."""
    n = max(len(logliks), 1)
    return {"p_gold": sum(math.exp(lp) for lp, _ in logliks) / n,
            "nll_per_token": sum(-lp / max(k, 1) for lp, k in logliks) / n, "n": len(logliks)}


def score_by_form(questions: Sequence[Question], predictions: Sequence) -> dict:
    """`score` for each question form the file labels ({} when none is labelled): carry-over by wording."""
    forms = sorted({q.form for q in questions if q.form})
    return {form: score([q for q in questions if q.form == form],
                        [p for q, p in zip(questions, predictions) if q.form == form]) for form in forms}


def score(questions: Sequence[Question], predictions: Sequence) -> dict:
    """Short answers: mean exact match, token F1 and contains. Multiple choice: accuracy. Fractions in [0, 1]."""
    n = len(questions)
    if n and isinstance(questions[0], MultipleChoice):
        return {"accuracy": sum(p == q.answer_index for q, p in zip(questions, predictions)) / n, "n": n}
    return {"em": sum(exact_match(p, q.answers) for q, p in zip(questions, predictions)) / max(n, 1),
            "f1": sum(f1(p, q.answers) for q, p in zip(questions, predictions)) / max(n, 1),
            "contains": sum(contains(p, q.answers) for q, p in zip(questions, predictions)) / max(n, 1), "n": n}


@torch.no_grad()
def measure_cost(model, tokenizer, prompts: Sequence[str], timed: int = 5, decode_tokens: int = 16,
                 extra_seconds: float = 0.0) -> dict:
    """What answering costs: prompt tokens and KV cache per question (all prompts), and at batch size 1 on the
    first `timed` prompts, time to first token (tokenize + prefill + first token) and decode speed.

    `extra_seconds`: per-question work before the prompt exists (retrieval), added to the time to first token.
    Peak memory is the process's resident-set high-water mark so far, so it never goes down between conditions.
    """
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    device = next(model.parameters()).device
    ttfts, decode_rates = [], []
    _time_one(model, tokenizer, prompts[0], 2, device)  # warm-up: first calls allocate and pick kernels
    for prompt in prompts[:timed]:
        ttft, rate = _time_one(model, tokenizer, prompt, decode_tokens, device)
        ttfts.append(ttft + extra_seconds)
        decode_rates.append(rate)
    mean_tokens = sum(lengths) / len(lengths)
    return {"prompt_tokens_mean": mean_tokens, "timed_questions": len(ttfts),
            "ttft_s": sum(ttfts) / len(ttfts), "decode_tokens_per_s": sum(decode_rates) / len(decode_rates),
            "kv_cache_bytes_mean": kv_bytes_per_token(model) * mean_tokens,
            "retrieval_s": extra_seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _time_one(model, tokenizer, prompt: str, decode_tokens: int, device) -> tuple[float, float]:
    t0 = time.perf_counter()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    next_id = out.logits[:, -1].argmax(-1, keepdim=True)
    _synchronize(device)
    ttft = time.perf_counter() - t0
    cache = out.cache
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        out = model(input_ids=next_id, cache=cache, use_cache=True)
        cache = out.cache
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)
    _synchronize(device)
    return ttft, decode_tokens / max(time.perf_counter() - t1, 1e-9)


def _synchronize(device) -> None:
    """Wait for a GPU's queued work, so that a timing covers it (a CUDA call returns before it is done)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def kv_bytes_per_token(model) -> int:
    """2 (K and V) x layers x KV heads x head size x bytes per value: the KV cache one token of prompt holds.

    An upper bound for models with sliding-window layers, whose caches stop growing at the window.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    value_bytes = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * value_bytes
