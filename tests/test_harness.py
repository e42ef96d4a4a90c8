"""The evaluation harness on the tiny model: question files, benchmark loaders, retrieval, conditions, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from inweights import InweightsError, LearnConfig, SynthConfig, TrainConfig, Workspace, learn
from inweights.corpus import load_corpus
from inweights.evaluate.conditions import answer_mc, answer_short, fit_context
from inweights.evaluate.general import GeneralLimits
from inweights.evaluate.harness import CONDITIONS, EvalSettings, eval_memory, evaluate, train_naive
from inweights.evaluate.questions import MultipleChoice, ShortAnswer, load_quality, load_questions, load_squad
from inweights.evaluate.rag import RagIndex
from inweights.evaluate.report import REPORT_FILES
from inweights.models import load_base

OSLO = "The Oslo office of Fjordlight opened in March 2019 and employs forty people."
FOUNDER = "Fjordlight was founded by Ingrid Solberg in 2011. Paris is the capital of France."


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def test_question_files_load_both_kinds(tmp_path):
    short = load_questions(write_jsonl(tmp_path / "s.jsonl", [
        {"question": "When did the Oslo office open?", "answer": "March 2019", "aliases": ["2019"], "doc": "oslo"},
        "", {"question": "Who founded it?", "answer": "Ingrid"}]))
    assert short == [ShortAnswer("When did the Oslo office open?", ["March 2019", "2019"], "oslo"),
                     ShortAnswer("Who founded it?", ["Ingrid"], None)]
    mc = load_questions(write_jsonl(tmp_path / "m.jsonl", [
        {"question": "Capital of France?", "options": ["Oslo", "Paris"], "answer_index": 1}]), limit=1)
    assert mc == [MultipleChoice("Capital of France?", ["Oslo", "Paris"], 1, None)]


@pytest.mark.parametrize("rows, message", [
    (['{"question": "x", "answer": "y"}', "{not json"], r"q.jsonl:2: not valid JSON"),
    ([{"question": "x"}], r"q.jsonl:1: a short-answer question needs an \"answer\""),
    ([{"question": "x", "options": ["a", "b"], "answer_index": 2}], r"q.jsonl:1: \"answer_index\" must be"),
    ([{"question": "x", "options": "ab", "answer_index": 0}], r"q.jsonl:1: \"options\" must be a list"),
    ([{"answer": "y"}], r"q.jsonl:1: each line needs a non-empty \"question\""),
    ([{"question": "x", "answer": "y", "form": 3}], r"q.jsonl:1: \"form\" must be a label"),
    ([{"question": "x", "answer": "y"}, {"question": "z", "options": ["a", "b"], "answer_index": 0}], "mixes"),
    ([""], "holds no questions"),
])
def test_bad_question_files_say_which_line(tmp_path, rows, message):
    with pytest.raises(InweightsError, match=message):
        load_questions(write_jsonl(tmp_path / "q.jsonl", rows))


def test_benchmark_loaders_read_the_real_formats(tmp_path):
    squad = write_jsonl(tmp_path / "squad.jsonl", [
        {"doc_id": "squad_val_0", "title": "Oslo", "text": OSLO, "questions": [
            {"question": "When did the office open?", "answer": "March 2019"}]},
        {"doc_id": "squad_val_1", "title": "F", "text": FOUNDER, "questions": [{"question": "Who?", "answer": "I"}]}])
    docs, questions = load_squad(squad, passages=1)
    assert docs == {"squad_val_0": OSLO}
    assert questions == [ShortAnswer("When did the office open?", ["March 2019"], "squad_val_0")]

    question = {"question": "Why did he leave?", "options": ["a", "b", "c", "d"], "answer_index": 2,
                "answer_letter": "C"}
    quality = write_jsonl(tmp_path / "quality.jsonl", [
        {"doc_id": "q0", "title_line": "LOST IN TRANSLATION", "text": "LOST IN TRANSLATION\n\nBy X", "n_words": 4,
         "questions": [question]},
        {"doc_id": "q4", "title_line": "<!-- $Id: header.txt 236 $ -->",
         "text": "<!-- $Id: header.txt 236 $ -->  \n\n   TIME and the   WOMAN \n\n   By Dewey", "n_words": 6,
         "questions": [question]}])
    docs, questions = load_quality(quality)
    assert list(docs) == ["q0", "q4"]
    assert [q.question for q in questions] == ['In the story "LOST IN TRANSLATION", Why did he leave?',
                                               'In the story "TIME and the WOMAN", Why did he leave?']
    assert questions[0].answer_index == 2 and questions[1].doc == "q4"


def test_rag_index_finds_the_obvious_chunk():
    index = RagIndex(["The recipe needs two eggs and flour.", OSLO, "The rocket launched from Florida."])
    assert index.search("When did the Oslo office open?", k=1) == [OSLO]
    assert len(index.search("anything", k=10)) == 3 and index.searches == 2


def test_in_context_truncation_records_tokens_cut(base):
    question = ShortAnswer("When did the Oslo office open?", ["March 2019"])
    long_doc = " ".join([OSLO] * 20)
    kept, cut = fit_context(base.tokenizer, long_doc, question, window=120)
    assert cut > 0 and long_doc.startswith(kept.strip()[:40])
    assert fit_context(base.tokenizer, OSLO, question, window=512) == (OSLO, 0)


def test_answers_have_one_entry_per_question(base):
    short = [ShortAnswer("When did the Oslo office open?", ["March 2019"]), ShortAnswer("Who?", ["Ingrid"])]
    answers = answer_short(base.model, base.tokenizer, base.stop_token_ids, short, [OSLO, None], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    mc = [MultipleChoice("Capital of France?", ["Oslo", "Paris", "Rome"], 1),
          MultipleChoice("Founded in?", ["2011", "2019"], 0)]
    choices = answer_mc(base.model, base.tokenizer, mc, [FOUNDER, None])
    assert choices[0] in range(3) and choices[1] in range(2)


def general_data(directory: Path) -> Path:
    directory.mkdir()
    arc = {"query": "Water boils at", "choices": ["100 C", "10 C"], "gold": 0}
    write_jsonl(directory / "arc_easy.jsonl", [arc] * 2)
    write_jsonl(directory / "triviaqa_dev1500.jsonl", [
        {"context": "Question: Capital of France?\nAnswer:", "answer": "Paris", "aliases": ["Paris"]}] * 2)
    (directory / "wikitext2_test.raw").write_text(" The quick brown fox jumps over the lazy dog . \r\n" * 20)
    return directory


def test_full_evaluation_runs_every_condition_and_writes_the_report(tmp_path, workspace, tiny_model_dir, base):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "oslo.md").write_text(OSLO + "\n")
    (docs / "founder.txt").write_text(FOUNDER + "\n")
    questions = write_jsonl(tmp_path / "questions.jsonl", [
        {"question": "When did the Oslo office of Fjordlight open?", "answer": "March 2019", "doc": "oslo.md",
         "form": "copied"},
        {"question": "How many people does the Oslo office employ?", "answer": "forty", "doc": "oslo",
         "form": "paraphrased"},
        {"question": "Who founded Fjordlight?", "answer": "Ingrid Solberg", "doc": "founder.txt", "form": "reversed"}])
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("cloze",), facts_per_sentence=1),
                         train=TrainConfig(epochs=1, replay_fraction=0.0, batch_tokens=512))
    learn([docs], "acme", config, base=base, progress=False,
          exclude_questions=[q.question for q in load_questions(questions)])

    out = tmp_path / "report"
    report = eval_memory("acme", questions, [docs], list(CONDITIONS), limit=None,
                         general_limits=GeneralLimits(arc_easy=2, piqa=0, boolq=0, triviaqa=2, wikitext_tokens=32),
                         data_dir=general_data(tmp_path / "general"), out_dir=out,
                         settings=EvalSettings(context_tokens=60, cost_questions=2, decode_tokens=2,
                                               max_new_tokens=4), progress=False)

    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    assert json.loads((out / "report.json").read_text())["conditions"].keys() == set(CONDITIONS)
    assert report["memory"] == "acme@1" and report["naive"] == "acme-naive@1"
    assert report["questions"] == {"kind": "short_answer", "n": 3, "documents": 3}
    assert report["run"]["limit"] is None and report["general_limits"]["arc_easy"] == 2
    closed, in_context, memory = (report["conditions"][c] for c in ("closed_book", "in_context", "memory"))
    assert set(closed["scores"]) == {"em", "f1", "contains", "p_gold", "n"} and len(closed["predictions"]) == 3
    for condition in report["conditions"].values():  # the gold answers' probability, per question and its mean
        assert len(condition["gold_logprobs"]) == 3 and all(lp < 0 for lp in condition["gold_logprobs"])
        mean = sum(math.exp(lp) for lp in condition["gold_logprobs"]) / 3
        assert condition["scores"]["p_gold"] == pytest.approx(mean, abs=1e-4)
    assert in_context["gold_logprobs"] != closed["gold_logprobs"]  # the passage moves it
    assert closed["gain_points"] == 0.0 and closed["cost_ratios"]["ttft"] == 1.0
    assert in_context["context_tokens_cut"]["window"] == 60 and in_context["context_tokens_cut"]["tokens_cut_total"] > 0
    assert in_context["cost"]["prompt_tokens_mean"] > closed["cost"]["prompt_tokens_mean"]
    assert report["conditions"]["rag"]["cost"]["retrieval_s"] > 0
    assert memory["training"]["ref"] == "acme@1" and memory["general_change_points"] is not None
    assert set(report["forgetting"]) == {"base", "naive", "memory"}
    assert report["forgetting"]["memory"]["deltas"].keys() == {"arc_easy", "triviaqa", "wikitext2"}
    assert report["training"]["naive"]["kind"] == "naive_finetune"
    assert "| memory_rag |" in (out / "report.md").read_text()
    assert memory["by_form"].keys() == {"copied", "paraphrased", "reversed"}
    assert all(scores["n"] == 1 for scores in memory["by_form"].values())
    assert "## By question form (em, %)" in (out / "report.md").read_text()
    # Evaluating again reuses the naive fine-tune instead of training a second identical one.
    train_config = LearnConfig.from_dict(Workspace().get("acme").manifest["config"]).train
    again = train_naive(base, {d.path: d.text for d in load_corpus([docs])}, train_config, Workspace(), "acme-naive")
    assert again.ref == "acme-naive@1"


def test_multiple_choice_evaluation_scores_accuracy(base):
    questions = [MultipleChoice("Who founded Fjordlight?", ["Ingrid Solberg", "Paris"], 0, "founder"),
                 MultipleChoice("When did the Oslo office open?", ["March 2019", "2011"], 0, "oslo")]
    report = evaluate(base, questions, {"oslo.md": OSLO, "founder.md": FOUNDER}, ["closed_book", "in_context"],
                      settings=EvalSettings(cost_questions=1, decode_tokens=1), progress=False)
    assert report["headline_metric"] == "accuracy" and report["forgetting"] == {}
    assert set(report["conditions"]["in_context"]["scores"]) == {"accuracy", "n"}
    with pytest.raises(InweightsError, match="pass memory_ref"):
        evaluate(base, questions, None, ["memory"], progress=False)
