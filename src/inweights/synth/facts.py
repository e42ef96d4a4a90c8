"""LLM-free strategy built on a real parser (`parse.py`): natural questions, many views of each fact.

For each sentence, with its pronouns resolved to the subject they stand for:
- every fact (subject, object, time, place, agent, or an entity nested deeper) is asked in several wordings, all
  in the `Question: ... Answer:` format that `ask` uses: the fronted wh-question on the whole clause ("When was
  the game played at Levi's Stadium?"), the same on the clause core ("When was the game played?"), the question
  in situ ("The game was played when?") and a fill-in-the-blank sentence. Asking for the subject and the object
  of one relation covers both of its directions ("Who founded the Radium Institute?" / "What did Marie Curie
  found?");
- with `views` on, the sentence itself as plain text (resolved, so it names its subject), the sentence in other
  orders (a time or place phrase moved), and each chunk's sentences in shuffled orders.

Each kind of item is tagged in `Example.strategy` ("facts:question", "facts:short", "facts:insitu",
"facts:cloze", "facts:statement", "facts:reorder", "facts:shuffle") so the budget takes from each evenly and the
manifest counts them.
"""

from __future__ import annotations

import random

from inweights.synth import Example, qa_example
from inweights.synth.parse import analyse

NAME = "facts"
VERSION = 2  # 2: each question tagged by the wording parse.py made it with (1 guessed it from their number)
NEEDS_TEACHER = False
SHUFFLES_PER_CHUNK = 2
"""Plain-text copies of each chunk with its (resolved) sentences in a shuffled order, with `views` on."""


def make(chunk, teacher, config, stats) -> list[Example]:
    out: list[Example] = []

    def add(example: Example) -> None:
        out.append(example)
        stats[example.strategy.split(":")[1]] += 1

    def text(kind: str, body: str) -> Example:
        return Example("", body, f"{NAME}:{kind}", chunk.sha256, chunk.doc_path, chunk.doc_sha256, "none")

    sentences = analyse(chunk.text, max_facts=config.facts_per_sentence)
    for sentence in sentences:
        stats["sentences"] += 1
        stats["facts"] += len(sentence.facts)
        for fact in sentence.facts:
            for kind, question in zip(fact.kinds, fact.questions):
                add(qa_example(question, fact.answer, chunk, f"{NAME}:{kind}", "none"))
            add(qa_example(f"Fill in the blank: {fact.cloze}", fact.answer, chunk, f"{NAME}:cloze", "none"))
        if config.views:
            add(text("statement", sentence.text))
            for reorder in sentence.reorders:
                add(text("reorder", reorder))
    if config.views and len(sentences) > 1:
        rng = random.Random(chunk.sha256)
        order = [s.text for s in sentences]
        seen = {tuple(order)}
        for _ in range(4 * SHUFFLES_PER_CHUNK):  # a few tries: a short chunk has few distinct orders
            rng.shuffle(order)
            if tuple(order) not in seen:
                seen.add(tuple(order))
                add(text("shuffle", " ".join(order)))
            if len(seen) > SHUFFLES_PER_CHUNK:
                break
    stats["made"] += len(out)
    return out

