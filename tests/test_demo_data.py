"""The shipped demo corpus and its held-out questions: well formed, answerable, and never in the training data."""

from __future__ import annotations

from transformers import AutoTokenizer

from inweights.config import SynthConfig
from inweights.corpus import chunk_documents, load_corpus
from inweights.demo import demo_dir, load_questions
from inweights.synth import ExampleCache, assert_no_leak, synthesize


def test_demo_questions_are_answerable_from_the_handbook():
    questions = load_questions(demo_dir() / "questions.jsonl")
    handbook = " ".join(p.read_text(encoding="utf-8") for p in sorted((demo_dir() / "handbook").glob("*.md")))
    assert len(questions) == 40
    for q in questions:
        assert q["question"].endswith("?") and q["answer"] in handbook
        assert isinstance(q.get("aliases", []), list)


def test_demo_training_data_never_contains_a_held_out_question(tiny_model_dir, tmp_path):
    documents = load_corpus([demo_dir() / "handbook"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    chunks = chunk_documents(documents, tokenizer, max_tokens=256)
    examples, _ = synthesize(chunks, None, SynthConfig(statements=True), ExampleCache(tmp_path), progress=False)
    assert len(examples) > 200
    assert_no_leak(examples, [q["question"] for q in load_questions(demo_dir() / "questions.jsonl")])
