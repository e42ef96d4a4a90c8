"""EntiGraph (Yang et al. 2024, "Synthetic continued pretraining"): the chunk's entities are extracted, then the
teacher writes how pairs (and a few triples) of them relate, from the chunk alone. The same facts come back in
many contexts, each tied to the entities it links.

Entities: spaCy's named entities and proper-noun phrases of the chunk, in order of first mention. Pairs that
share a sentence come first (they surely relate), then the rest; `entity_pairs` of them and `entity_triples`
triples per chunk. Each text must name its entities and pass the grounding filters (synth/grounded.py).
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from inweights.synth import Example
from inweights.synth.grounded import first_paragraph, keep

NAME = "entigraph"
VERSION = 2  # 2: replies are read to their first paragraph, not cut at their first newline
NEEDS_TEACHER = True
SETTINGS = ("entity_pairs", "entity_triples")
TOKENS_PER_WORD = 3.0
"""Synthetic tokens per source word, for the plan (about 80 tokens per pair, 8 pairs per 250-word chunk)."""

_PROMPT = """Passage:
{passage}

Using only facts stated in the passage, explain in one paragraph how {entities} are related.
Answer:"""
_LABELS = {"PERSON", "ORG", "GPE", "LOC", "FAC", "PRODUCT", "EVENT", "WORK_OF_ART", "NORP", "LAW", "DATE"}


def entities(text: str) -> tuple[list[str], list[set[str]]]:
    """(the chunk's entities in order of first mention, the entities of each sentence)."""
    from inweights.synth.parse import nlp

    doc = nlp()(text)
    found: dict[str, str] = {}
    per_sentence = []
    for sent in doc.sents:
        names = [e.text for e in sent.ents if e.label_ in _LABELS]
        names += [c.text for c in sent.noun_chunks if c.root.pos_ == "PROPN"]
        here = set()
        for name in names:
            name = name.strip().removeprefix("the ").removeprefix("The ")
            if len(name) > 1:
                here.add(found.setdefault(name.lower(), name))
        per_sentence.append(here)
    names = list(found.values())
    inside = {n for n in names if any(n != m and f" {n.lower()} " in f" {m.lower()} " for m in names)}
    return [n for n in names if n not in inside], [s - inside for s in per_sentence]


def make(chunk, teacher, config, stats: Counter) -> list[Example]:
    names, per_sentence = entities(chunk.text)
    if len(names) < 2:
        stats["chunks_without_entity_pairs"] += 1
        return []
    together = [p for p in combinations(names, 2) if any(set(p) <= s for s in per_sentence)]
    apart = [p for p in combinations(names, 2) if p not in together]
    groups = (together + apart)[: config.entity_pairs]
    groups += [t for t in combinations(names, 3) if any(len(set(t) & s) >= 2 for s in per_sentence)][
        : config.entity_triples]
    prompts = [_PROMPT.format(passage=chunk.text, entities=_listed(g)) for g in groups]
    replies = teacher.complete(prompts, max_new_tokens=128, temperature=config.temperature, seed=config.teacher_seed,
                               stop_at_newline=False)
    texts = [first_paragraph(r) for r in replies]
    stats["made"] += len(texts)
    return keep(zip(texts, groups), chunk, NAME, teacher.id, stats)


def _listed(group) -> str:
    return " and ".join(group) if len(group) == 2 else f"{group[0]}, {group[1]} and {group[2]}"
