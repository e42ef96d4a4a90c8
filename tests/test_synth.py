"""Synthetic data: fact spans, the three strategies (with a scripted teacher), filters, the cache, leak checks."""

from __future__ import annotations

from collections import Counter

import pytest

from inweights.config import SynthConfig
from inweights.corpus import Chunk
from inweights.synth import ExampleCache, assert_no_leak, cloze, drop_eval_overlap, qa, rephrase, synthesize
from inweights.synth.text import answer_spans, fact_tokens, question_word, sentences

TEXT = ("The Bergen office opened in April 2016. It was founded by Ingrid Vassbotn.\n\n"
        "The TideLog 300 costs 1,450 euros. The Busan desk has three employees.")


def chunk(text: str = TEXT) -> Chunk:
    import hashlib

    digest = hashlib.sha256(text.encode()).hexdigest()
    return Chunk(doc_path="handbook.md", doc_sha256="d" * 64, index=0, text=text, n_tokens=40, sha256=digest)


class ScriptedTeacher:
    """Answers prompts from a function, so filters can be tested exactly."""

    id = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.calls = 0

    def complete(self, prompts, *, prefix=None, **kwargs):
        self.calls += 1
        return [self.reply(p, prefix) for p in prompts]


def test_sentences_and_fact_spans():
    assert sentences(TEXT) == ["The Bergen office opened in April 2016.", "It was founded by Ingrid Vassbotn.",
                               "The TideLog 300 costs 1,450 euros.", "The Busan desk has three employees."]
    assert answer_spans("The Bergen office opened in April 2016.", limit=2) == ["Bergen", "April 2016"]
    assert answer_spans("The TideLog 300 costs 1,450 euros.", limit=2) == ["TideLog 300", "1,450 euros"]
    assert answer_spans("It was founded by Ingrid Vassbotn.") == ["Ingrid Vassbotn"]
    assert question_word("April 2016") == "when" and question_word("1,450 euros") == "how much"
    assert question_word("85 metres") == "how many metres" and question_word("three") == "how many"
    assert question_word("Ingrid Vassbotn", "It was founded by ") == "who"
    assert fact_tokens("The TideLog 300 costs 1,450 euros.") == {"tidelog", "300", "1,450"}


def test_cloze_makes_statements_blanks_and_echo_questions():
    stats = Counter()
    examples = cloze.make(chunk(), None, SynthConfig(facts_per_sentence=1, statements=True), stats)
    prompts = {e.prompt: e.completion for e in examples}
    assert prompts["Question: Fill in the blank: The Bergen office opened in ____.\nAnswer:"] == " April 2016"
    assert prompts["Question: The Bergen office opened in when?\nAnswer:"] == " April 2016"
    assert prompts["Question: It was founded by who?\nAnswer:"] == " Ingrid Vassbotn"
    statements = [e.completion for e in examples if e.prompt == ""]
    assert statements == sentences(TEXT)
    assert stats["made"] == 4 and all(e.teacher == "none" for e in examples)
    without = cloze.make(chunk(), None, SynthConfig(facts_per_sentence=1), Counter())
    assert [e for e in examples if e.prompt] == without  # statements are off by default


def test_qa_keeps_only_round_trip_consistent_questions():
    def reply(prompt, prefix):
        if prompt.startswith("Sentence:"):  # writing a question for the given answer
            answer = prompt.split("Answer: ")[1].split("\n")[0]
            return {"April 2016": "When did the Bergen office open?",
                    "Ingrid Vassbotn": "Who founded the company Ingrid Vassbotn?",  # reveals the answer
                    "TideLog 300": "What what what what?",  # degenerate
                    "1,450 euros": "How much does the TideLog 300 cost?",
                    "three": ""}.get(answer, "When did the Bergen office open?")  # duplicate
        # answering its own question with the passage in context
        return {"Question: When did the Bergen office open?\nAnswer:": "In April 2016.",
                "Question: How much does the TideLog 300 cost?\nAnswer:": "2,000 euros"}[prompt]

    stats = Counter()
    teacher = ScriptedTeacher(reply)
    examples = qa.make(chunk(), teacher, SynthConfig(facts_per_sentence=2, questions_per_fact=1), stats)
    assert [(e.prompt, e.completion) for e in examples] == [
        ("Question: When did the Bergen office open?\nAnswer:", " April 2016")]
    # "Bergen" and "Ingrid Vassbotn" are named in their own questions; "Busan" got Bergen's question again.
    assert stats["dropped_reveals_answer"] == 2 and stats["dropped_degenerate"] == 1
    assert stats["dropped_empty"] == 1 and stats["dropped_roundtrip_mismatch"] == 1
    assert stats["dropped_duplicate"] == 1
    assert teacher.calls == 2


def test_rephrase_rejects_copies_and_invented_or_lost_facts():
    outputs = iter(["Bergen's office was opened in April 2016.",  # good
                    "The Bergen office opened in April 2016.",  # copy
                    "Ingrid Vassbotn founded it in 1999.",  # invents 1999
                    "Someone founded it.",  # loses the name
                    "It costs 1,450 euros, the TideLog 300.", "", "The Busan desk employs three people.",
                    "The Busan desk employs three people."])  # duplicate
    stats = Counter()
    examples = rephrase.make(chunk(), ScriptedTeacher(lambda p, prefix: next(outputs)),
                             SynthConfig(rephrases_per_sentence=2), stats)
    assert [e.completion for e in examples] == ["Bergen's office was opened in April 2016.",
                                                "It costs 1,450 euros, the TideLog 300.",
                                                "The Busan desk employs three people."]
    assert stats["dropped_copy_of_prompt"] == 1 and stats["dropped_invented_a_fact"] == 1
    assert stats["dropped_lost_a_fact"] == 1 and stats["dropped_empty"] == 1 and stats["dropped_duplicate"] == 1


def test_cache_reuses_results_and_regenerates_damaged_entries(tmp_path):
    config = SynthConfig(strategies=("cloze", "rephrase"), rephrases_per_sentence=1)
    teacher = ScriptedTeacher(lambda p, prefix: "A rewritten sentence with nothing new.")
    cache = ExampleCache(tmp_path)
    first, stats1 = synthesize([chunk()], teacher, config, cache, progress=False)
    assert teacher.calls == 1 and stats1["cloze"].get("chunks_from_cache", 0) == 0
    second, stats2 = synthesize([chunk()], teacher, config, cache, progress=False)
    assert teacher.calls == 1 and second == first  # nothing regenerated
    assert stats2["cloze"]["chunks_from_cache"] == 1 and stats2["rephrase"]["chunks_from_cache"] == 1
    for path in tmp_path.rglob("*.jsonl"):
        path.write_text("{broken")
    third, _ = synthesize([chunk()], teacher, config, cache, progress=False)
    assert third == first and teacher.calls == 2
    # A different teacher or setting is a different key.
    other = ScriptedTeacher(teacher.reply)
    other.id = "another-teacher"
    synthesize([chunk()], other, config, cache, progress=False)
    assert other.calls == 1


def test_duplicates_across_chunks_are_dropped_and_counted(tmp_path):
    config = SynthConfig(strategies=("cloze",))
    twice = [chunk(), chunk(TEXT + " ")]
    examples, stats = synthesize(twice, None, config, ExampleCache(tmp_path), progress=False)
    assert len(examples) == len({(e.prompt, e.completion) for e in examples})
    assert stats["cloze"]["dropped_duplicate_across_chunks"] == len(examples)


def test_leak_check_finds_question_text_in_training_data():
    examples = cloze.make(chunk(), None, SynthConfig(), Counter())
    assert_no_leak(examples, ["Who is the CEO of Fjordlight?"])
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_leak(examples, ["the Bergen office opened in when"])
    kept, dropped = drop_eval_overlap(examples, ["The Bergen office opened in when?"])
    assert dropped == 1 and len(kept) == len(examples) - 1
    assert_no_leak(kept, ["The Bergen office opened in when?"])


def test_selfstudy_seed_prompts_cover_every_type_and_answer_from_the_text():
    from inweights.synth import selfstudy

    stats = Counter()
    examples = selfstudy.make(chunk(), None, SynthConfig(), stats)
    by_prompt = {e.prompt: e.completion for e in examples}
    assert by_prompt["Question: Quick question: the Bergen office opened in when?\nAnswer:"] == " April 2016"
    assert by_prompt["Question: What do you know about Ingrid Vassbotn?\nAnswer:"] == \
        " It was founded by Ingrid Vassbotn."
    assert by_prompt['Question: What comes after this sentence: "The TideLog 300 costs 1,450 euros."\nAnswer:'] == \
        " The Busan desk has three employees."
    assert by_prompt["Question: List the facts about TideLog 300.\nAnswer:"] == \
        " - The TideLog 300 costs 1,450 euros."
    kinds = {e.strategy.split(":")[1] for e in examples}
    assert kinds == {"question", "cloze", "entity", "structure", "use", "recall", "summary"}
    assert {e.strategy.split(":")[0] for e in examples} == {"selfstudy"}
    # Every completion is a span, a sentence or sentences of the chunk: nothing is invented.
    for e in examples:
        assert all(s in sentences(TEXT) for s in sentences(e.completion)) or e.completion.strip() in TEXT
    assert sum(stats.values()) == len(examples)


def test_budget_takes_evenly_across_chunks_and_kinds_and_grows_with_the_budget():
    from inweights.synth import selfstudy, within_budget

    chunks = [chunk(TEXT), chunk("The Oslo office opened in March 2019. It employs forty people in Oslo.")]
    pool = [e for c in chunks for e in selfstudy.make(c, None, SynthConfig(), Counter())]
    words = lambda e: len((e.prompt + e.completion).split())  # noqa: E731
    small = within_budget(pool, 120, words, seed=0)
    large = within_budget(pool, 600, words, seed=0)
    assert sum(map(words, small)) >= 120 and sum(map(words, small[:-1])) < 120  # stops once the budget is spent
    assert len(large) > len(small) and set(small) <= set(pool)
    # Round-robin: the first picks cover both chunks and many kinds before any group repeats.
    first = small[:8]
    assert len({e.chunk_sha256 for e in first}) == 2 and len({e.strategy for e in first}) >= 4
    assert within_budget(pool, 120, words, seed=0) == small  # seeded
    assert within_budget(pool, None, words) == pool and within_budget(pool, 10**9, words) != []
    assert len(within_budget(pool, 10**9, words)) == len(pool)


# --- strategies for a strong teacher: free text, kept only when grounded in the chunk ------------------------


def test_invented_facts_are_numbers_and_names_the_source_lacks():
    from inweights.synth.text import invented_facts

    source = "The Bergen office opened in April 2016. It was founded by Ingrid Vassbotn."
    assert invented_facts("Because the Bergen office opened in April 2016, Ingrid Vassbotn hired staff.", source) == set()
    assert invented_facts("The Bergen office opened in May 2017 under Lars Holm.", source) == {
        "may", "2017", "lars", "holm"}
    assert invented_facts("1. Bergen opened in 2016.\n- Vassbotn founded it.", source) == set()  # list markers


def test_entigraph_relates_entity_pairs_and_drops_invented_facts():
    from inweights.synth import entigraph

    def reply(prompt, prefix):
        pair = prompt.rsplit("explain in one paragraph how ", 1)[1].split(" are related")[0]
        if "Ingrid Vassbotn" in pair and "Bergen" in pair:
            return "Ingrid Vassbotn founded the Bergen office, which opened in April 2016 as its first site."
        return f"{pair} are linked because both appear in the handbook of 1999 written by Ola Nordmann."

    stats = Counter()
    teacher = ScriptedTeacher(reply)
    examples = entigraph.make(chunk(), teacher, SynthConfig(entity_pairs=6, entity_triples=1), stats)
    assert stats["made"] == 7 and stats["dropped_invented_a_fact"] == 5  # the other five pairs: 1999, Ola Nordmann
    assert stats["dropped_duplicate"] == 1  # the triple (Bergen, April 2016, Ingrid Vassbotn) got the same text
    assert [e.completion for e in examples] == [
        "Ingrid Vassbotn founded the Bergen office, which opened in April 2016 as its first site."]
    assert examples[0].strategy == "entigraph" and examples[0].prompt == ""


def test_entigraph_reads_a_reply_that_starts_on_a_new_line_to_its_first_paragraph():
    from inweights.synth import entigraph

    text = "Ingrid Vassbotn founded the Bergen office, which opened in April 2016 as its first site."
    teacher = ScriptedTeacher(lambda prompt, prefix: f"\n{text}\n\nQuestion: something else entirely")
    examples = entigraph.make(chunk(), teacher, SynthConfig(entity_pairs=1, entity_triples=0), Counter())
    assert [e.completion for e in examples] == [text]


def test_implications_keep_grounded_items_and_rewrite_sentences_of_each_reply_first_paragraph():
    from inweights.synth import implications

    def reply(prompt, prefix):
        if prompt.startswith("Let's"):
            return ("\n1. The Bergen office has been open since April 2016.\n"
                    "2. The Bergen office was founded by Ingrid Vassbotn in 1999.\n3. Yes.\n\n"
                    "Ingrid Vassbotn chose Bergen for the office that opened in April 2016.")
        return ("In April 2016 the Bergen office opened its doors. Ingrid Vassbotn is the person who founded it.\n\n"
                "Rewritten passage: the Bergen office opened in April 2016 and was founded by Ingrid Vassbotn.")

    stats = Counter()
    examples = implications.make(chunk(), ScriptedTeacher(reply), SynthConfig(rephrases_per_sentence=1), stats)
    assert [e.completion for e in examples] == [
        "The Bergen office has been open since April 2016.", "In April 2016 the Bergen office opened its doors.",
        "Ingrid Vassbotn is the person who founded it."]
    assert stats["dropped_invented_a_fact"] == 1 and stats["dropped_too_short"] == 1


def test_active_reading_applies_the_strategies_it_proposes_or_falls_back():
    from inweights.synth import active_reading

    asked = []

    def reply(prompt, prefix):
        asked.append(prompt)
        if "study strategies" in prompt:
            return "1. Make a timeline of every date in the text.\n2. Write a short self-quiz with answers."
        return "- April 2016: the Bergen office opened its doors.\n- The TideLog 300 costs 1,450 euros, a bargain."

    stats = Counter()
    examples = active_reading.make(chunk(), ScriptedTeacher(reply), SynthConfig(study_strategies=2), stats)
    assert stats["strategies"] == 2 and "Study task: Make a timeline of every date in the text." in asked[1]
    assert len(examples) == 2 and stats["dropped_duplicate"] == 2  # both strategies wrote the same two lines
    fallback = Counter()
    active_reading.make(chunk(), ScriptedTeacher(lambda p, _: "" if "strategies" in p else "Nothing."),
                        SynthConfig(), fallback)
    assert fallback["fallback_strategies"] == 1 and fallback["strategies"] == 3
