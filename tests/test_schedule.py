"""The exposure schedule and early stopping on held-out wordings."""

from __future__ import annotations

import pytest
import torch

from inweights.config import MIN_EPOCHS, TrainConfig, resolve_train
from inweights.methods import METHODS
from inweights.models import load_base
from inweights.synth import Example, hold_out_wordings, items_per_fact
from inweights.objectives import sft_rows
from inweights.train import train


def ex(prompt: str, answer: str, chunk: str = "c") -> Example:
    return Example(prompt, " " + answer, "facts:question", chunk, "d", "e", "none")


EXAMPLES = [ex("Question: When did X open?\nAnswer:", "2019"), ex("Question: X opened when?\nAnswer:", "2019"),
            ex("Question: Fill in the blank: X opened in ____.\nAnswer:", "2019"),
            ex("Question: Who founded X?\nAnswer:", "Ann"), ex("Question: Ann founded what?\nAnswer:", "X"),
            ex("", "X opened in 2019.")]


def test_items_per_fact_and_exposures_set_the_epochs():
    assert items_per_fact(EXAMPLES) == pytest.approx(5 / 3)  # three facts, five questions; plain text is no fact
    assert items_per_fact([EXAMPLES[-1]]) is None
    assert resolve_train(TrainConfig(exposures=10), 500, items_per_fact=2.5).epochs == 4
    assert resolve_train(TrainConfig(exposures=1000), 500, items_per_fact=2.0).epochs == 30  # capped
    assert resolve_train(TrainConfig(exposures=10, epochs=2), 500, items_per_fact=2.5).epochs == 2
    assert resolve_train(TrainConfig(), 200, items_per_fact=2.5).epochs == 4  # the size rule without exposures


def test_the_size_rule_gives_small_corpora_more_passes_and_large_ones_no_fewer_than_three():
    epochs = [resolve_train(TrainConfig(), n).epochs for n in (1, 20, 200, 500, 1_000, 1_200, 2_000, 100_000)]
    assert epochs == [6, 6, 4, 3, 3, 3, 3, 3]
    assert epochs[-1] == MIN_EPOCHS


def test_hold_out_takes_one_wording_of_facts_asked_several_ways():
    kept, held = hold_out_wordings(EXAMPLES, share=0.49, seed=1)
    assert len(kept) + len(held) == len(EXAMPLES) and held
    for h in held:  # a held-out question's fact is still trained under another wording
        assert h.completion == " 2019" and any(k.completion == " 2019" and k.prompt for k in kept)
    assert hold_out_wordings(EXAMPLES, share=0.49, seed=1) == (kept, held)  # seeded
    assert hold_out_wordings(EXAMPLES, share=0.0)[1] == []


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def test_training_stops_when_the_held_out_loss_stops_improving_and_keeps_the_best(base, tmp_path, monkeypatch):
    rows = sft_rows(base.tokenizer, [e for e in EXAMPLES if e.prompt], 64, base.newline_id)
    config = TrainConfig(epochs=40, lr=1e-3, batch_tokens=256, max_seq_len=64, checkpoint_every=2, patience=2,
                         replay_fraction=0.0)
    model = METHODS["lora"].attach(base.model, config)
    measured: list[dict] = []
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0])

    def fake_loss(model_, rows_, pad, batch_tokens):
        measured.append({n: p.detach().clone() for n, p in model_.named_parameters() if p.requires_grad})
        return next(losses)

    monkeypatch.setattr("inweights.train.validation_loss", fake_loss)
    try:
        result = train(model, base.tokenizer, rows, len(rows), config, tmp_path / "run", progress=False,
                       validation=rows[:1])
        assert result.validation == [(2, 3.0), (4, 2.0), (6, 2.5), (8, 2.6)]
        assert result.stopped_early and result.best_step == 4
        final = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(torch.equal(final[n], measured[1][n]) for n in final)  # the weights of step 4
        assert not all(torch.equal(final[n], measured[3][n]) for n in final)
    finally:
        METHODS["lora"].detach(model)
