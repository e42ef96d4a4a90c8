"""LLM-free strategy: statements, cloze items and echo questions built from the chunk's own sentences.

Always yields data, whatever the teacher's quality: each sentence becomes a statement (next-token text) and,
for each fact-bearing span in it (date, name, number), two items in the QA format that `ask` uses: a
fill-in-the-blank question, and an echo question with the span replaced by its wh-word ("The Bergen office
opened in when?"), which puts the fact behind a question the way a user will ask for it.
"""

from __future__ import annotations

from inweights.synth import Example, qa_example
from inweights.synth.text import answer_spans, question_word, sentences

NAME = "cloze"
VERSION = 2
NEEDS_TEACHER = False


def make(chunk, teacher, config, stats) -> list[Example]:
    out = []
    for sentence in sentences(chunk.text):
        if len(sentence.split()) < 4:
            stats["dropped_too_short"] += 1
            continue
        if config.statements:
            out.append(Example("", sentence, NAME, chunk.sha256, chunk.doc_path, chunk.doc_sha256, "none"))
        for span in answer_spans(sentence, limit=config.facts_per_sentence):
            blanked = sentence.replace(span, "____", 1)
            out.append(qa_example(f"Fill in the blank: {blanked}", span, chunk, NAME, "none"))
            echo = sentence.replace(span, question_word(span, sentence[: sentence.find(span)]), 1).rstrip(".!?") + "?"
            out.append(qa_example(echo[0].upper() + echo[1:], span, chunk, NAME, "none"))
        stats["made"] += 1
    return out
