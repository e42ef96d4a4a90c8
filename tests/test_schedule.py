"""The exposure schedule and early stopping on held-out wordings."""

from __future__ import annotations

from dataclasses import replace

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


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _train_rows(base, config, run_dir, **kwargs):
    """Train a fresh LoRA (seeded start) on the QA rows; returns the kept weights and the TrainResult."""
    rows = sft_rows(base.tokenizer, [e for e in EXAMPLES if e.prompt], 64, base.newline_id)
    torch.manual_seed(0)
    model = METHODS["lora"].attach(base.model, config)
    try:
        result = train(model, base.tokenizer, rows, len(rows), config, run_dir, progress=False, **kwargs)
        return _trainable(model), result
    finally:
        METHODS["lora"].detach(model)


def test_tail_averaging_keeps_the_mean_of_the_last_steps_weights(base, tmp_path, monkeypatch):
    config = TrainConfig(epochs=8, lr=1e-3, batch_tokens=128, max_seq_len=64, checkpoint_every=1,
                         replay_fraction=0.0)
    after_each_step: list[dict] = []
    losses = iter(range(1000, 0, -1))  # always better: the measured run keeps its last step, as a plain run does

    def record(model_, rows_, pad, batch_tokens):
        after_each_step.append(_trainable(model_))
        return next(losses)

    monkeypatch.setattr("inweights.train.validation_loss", record)
    last, plain = _train_rows(base, config, tmp_path / "plain", validation=[(0, 0)])
    monkeypatch.undo()
    steps = plain.steps
    assert steps >= 8 and len(after_each_step) == steps
    assert all(torch.equal(last[n], after_each_step[-1][n]) for n in last)

    averaged, result = _train_rows(base, replace(config, average_last=0.5), tmp_path / "avg")
    tail = after_each_step[steps - round(0.5 * steps):]
    assert result.averaged_steps == len(tail) and result.losses == plain.losses  # the same path, another point
    for name, value in averaged.items():
        expected = torch.stack([w[name] for w in tail]).mean(0)
        assert torch.allclose(value, expected, atol=1e-6), name
    assert not all(torch.allclose(averaged[n], last[n], atol=1e-6) for n in last)


def test_an_interrupted_averaging_run_resumes_to_the_same_mean(base, tmp_path, monkeypatch):
    import inweights.train as train_module

    config = TrainConfig(epochs=8, lr=1e-3, batch_tokens=128, max_seq_len=64, checkpoint_every=2,
                         replay_fraction=0.0, average_last=0.6)
    straight, result = _train_rows(base, config, tmp_path / "straight")
    average_from = result.steps - round(0.6 * result.steps)
    real_save = train_module._save_checkpoint

    def save_then_die(directory, params, optimizer, step, *args):
        real_save(directory, params, optimizer, step, *args)
        if step > average_from + 1:  # inside the averaged stretch, with two or more steps in the mean
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train_rows(base, config, tmp_path / "run")
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed, again = _train_rows(base, config, tmp_path / "run")
    assert again.resumed_from_step > average_from + 1
    assert all(torch.allclose(straight[n], resumed[n], atol=1e-6) for n in straight)


def test_tail_averaging_and_early_stopping_do_not_combine():
    with pytest.raises(ValueError, match="average_last"):
        TrainConfig(average_last=0.5, holdout=0.1)
    with pytest.raises(ValueError, match="average_last"):
        TrainConfig(average_last=1.0)
