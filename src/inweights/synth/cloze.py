"""LLM-free strategy: cloze questions and plain statements built from the chunk's own sentences.

Always yields data, whatever the teacher's quality: each sentence becomes a statement (next-token text) and,
for each fact-bearing span in it (date, name, number), a fill-in-the-blank question in the QA format.
"""

from __future__ import annotations

from inweights.synth import Example, qa_example
from inweights.synth.text import answer_spans, sentences

NAME = "cloze"
VERSION = 1
NEEDS_TEACHER = False


def make(chunk, teacher, config, stats) -> list[Example]:
    out = []
    for sentence in sentences(chunk.text):
        if len(sentence.split()) < 4:
            stats["dropped_too_short"] += 1
            continue
        out.append(Example("", sentence, NAME, chunk.sha256, chunk.doc_path, chunk.doc_sha256, "none"))
        for span in answer_spans(sentence, limit=config.facts_per_sentence):
            blanked = sentence.replace(span, "____", 1)
            out.append(qa_example(f"Fill in the blank: {blanked}", span, chunk, NAME, "none"))
        stats["made"] += 1
    return out
