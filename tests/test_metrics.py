"""Known-answer tests for the answer metrics, option scoring, perplexity and the general (forgetting) suite."""

from __future__ import annotations

import json
import math

import pytest
import torch

from inweights.errors import InweightsError
from inweights.evaluate.general import (
    GeneralLimits,
    compare,
    general_suite,
    load_multiple_choice,
    load_triviaqa,
    load_wikitext,
)
from inweights.evaluate import metrics
from inweights.evaluate.metrics import (
    alias_match,
    choose,
    contains,
    exact_match,
    f1,
    normalize_answer,
    option_logliks,
    perplexity,
)
from inweights.models import load_base


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_base(str(tiny_model_dir))


# --- string metrics ---------------------------------------------------------------------------------------


def test_normalize_answer_matches_squad():
    assert normalize_answer("The  Quick, Brown-Fox!") == "quick brownfox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theory of the Atom") == "theory of atom"  # "the" only as a whole word
    assert normalize_answer("  ") == ""


def test_exact_match():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    assert exact_match("March 2019", ["April", "march, 2019"]) == 1.0
    assert exact_match("March", ["April", "May"]) == 0.0


def test_f1():
    assert f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))
    assert f1("Paris", "Paris!") == 1.0
    assert f1("London", "Paris") == 0.0
    assert f1("", "Paris") == 0.0
    assert f1("red red", "red") == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # counts are clipped, as in SQuAD
    assert f1("cat sat", ["dog", "the cat"]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_contains_is_whole_word():
    assert contains("It opened in March 2019.", "march 2019") == 1.0
    assert contains("It opened in 1990", "1") == 0.0
    assert contains("a party", "art") == 0.0
    assert contains("anything", "The") == 0.0  # normalises to nothing: never matches
    assert contains("Founded by Ingrid Solberg", ["Olaf", "ingrid solberg"]) == 1.0


def test_alias_match():
    aliases = ["Onion", "Allium cepa", "Bulb onions"]
    assert alias_match("onion", aliases) == 1.0
    assert alias_match("An onion, of course.", aliases) == 1.0
    assert alias_match("the allium cepa plant", aliases) == 1.0
    assert alias_match("Onionskin", aliases) == 0.0
    assert alias_match("garlic", aliases) == 0.0
    with pytest.raises(ValueError):
        alias_match("onion", [])


def test_choose():
    logliks = [(-6.0, 3), (-4.0, 1), (-5.0, 5)]
    assert choose(logliks, normalize=False) == 1
    assert choose(logliks, normalize=True) == 2
    assert choose([(-1.0, 1), (-1.0, 1)]) == 0  # ties go to the first option


# --- model metrics ----------------------------------------------------------------------------------------


def _direct_loglik(model, tokenizer, context: str, option: str) -> tuple[float, int]:
    """Sum of option-token log-probs from one unpadded forward pass over the concatenated ids."""
    ctx = tokenizer(context)["input_ids"]
    sep = "" if context[-1:].isspace() else " "
    opt = tokenizer(sep + option.lstrip(), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + opt])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total = sum(float(logprobs[p - 1, ids[0, p]]) for p in range(len(ctx), len(ctx) + len(opt)))
    return total, len(opt)


def test_option_logliks_match_direct_computation(tiny):
    contexts = ["Question: When did the office open?\nAnswer:", "Paris is the capital of ", "The quick"]
    options = [
        ["March 2019", "in the year two thousand and eleven", "42"],
        ["France", "the company founded by Ingrid Solberg", "Oslo"],
        ["brown fox", "dog", " lazy dog jumps over the brown fox"],
    ]
    got = option_logliks(tiny.model, tiny.tokenizer, contexts, options, batch_size=4)
    lengths = set()
    for context, opts, scores in zip(contexts, options, got):
        assert len(scores) == len(opts)
        for option, (total, n) in zip(opts, scores):
            want_total, want_n = _direct_loglik(tiny.model, tiny.tokenizer, context, option)
            assert n == want_n
            assert total == pytest.approx(want_total, abs=1e-4)
            lengths.add(n)
    assert len(lengths) >= 3  # options of different lengths, so batches are padded


def test_answer_logliks_take_the_likeliest_gold_answer_after_the_answer_prompt(tiny):
    from inweights.evaluate.conditions import answer_logliks, gold_summary
    from inweights.evaluate.questions import ShortAnswer
    from inweights.prompt import qa_prompt, render

    questions = [ShortAnswer("When did the office open?", ["March 2019", "2019", " 2019 "], "a"),
                 ShortAnswer("Who founded it?", ["Ingrid Solberg"], "a")]
    contexts = [None, "Ingrid Solberg founded the office."]
    got = answer_logliks(tiny.model, tiny.tokenizer, questions, contexts)
    for q, c, (total, n) in zip(questions, contexts, got):
        prompt = render(tiny.tokenizer, qa_prompt(q.question, c))
        want = max((_direct_loglik(tiny.model, tiny.tokenizer, prompt, a.strip()) for a in q.answers),
                   key=lambda s: s[0])
        assert n == want[1] and total == pytest.approx(want[0], abs=1e-4)
    summary = gold_summary([(math.log(0.5), 2), (math.log(0.1), 1)])
    assert summary["p_gold"] == pytest.approx(0.3)
    assert summary["nll_per_token"] == pytest.approx((math.log(2) / 2 + math.log(10)) / 2)
    assert summary["n"] == 2


def test_option_logliks_shared_prefix_equals_plain_scoring(tiny, monkeypatch):
    """A story asked several questions: the shared-prefix path (one prefill, cache copied per batch) gives the
    plain path's numbers. The story is longer than the tiny model's 64-token sliding window, so the earliest
    continuation tokens need cache entries a sliding-window cache would have dropped."""
    story = " ".join(f"Ingrid Solberg opened office {i} in Oslo in {1990 + i}." for i in range(30))
    contexts = [f"{story}\n\nQuestion: {q}\nAnswer:" for q in ("Who opened the offices?", "Where?", "When?")]
    contexts.append("A short unrelated prompt:")
    options = [["Ingrid Solberg", "a lazy dog", "Oslo"], ["Oslo", "Paris"], ["in 1990", "never", "1995 or so"],
               ["yes", "no"]]
    assert len(tiny.tokenizer(story)["input_ids"]) > 3 * 64
    plain = option_logliks(tiny.model, tiny.tokenizer, contexts, options, batch_size=2, shared_prefix=0)
    prefixes = []
    real = metrics._prefix_cache
    monkeypatch.setattr(metrics, "_prefix_cache", lambda m, ids, d: prefixes.append(ids) or real(m, ids, d))
    shared = option_logliks(tiny.model, tiny.tokenizer, contexts, options, batch_size=2, shared_prefix=32)
    assert len(prefixes) == 1 and len(prefixes[0]) > 3 * 64  # the story ran once, the short prompt plainly
    for want, got in zip(plain, shared):
        assert [n for _, n in got] == [n for _, n in want]
        assert [t for t, _ in got] == pytest.approx([t for t, _ in want], abs=1e-4)
    for context, opts, scores in zip(contexts[:1], options, shared):  # and both equal the one-by-one truth
        assert [t for t, _ in scores] == pytest.approx(
            [_direct_loglik(tiny.model, tiny.tokenizer, context, o)[0] for o in opts], abs=1e-4)


def test_option_logliks_through_peft_wrapper(tiny, tiny_model_dir):
    peft = pytest.importorskip("peft")
    fresh = load_base(str(tiny_model_dir))  # get_peft_model edits the model in place: keep `tiny` clean
    wrapped = peft.get_peft_model(fresh.model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    contexts, options = ["Paris is the capital of"], [["France", "the lazy dog"]]
    want = option_logliks(tiny.model, tiny.tokenizer, contexts, options)
    got = option_logliks(wrapped, fresh.tokenizer, contexts, options)  # LoRA starts as a no-op
    assert [n for _, n in got[0]] == [n for _, n in want[0]]
    assert [t for t, _ in got[0]] == pytest.approx([t for t, _ in want[0]], abs=1e-5)


def test_option_logliks_boundary_tokenization(tiny):
    tok = tiny.tokenizer
    [[(_, n_space), (_, n_plain)]] = option_logliks(tiny.model, tok, ["Paris is"], [["France", " France"]])
    assert n_space == n_plain == len(tok(" France", add_special_tokens=False)["input_ids"])
    [[(_, n_after_space)]] = option_logliks(tiny.model, tok, ["Paris is "], [["France"]])
    assert n_after_space == len(tok("France", add_special_tokens=False)["input_ids"])


def test_perplexity_equals_exp_loss_on_one_window(tiny):
    tok, model = tiny.tokenizer, tiny.model
    text = "The Oslo office of Fjordlight opened in March 2019 and employs forty people."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    input_ids = torch.tensor([ids])
    want = math.exp(float(model(input_ids=input_ids, labels=input_ids).loss))
    assert perplexity(model, tok, text, max_tokens=1024, window=512) == pytest.approx(want, rel=1e-5)


def test_perplexity_windows_are_independent(tiny):
    tok, model = tiny.tokenizer, tiny.model
    text = "Paris is the capital of France. Water boils at one hundred degrees. The quick brown fox."
    ids = tok(text, add_special_tokens=False)["input_ids"][:12]
    bos = tok.bos_token_id
    nll = 0.0
    for chunk in (ids[:5], ids[5:10], ids[10:]):  # window 6 = BOS + 5 text tokens
        x = torch.tensor([[bos] + chunk])
        nll += float(model(input_ids=x, labels=x).loss) * len(chunk)
    assert perplexity(model, tok, text, max_tokens=12, window=6) == pytest.approx(math.exp(nll / 12), rel=1e-5)


# --- general suite ----------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def general_dir(tmp_path):
    mc = [
        {"query": "Question: What is the capital of France?", "choices": ["Paris", "Oslo", "the lazy dog"], "gold": 0},
        {"query": "Question: When did the office open?\n", "choices": ["March 2019", "2011"], "gold": 0},
        {"query": "Question: What boils at one hundred degrees?", "choices": ["fox", "Water", "dog", "42"], "gold": 1},
        {"query": "Question: Who founded the company?", "choices": ["Ingrid Solberg", "nobody"], "gold": 0},
    ]
    for name in ("arc_easy.jsonl", "piqa.jsonl", "boolq_500.jsonl"):
        _write_jsonl(tmp_path / name, mc)
    _write_jsonl(tmp_path / "triviaqa_dev1500.jsonl", [
        {"context": "Question: What is the capital of France?\nAnswer:", "answer": "Paris",
         "aliases": ["Paris", "Paree"]},
        {"context": "Question: Who founded the company?\nAnswer:", "answer": "Ingrid Solberg", "aliases": ["Solberg"]},
        {"context": "Question: When did the office open?\nAnswer:", "answer": "March 2019", "aliases": []},
        {"context": "Question: How many people work there?\nAnswer:", "answer": "forty", "aliases": ["40"]},
    ])
    (tmp_path / "wikitext2_test.raw").write_bytes(
        b" = Fjordlight = \r\n\r\n The Oslo office of Fjordlight opened in March 2019 .\r\n" * 20
    )
    return tmp_path


def test_loaders(general_dir):
    items = load_multiple_choice(general_dir / "piqa.jsonl", limit=2)
    assert [item["gold"] for item in items] == [0, 0]
    assert items[0] == {"query": "Question: What is the capital of France?",
                        "choices": ["Paris", "Oslo", "the lazy dog"], "gold": 0}
    assert len(load_multiple_choice(general_dir / "piqa.jsonl")) == 4
    trivia = load_triviaqa(general_dir / "triviaqa_dev1500.jsonl", limit=3)
    assert [t["answer"] for t in trivia] == ["Paris", "Ingrid Solberg", "March 2019"]
    assert trivia[1]["aliases"] == ["Solberg", "Ingrid Solberg"]  # the answer counts as an alias
    text = load_wikitext(general_dir / "wikitext2_test.raw")
    assert "\r" not in text and text.startswith(" = Fjordlight = \n\n")


def test_loaders_report_bad_input(tmp_path):
    with pytest.raises(InweightsError, match="missing"):
        load_multiple_choice(tmp_path / "nope.jsonl", 3)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "choices": ["a"], "gold": 3}])
    with pytest.raises(InweightsError, match="bad.jsonl:1"):
        load_multiple_choice(bad, 3)
    with pytest.raises(InweightsError, match="arc_easy"):
        GeneralLimits(arc_easy=-1)


def test_general_suite_on_tiny_model(tiny, general_dir):
    limits = GeneralLimits(arc_easy=3, piqa=3, boolq=3, triviaqa=3, wikitext_tokens=40)
    report = general_suite(tiny.model, tiny.tokenizer, general_dir, limits, tiny.stop_token_ids,
                           batch_size=2, progress=False)
    assert list(report) == ["arc_easy", "piqa", "boolq", "triviaqa", "wikitext2"]
    for task in ("arc_easy", "piqa", "boolq"):
        assert set(report[task]) == {"acc", "acc_norm", "n", "correct"}
        assert report[task]["n"] == 3
        assert 0.0 <= report[task]["acc"] <= 1.0 and 0.0 <= report[task]["acc_norm"] <= 1.0
        assert len(report[task]["correct"]) == 3 and report[task]["correct"].count("1") == 3 * report[task]["acc"]
    assert report["arc_easy"] == report["piqa"] == report["boolq"]  # same items, same scores
    assert report["triviaqa"]["n"] == 3 and 0.0 <= report["triviaqa"]["match"] <= 1.0
    assert report["triviaqa"]["correct"].count("1") == 3 * report["triviaqa"]["match"]
    assert report["wikitext2"]["tokens"] == 40 and report["wikitext2"]["ppl"] > 1.0
    assert json.loads(json.dumps(report)) == report  # plain JSON


def test_general_suite_skips_zero_limits(tiny, general_dir):
    limits = GeneralLimits(arc_easy=0, piqa=2, boolq=0, triviaqa=0, wikitext_tokens=0)
    report = general_suite(tiny.model, tiny.tokenizer, general_dir, limits, tiny.stop_token_ids, progress=False)
    assert list(report) == ["piqa"] and report["piqa"]["n"] == 2


def test_compare():
    base = {"arc_easy": {"acc": 0.50, "acc_norm": 0.55, "n": 200}, "triviaqa": {"match": 0.20, "n": 200},
            "wikitext2": {"ppl": 20.0, "tokens": 1024}, "piqa": {"acc": 0.6, "acc_norm": 0.6, "n": 200}}
    other = {"arc_easy": {"acc": 0.485, "acc_norm": 0.56, "n": 200}, "triviaqa": {"match": 0.15, "n": 200},
             "wikitext2": {"ppl": 22.0, "tokens": 1024}}
    deltas = compare(base, other)
    assert list(deltas) == ["arc_easy", "triviaqa", "wikitext2"]  # piqa is only in base
    assert deltas["arc_easy"]["acc_points"] == pytest.approx(-1.5)
    assert deltas["arc_easy"]["acc_norm_points"] == pytest.approx(1.0)
    assert deltas["triviaqa"] == {"match_points": pytest.approx(-5.0)}
    assert deltas["wikitext2"] == {"ppl_pct": pytest.approx(10.0)}
    with pytest.raises(InweightsError, match="same limits"):
        compare(base, {"arc_easy": {"acc": 0.5, "acc_norm": 0.5, "n": 100}})


def test_compare_counts_the_items_lost_and_gained_where_both_runs_marked_them():
    base = {"boolq": {"acc": 0.6, "acc_norm": 0.6, "n": 5, "correct": "11100"},
            "triviaqa": {"match": 0.4, "n": 5, "correct": "11000"}}
    other = {"boolq": {"acc": 0.4, "acc_norm": 0.4, "n": 5, "correct": "10010"},
             "triviaqa": {"match": 0.4, "n": 5}}  # an older report without marks
    deltas = compare(base, other)
    assert deltas["boolq"]["acc_points"] == pytest.approx(-20.0)
    assert (deltas["boolq"]["lost"], deltas["boolq"]["gained"]) == (2, 1)
    assert "lost" not in deltas["triviaqa"]
