"""Active Reading (Lin et al. 2025, "Learning Facts at Scale with Active Reading"): the teacher first proposes its
own study strategies for the text (a timeline, a self-quiz, analogies, ...), then applies each to it, so the same
facts are studied in forms the text suggests. Each output is kept only when grounded (synth/grounded.py).

The paper proposes strategies per document; here per chunk (a strategy's output is cached with its chunk). A
reply that proposes no usable strategy falls back to three general ones.
"""

from __future__ import annotations

from collections import Counter

from inweights.synth import Example
from inweights.synth.grounded import items, keep
from inweights.synth.text import sentences

NAME = "active_reading"
VERSION = 1
NEEDS_TEACHER = True
SETTINGS = ("study_strategies",)
TOKENS_PER_WORD = 3.0
"""Synthetic tokens per source word, for the plan (a paragraph per strategy, three strategies per chunk)."""

FALLBACK = ("Write a timeline of the events and dates in the text.",
            "Write questions about the text, each followed by its answer.",
            "Explain the main facts of the text to a new colleague in your own words.")
_PROPOSE = """Here is a text you must learn so that you remember every fact in it.

Text:
{passage}

List {n} different study strategies suited to this text (for example a timeline, a self-quiz, comparisons, \
analogies, a summary by topic), one per line, each as an instruction.
Strategies:
"""
_APPLY = """Text:
{passage}

Study task: {strategy}
Use only facts stated in the text.
Result:
"""


def make(chunk, teacher, config, stats: Counter) -> list[Example]:
    n = config.study_strategies
    proposed = teacher.complete([_PROPOSE.format(passage=chunk.text, n=n)], max_new_tokens=96,
                                temperature=config.temperature, seed=config.teacher_seed, stop_at_newline=False)[0]
    strategies = [s for s in items(proposed) if 3 <= len(s.split()) <= 30][:n]
    if not strategies:
        stats["fallback_strategies"] += 1
        strategies = list(FALLBACK[:n])
    stats["strategies"] += len(strategies)
    replies = teacher.complete([_APPLY.format(passage=chunk.text, strategy=s) for s in strategies],
                               max_new_tokens=192, temperature=config.temperature, seed=config.teacher_seed + 1,
                               stop_at_newline=False)
    texts = [(part, ()) for reply in replies for part in _paragraphs(reply)]
    stats["made"] += len(texts)
    return keep(texts, chunk, NAME, teacher.id, stats)


def _paragraphs(reply: str) -> list[str]:
    """A study result cut into trainable pieces: its list items, or else its sentences, two at a time."""
    lines = items(reply)
    if len(lines) > 1:
        return lines
    parts = sentences(reply)
    return [" ".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
