"""What the strong-teacher strategies (entigraph, active_reading, implications) share: their outputs are free text,
kept only when grounded in the chunk. A text is dropped, and the reason counted, when it is empty or too short,
repeats itself, copies the chunk, leaves out what it was asked about, invents a number or a name the chunk
does not contain (`text.invented_facts`), or was already kept."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from inweights.synth import Example, passing
from inweights.synth.text import invented_facts, normalize

MIN_WORDS = 6


def rejection(text: str, source: str, mentions: Iterable[str] = ()) -> str | None:
    """Why `text` may not be trained on as a fact of `source` (None: it may)."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return "empty" if not words else "too_short"
    if len({w.lower() for w in words}) < 0.4 * len(words):
        return "degenerate"
    if normalize(text) in normalize(source):
        return "copy_of_source"
    if any(normalize(m) not in normalize(text) for m in mentions):
        return "off_topic"
    if invented_facts(text, source):
        return "invented_a_fact"
    return None


def keep(texts: Iterable[tuple[str, tuple[str, ...]]], chunk, name: str, teacher_id: str, stats: Counter
         ) -> list[Example]:
    """Plain-text examples of the (text, must-mention) pairs that pass `rejection`; drops counted in `stats`."""
    texts = [(" ".join(text.split()), mentions) for text, mentions in texts]
    good = passing(texts, lambda t: rejection(t[0], chunk.text, t[1]), lambda t: normalize(t[0]), stats)
    return [Example("", text, name, chunk.sha256, chunk.doc_path, chunk.doc_sha256, teacher_id) for text, _ in good]


def first_paragraph(reply: str) -> str:
    """The reply's first paragraph: a model often starts its answer on a new line, so cutting at the first
    newline (as short answers are) would keep nothing, and what a small model writes after its first blank line
    is mostly a new, unrelated text. (Servers differ in where they stop a completion; this makes every teacher's
    reply the same kind of text.)"""
    return next((part.strip() for part in reply.strip().split("\n\n") if part.strip()), "")


def items(text: str) -> list[str]:
    """The entries of a list the teacher wrote, one per line, without their markers ("1.", "-", "*")."""
    import re

    lines = [re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line]
