"""`learn` says what it will do before it does it, and stops before a job estimated past an hour."""

from __future__ import annotations

import json

import pytest

from inweights import InweightsError, LearnConfig, SynthConfig, TrainConfig, learn
from inweights.cli import main
from inweights.corpus import Document, chunk_documents
from inweights.models import load_base
from inweights.plan import DEFAULT_TOKENS_PER_S, make_plan, sample_chunks
from inweights.store import Workspace

FACTS = ("Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. The Oslo office opened in March 2019. "
         "The TideLog 300 sensor costs 1,450 euros.\n\n")


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def test_plan_scales_a_measured_sample_to_the_corpus(base, workspace):
    documents = [Document("a.md", FACTS * 40, "x" * 64, "md")]
    chunks = chunk_documents(documents, base.tokenizer, max_tokens=64)
    config = LearnConfig(base="tiny", synth=SynthConfig(strategies=("cloze",)))
    from inweights.synth import ExampleCache, synthesize

    sampled = sample_chunks(chunks, n=4)
    examples, _ = synthesize(sampled, None, config.synth, ExampleCache(workspace / "cache"), progress=False)
    plan = make_plan(documents, chunks, config, base.tokenizer, base.fingerprint, Workspace(), (examples, sampled))
    assert plan.words == len(documents[0].text.split()) and plan.chunks == len(chunks) > 4
    per_chunk = sum(len(base.tokenizer(e.prompt + e.completion, add_special_tokens=False)["input_ids"])
                    for e in examples) / sum(len(c.text.split()) for c in sampled)
    assert plan.synthetic_tokens == pytest.approx(per_chunk * plan.words, rel=0.01)
    assert plan.tokens_per_s == DEFAULT_TOKENS_PER_S["lora"]  # nothing trained in this workspace yet
    assert plan.train_tokens == pytest.approx(plan.synthetic_tokens * plan.epochs / 0.8, rel=0.01)
    capped_config = LearnConfig(base="tiny", synth=SynthConfig(strategies=("cloze",), budget=100))
    capped = make_plan(documents, chunks, capped_config, base.tokenizer, base.fingerprint, Workspace(),
                       (examples, sampled))
    assert capped.synthetic_tokens == 100 and "estimated time" in capped.render()
    two = LearnConfig(base="tiny", synth=config.synth, train=TrainConfig(seeds=2))
    doubled = make_plan(documents, chunks, two, base.tokenizer, base.fingerprint, Workspace(), (examples, sampled))
    assert doubled.train_seconds == pytest.approx(2 * plan.train_seconds, rel=0.01)  # each seed trains it all
    assert f"{plan.epochs} epochs x 2 seeds = " in doubled.render()


def test_a_long_job_stops_before_synthesis_unless_yes(tmp_path, base, workspace, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("inweights.api.CONFIRM_ABOVE_S", 0.001)
    (tmp_path / "doc.md").write_text(FACTS)
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("cloze",)),
                         train=TrainConfig(epochs=1, replay_fraction=0.0))
    with pytest.raises(InweightsError, match="--yes"):
        learn([tmp_path / "doc.md"], "big", config, base=base)
    out = capsys.readouterr().out
    assert out.startswith("plan: 1 documents, 23 words, 1 chunks -> about "), out
    assert not list((workspace / "memories" / "big").glob("v*")) and not (workspace / "runs").exists()  # no training
    version = learn([tmp_path / "doc.md"], "big", config, base=base, yes=True, progress=False)
    assert version.version == 1
    # The next plan uses the speed measured on that run, and says so.
    learn([tmp_path / "doc.md"], "big", config, base=base, yes=True)
    manifest = json.loads((version.path / "manifest.json").read_text())
    assert f"at {manifest['training']['tokens_per_s']:.0f} tokens/s (measured when big@1 was trained)" in \
        capsys.readouterr().out


def test_cli_exits_2_with_the_plan_and_a_hint(tmp_path, workspace, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("inweights.api.CONFIRM_ABOVE_S", 0.001)
    (tmp_path / "doc.md").write_text(FACTS)
    code = main(["learn", str(tmp_path), "--memory", "big", "--base", str(tiny_model_dir), "--epochs", "1"])
    captured = capsys.readouterr()
    assert code == 2 and "plan:" in captured.out
    assert captured.err.startswith("error: this would take about") and "--yes" in captured.err


def test_the_plan_counts_the_guards_one_time_work():
    from inweights.guard import TARGET_SECONDS, TEXT_SECONDS
    from inweights.plan import guard_seconds

    train = TrainConfig(replay_sequences=1024, replay_fraction=0.2, epochs=3)
    assert guard_seconds(train, 700, True, 1024) == 0.0  # written and every row cached
    drawn = guard_seconds(train, 700, True, 0) / TARGET_SECONDS
    assert 400 < drawn < 450  # 525 draws with replacement from 1,024 rows: about 410 distinct
    assert guard_seconds(train, 700, True, 512) == pytest.approx(drawn * TARGET_SECONDS / 2)
    assert guard_seconds(train, 700, False, 0) == pytest.approx(1024 * TEXT_SECONDS + drawn * TARGET_SECONDS)
    assert guard_seconds(TrainConfig(replay_fraction=0.0), 700, False, 0) == 0.0
