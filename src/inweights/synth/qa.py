"""Self-study question/answer: the teacher, with the chunk in its context, writes questions and answers them.

A weak teacher (a 270M base model) rarely writes usable free-form QA pairs, so the work is split into steps
it can do (answer-aware question generation with a round-trip check, as in Alberti et al. 2019):
1. an answer-bearing span is taken from a sentence of the chunk (dates, names, numbers);
2. the teacher, seeing the passage, the sentence and that answer, writes a question for it (sampled);
3. the teacher answers its own question with the passage in context (greedy); the pair is kept only when its
   answer matches the span. Empty, degenerate, answer-revealing and duplicate questions are dropped and counted.
"""

from __future__ import annotations

from inweights.synth import Example, passing, qa_example
from inweights.synth.text import answer_spans, normalize, sentences

NAME = "qa"
VERSION = 1
NEEDS_TEACHER = True
TOKENS_PER_WORD = 1.0
"""Synthetic tokens per source word, for the plan (the embedded teacher keeps far fewer; a strong one about this)."""

_WRITE_PREFIX = """Write a question whose answer is the given answer. The question must name what it is about.

Passage: The Lindholm Bridge in Tromsdal was completed in 1987. It is 312 metres long and was designed by Astrid Holm.
Sentence: The Lindholm Bridge in Tromsdal was completed in 1987.
Answer: 1987
Question: In which year was the Lindholm Bridge finished?

Sentence: It is 312 metres long and was designed by Astrid Holm.
Answer: Astrid Holm
Question: Who designed the Lindholm Bridge in Tromsdal?

Passage: {passage}
"""
_ANSWER_PREFIX = "Answer each question with a few words from the passage.\n\nPassage: {passage}\n"


def make(chunk, teacher, config, stats) -> list[Example]:
    facts = [(s, a) for s in sentences(chunk.text) for a in answer_spans(s, limit=config.facts_per_sentence)]
    if not facts:
        stats["chunks_without_facts"] += 1
        return []
    asks = [(s, a) for s, a in facts for _ in range(config.questions_per_fact)]
    questions = teacher.complete(
        [f"Sentence: {s}\nAnswer: {a}\nQuestion:" for s, a in asks],
        prefix=_WRITE_PREFIX.format(passage=chunk.text), max_new_tokens=32,
        temperature=config.temperature, seed=config.teacher_seed)
    stats["made"] += len(questions)
    written = [(q.split("\n")[0].strip(), a, s) for (s, a), q in zip(asks, questions)]
    candidates = [(q, a) for q, a, _ in passing(written, lambda w: _reject(*w), lambda w: normalize(w[0]), stats)]
    if not candidates:
        return []
    replies = teacher.complete([f"Question: {q}\nAnswer:" for q, _ in candidates],
                               prefix=_ANSWER_PREFIX.format(passage=chunk.text), max_new_tokens=12)
    out = []
    for (question, answer), reply in zip(candidates, replies):
        if not _same_answer(reply, answer):
            stats["dropped_roundtrip_mismatch"] += 1
            continue
        out.append(qa_example(question, answer, chunk, NAME, teacher.id))
    return out


def _reject(question: str, answer: str, sentence: str) -> str | None:
    words = question.split()
    if not question:
        return "empty"
    if not question.endswith("?") or len(words) < 4 or len(words) > 30:
        return "degenerate"
    if len(set(w.lower() for w in words)) < len(words) * 0.6:
        return "degenerate"
    if normalize(answer) and normalize(answer) in normalize(question):
        return "reveals_answer"
    if normalize(question.rstrip("?")) == normalize(sentence.rstrip(".")):
        return "copy_of_prompt"
    return None


def _same_answer(reply: str, answer: str) -> bool:
    reply, answer = normalize(reply.split("\n")[0]), normalize(answer)
    return bool(reply) and (answer in reply or (reply in answer and len(reply) >= 0.5 * len(answer)))
