"""Rephrase: the chunk retold in other words, sentence by sentence, by the teacher.

Sentence-level paraphrases keep each output short (cheap on a CPU) and checkable: a paraphrase must keep
every number and name of its sentence and add none that the chunk does not contain (a weak teacher's
paraphrases otherwise invent facts), and it must not be a copy.
"""

from __future__ import annotations

from inweights.synth import Example, passing
from inweights.synth.text import fact_tokens, normalize, sentences

NAME = "rephrase"
VERSION = 1
NEEDS_TEACHER = True
TOKENS_PER_WORD = 2.0
"""Synthetic tokens per source word, for the plan (two rewrites per sentence when most survive the filters)."""

_PREFIX = """Rewrite each sentence in other words. Keep every name, number and date.

Sentence: The Lindholm Bridge in Tromsdal was completed in 1987.
Rewritten: Construction of Tromsdal's Lindholm Bridge was finished in 1987.

Sentence: Each visitor must sign in at the front desk before 9:00.
Rewritten: Before 9:00, every visitor has to sign in at the front desk.

"""


def make(chunk, teacher, config, stats) -> list[Example]:
    if config.rephrases_per_sentence == 0:
        return []
    sources = [s for s in sentences(chunk.text) if len(s.split()) >= 4]
    asks = [s for s in sources for _ in range(config.rephrases_per_sentence)]
    if not asks:
        return []
    outputs = teacher.complete([f"Sentence: {s}\nRewritten:" for s in asks], prefix=_PREFIX,
                               max_new_tokens=48, temperature=config.temperature, seed=config.teacher_seed + 1)
    stats["made"] += len(outputs)
    allowed = fact_tokens(chunk.text)

    def reason(pair) -> str | None:
        sentence, text = pair
        if not text:
            return "empty"
        if normalize(text) == normalize(sentence):
            return "copy_of_prompt"
        if not (0.5 <= len(text.split()) / len(sentence.split()) <= 2.0):
            return "degenerate"
        if not fact_tokens(sentence) <= fact_tokens(text):
            return "lost_a_fact"
        if not fact_tokens(text) <= allowed:
            return "invented_a_fact"
        return None

    pairs = [(sentence, text.split("\n")[0].strip()) for sentence, text in zip(asks, outputs)]
    return [Example("", text, NAME, chunk.sha256, chunk.doc_path, chunk.doc_sha256, teacher.id)
            for _, text in passing(pairs, reason, lambda pair: normalize(pair[1]), stats)]
