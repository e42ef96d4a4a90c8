"""Slow tests: the real embedded gemma-3-270m (converted once and cached in ~/.inweights/models)."""

from __future__ import annotations

import pytest

from inweights import LearnConfig, SynthConfig, TrainConfig, learn, load_memory
from inweights.evaluate.metrics import perplexity
from inweights.models import load_base

pytestmark = pytest.mark.slow

DOC = """Fjordlight Instruments was founded by Ingrid Vassbotn in 2009.
The Bergen office of Fjordlight Instruments opened in April 2016.
The TideLog 300 sensor costs 1,450 euros.
"""


@pytest.fixture(scope="module")
def gemma():
    return load_base()  # the embedded default


def test_embedded_model_loads_from_cache_and_answers_closed_book(gemma):
    assert gemma.fingerprint.startswith("sha256:")
    assert gemma.stop_token_ids == [1, 106, 107, 108]  # EOS, end of turn, newline, blank line
    loaded = load_memory(None, base=gemma)
    assert loaded.answer(["What is the capital of France?"])[0].startswith("Paris")


def test_learn_a_tiny_corpus_on_the_real_model(gemma, tmp_path, monkeypatch):
    monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / "home"))
    (tmp_path / "doc.md").write_text(DOC)
    config = LearnConfig(synth=SynthConfig(),  # the default strategy: natural questions from the parser
                         train=TrainConfig(epochs=4, lr=1e-3, replay_sequences=8, rank=8))
    version = learn([tmp_path / "doc.md"], "fjord", config, base=gemma, progress=False)
    manifest = version.manifest
    assert manifest["base"]["name"] == "gemma-3-270m" and manifest["synthetic"]["examples"] >= 9
    loaded = load_memory("fjord", base=gemma)
    try:
        answers = loaded.answer(["Who founded Fjordlight Instruments?", "When did the Bergen office open?"])
        text = "a b c " * 50 + "The river flows to the sea. " * 10
        assert perplexity(loaded.model, gemma.tokenizer, text) > 1.0
    finally:
        loaded.close()
    # Four passes over nine sentences of facts are enough for the real model to take at least one in.
    assert "Vassbotn" in answers[0] or "2016" in answers[1], answers
