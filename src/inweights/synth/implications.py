"""Implications and rewrites (SEAL, Zweiger et al. 2025): the teacher lists what follows from the chunk, directly
or indirectly, and rewrites it in other words; each implication and each sentence of the rewrite is a
training text, kept only when grounded in the chunk (synth/grounded.py). Each reply is read to its first
paragraph (grounded.first_paragraph), whichever teacher wrote it."""

from __future__ import annotations

from collections import Counter

from inweights.synth import Example
from inweights.synth.grounded import first_paragraph, items, keep
from inweights.synth.text import sentences

NAME = "implications"
VERSION = 2  # 2: each reply is read to its first paragraph
NEEDS_TEACHER = True
TOKENS_PER_WORD = 2.0
"""Synthetic tokens per source word, for the plan (a list of implications and a rewrite per chunk)."""

_IMPLICATIONS = """Let's read the following passage and produce a list of implications derived directly or indirectly \
from the content. Write one implication per line. Use only facts stated in the passage.

Passage:
{passage}

Implications:
"""
_REWRITE = """Rewrite the following passage in different words. Keep every name, number and date.

Passage:
{passage}

Rewritten passage:
"""


def make(chunk, teacher, config, stats: Counter) -> list[Example]:
    prompts = [_IMPLICATIONS.format(passage=chunk.text), _REWRITE.format(passage=chunk.text)]
    n = max(1, config.rephrases_per_sentence)
    asks = [p for p in prompts for _ in range(n)]
    replies = teacher.complete(asks, max_new_tokens=256, temperature=config.temperature, seed=config.teacher_seed,
                               stop_at_newline=False)
    texts = []
    for prompt, reply in zip(asks, replies):
        reply = first_paragraph(reply)
        parts = items(reply) if prompt.startswith("Let's") else sentences(reply)
        texts += [(part, ()) for part in parts]
    stats["made"] += len(texts)
    return keep(texts, chunk, NAME, teacher.id, stats)
