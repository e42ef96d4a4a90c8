"""LLM-free self-study seed prompts (after Cartridges' self-study, without a teacher writing the prompts).

Each chunk is turned into a pool of prompts of several seed types, each instantiated per sentence and per
entity (answer-bearing span) with a few phrasings, and answered from the chunk's own text:

- question: echo questions ("The Bergen office opened in when?") in a few phrasings;
- cloze: fill-in-the-blank items;
- entity: "What do you know about <entity>?", answered by every sentence of the chunk that names it;
- structure: "List the facts about <entity>." as a bulleted list of those sentences;
- use case: "I am writing a report that mentions <entity>. What should it say?";
- recall: "What comes after: <sentence>?", answered by the next sentence (ties the text together);
- summary: "What does the document say about <entity of the first sentence>?" answered by the chunk's
  opening sentences.

The pool is far larger than what a small budget can train, and `within_budget` takes from it in a seeded
round-robin over chunks and seed types until the token budget is spent, so the training set grows with the
budget rather than with a teacher's ability to write questions. With `--objective distill` the completions
are scored by the base model that has the chunk in its context, as in Cartridges.
"""

from __future__ import annotations

from inweights.synth import Example, qa_example
from inweights.synth.text import answer_spans, question_word, sentences

NAME = "selfstudy"
VERSION = 1
NEEDS_TEACHER = False

_ENTITY = ["What do you know about {e}?", "Tell me about {e}.", "What is said about {e}?"]
_STRUCTURE = ["List the facts about {e}.", "Give the key points about {e} as a list."]
_USE = ["I am writing a report that mentions {e}. What should it say?",
        "A colleague asks me about {e}. What should I tell them?"]
_QUESTION = ["{q}", "Do you know {lq}", "Quick question: {lq}"]
_RECALL = ["What comes after this sentence: \"{s}\"", "Continue from: \"{s}\""]
_SUMMARY = ["What does the document say about {e}? Summarize it.", "Summarize the passage about {e}."]


def make(chunk, teacher, config, stats) -> list[Example]:
    out: list[Example] = []

    def add(kind: str, prompt: str, answer: str) -> None:
        example = qa_example(prompt, answer, chunk, NAME, "none")
        out.append(Example(example.prompt, example.completion, f"{NAME}:{kind}", chunk.sha256, chunk.doc_path,
                           chunk.doc_sha256, "none"))
        stats[kind] += 1

    lines = [s for s in sentences(chunk.text) if len(s.split()) >= 4]
    mentions: dict[str, list[str]] = {}
    for i, sentence in enumerate(lines):
        spans = answer_spans(sentence, limit=max(config.facts_per_sentence, 3))
        for span in spans:
            mentions.setdefault(span, []).append(sentence)
            echo = sentence.replace(span, question_word(span, sentence[: sentence.find(span)]), 1).rstrip(".!?") + "?"
            echo = echo[0].upper() + echo[1:]
            lower = echo[0].lower() + echo[1:] if not echo.split()[0].isupper() else echo
            for template in _QUESTION:
                add("question", template.format(q=echo, lq=lower), span)
            add("cloze", f"Fill in the blank: {sentence.replace(span, '____', 1)}", span)
        if i + 1 < len(lines):
            for template in _RECALL:
                add("recall", template.format(s=sentence), lines[i + 1])
    for entity, said in mentions.items():
        if any(c.isdigit() for c in entity) and not any(c.isalpha() for c in entity):
            continue  # "42" alone is not something to ask about
        text = " ".join(dict.fromkeys(said))
        for template in _ENTITY:
            add("entity", template.format(e=entity), text)
        for template in _STRUCTURE:
            add("structure", template.format(e=entity), "\n" + "\n".join(f"- {s}" for s in dict.fromkeys(said)))
        for template in _USE:
            add("use", template.format(e=entity), text)
    if lines:
        opening = answer_spans(lines[0], limit=1)
        if opening:
            for template in _SUMMARY:
                add("summary", template.format(e=opening[0]), " ".join(lines[:3]))
    return out
