"""Natural questions from the parser: pronouns resolved, the right wh-word with do-support, both directions of a
relation, several wordings of each fact, and plain-text views only when asked for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from inweights.config import SynthConfig
from inweights.synth import facts
from inweights.synth.parse import analyse


def qa(text: str) -> dict[str, str]:
    """question -> answer, over every fact of `text`."""
    return {q: f.answer for s in analyse(text) for f in s.facts for q in f.questions}


def test_pronouns_are_resolved_to_the_last_named_subject():
    sentences = analyse("Genghis Khan was born in 1162. He came to power by uniting the nomadic tribes. "
                        "His empire covered 24 million square kilometres.")
    assert [s.text.split(" came")[0].split(" was")[0] for s in sentences][1] == "Genghis Khan"
    assert sentences[2].text.startswith("Genghis Khan's empire")
    assert not any(q.split()[0] in ("He", "His") or " he " in q for s in sentences for f in s.facts
                   for q in f.questions)


def test_a_chunk_that_opens_with_it_names_its_topic():
    sentences = analyse("Demographically, it was the most diverse city in Poland. Warsaw has 2 million people.")
    assert sentences[0].text == "Demographically, Warsaw was the most diverse city in Poland."


@pytest.mark.parametrize("text, question, answer", [
    ("Genghis Khan was born in 1162.", "Who was born in 1162?", "Genghis Khan"),
    ("Genghis Khan was born in 1162.", "When was Genghis Khan born?", "1162"),
    ("The Broncos won the game in 2016.", "When did the Broncos win the game?", "2016"),
    ("The Broncos won the game in 2016.", "What did the Broncos win?", "game"),
    ("The game was played at Levi's Stadium in February 2016.", "Where was the game played?", "Levi's Stadium"),
    ("The Bergen office has 34 employees.", "How many employees does the Bergen office have?", "34"),
    ("Marie Curie founded the Radium Institute.", "Who founded the Radium Institute?", "Marie Curie"),
    ("Marie Curie founded the Radium Institute.", "What did Marie Curie found?", "Radium Institute"),
    ("The king was killed by his brother in 1200.", "What was the king killed by?", "his brother"),
    ("Some said the pharaoh died of sorcery or even poison.", "What did the pharaoh die of?", "sorcery or even poison"),
    ("She moved to Paris in 1910.", "Where did she move to?", "Paris"),
    ("CBS charged an average of $5 million for a commercial.", "How much did CBS charge?", "$5 million"),
])
def test_natural_questions_with_the_right_wh_word(text, question, answer):
    found = qa(text)
    assert found.get(question) == answer, found


def test_each_fact_is_asked_several_ways_and_the_cloze_names_the_subject():
    sentence = analyse("The Oslo office of Fjordlight opened in March 2019 after a long search.")[0]
    when = next(f for f in sentence.facts if f.answer == "March 2019")
    assert when.role == "time" and len(when.questions) >= 2 and len(set(when.questions)) == len(when.questions)
    assert when.questions[0].startswith("When did the Oslo office of Fjordlight open")
    assert "Fjordlight" in when.cloze and "____" in when.cloze and "March 2019" not in when.cloze


def test_a_time_phrase_is_moved_for_another_order():
    sentence = analyse("The game was played on February 7, 2016, at Levi's Stadium.")[0]
    assert "On February 7, 2016, the game was played at Levi's Stadium." in sentence.reorders


@pytest.mark.parametrize("text", ["In the morning, go", "In Paris, sleep"])
def test_a_phrase_with_one_word_beside_it_is_not_reordered(text):
    # the guard's general text (the base model's own samples) has such fragments; they once crashed learn
    assert [s.reorders for s in analyse(text)] == [[]]


@dataclass(frozen=True)
class FakeChunk:
    text: str
    sha256: str = "c" * 64
    doc_path: str = "doc.md"
    doc_sha256: str = "d" * 64


TEXT = ("Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. She opened the Oslo office in March 2019. "
        "The TideLog 300 sensor costs 1,450 euros. The company sells it to fishing fleets in Norway.")


def test_facts_strategy_makes_questions_clozes_and_views():
    stats = Counter()
    examples = facts.make(FakeChunk(TEXT), None, SynthConfig(strategies=("facts",), views=True), stats)
    kinds = Counter(e.strategy for e in examples)
    assert kinds["facts:question"] >= 4 and kinds["facts:cloze"] == stats["facts"] >= 6
    assert kinds["facts:statement"] == 4 and kinds["facts:shuffle"] >= 1
    questions = [e for e in examples if e.prompt.startswith("Question:")]
    assert all(e.prompt.endswith("\nAnswer:") and e.completion.startswith(" ") for e in questions)
    assert any(e.prompt == "Question: When did Ingrid Vassbotn open the Oslo office?\nAnswer:" and
               e.completion == " March 2019" for e in questions), [e.prompt for e in questions]
    plain = [e.completion for e in examples if not e.prompt]
    assert all(" She " not in p and not p.startswith("She ") for p in plain)  # resolved in every view

    off = facts.make(FakeChunk(TEXT), None, SynthConfig(strategies=("facts",), views=False), Counter())
    assert off and all(e.prompt for e in off)  # no plain text without views
    assert len({e.strategy for e in off}) >= 3


def test_facts_per_sentence_caps_the_facts():
    few = facts.make(FakeChunk(TEXT), None, SynthConfig(strategies=("facts",), facts_per_sentence=1,
                                                        views=False), Counter())
    many = facts.make(FakeChunk(TEXT), None, SynthConfig(strategies=("facts",)), Counter())
    assert sum(e.strategy == "facts:cloze" for e in few) == 4 < sum(e.strategy == "facts:cloze" for e in many)


def test_diversity_counts_distinct_ngrams_and_kinds():
    from inweights.synth import Example, diversity

    same = [Example("", "a b c", "facts:statement", "c", "d", "e", "none")] * 2
    mixed = same[:1] + [Example("Question: x y?\nAnswer:", " z", "facts:question", "c", "d", "e", "none")]
    assert diversity(same)["distinct_2"] == 0.5 and diversity(same)["by_kind"] == {"facts:statement": 2}
    assert diversity(mixed)["distinct_1"] == 1.0 and diversity(mixed)["by_kind"]["facts:question"] == 1
