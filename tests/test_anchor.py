"""The activation anchor: its value is the measured relative change of the LoRA layers' outputs on the general
text, it is zero on a fresh LoRA, and training with it changes those outputs less than training without it."""

from __future__ import annotations

import pytest
import torch

from inweights.anchor import Anchor
from inweights.config import TrainConfig
from inweights.methods import METHODS
from inweights.models import load_base
from inweights.train import train

GENERAL = [[2, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13, 14], [2, 20, 21, 22, 23, 24]]


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def _measured_change(model, sequences) -> float:
    """Mean over LoRA layers of sum ||delta y||^2 / sum ||W x||^2 over the sequences' tokens, from the inputs."""
    from peft.tuners.lora import LoraLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    inputs: dict[str, list] = {n: [] for n, _ in layers}
    hooks = [m.base_layer.register_forward_pre_hook(lambda mod, args, n=n: inputs[n].append(args[0].reshape(-1, args[0].shape[-1])))
             for n, m in layers]
    with torch.no_grad(), model.disable_adapter():
        for s in sequences:
            model(input_ids=torch.tensor([s]))
    for h in hooks:
        h.remove()
    ratios = []
    with torch.no_grad():
        for n, m in layers:
            x = torch.cat(inputs[n])
            delta = m.lora_B["default"](m.lora_A["default"](x)) * m.scaling["default"]
            ratios.append(float(delta.square().sum() / m.base_layer(x).square().sum()))
    return sum(ratios) / len(ratios)


def _move_lora(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def test_anchor_is_the_relative_output_change_on_general_text(base):
    model = METHODS["lora"].attach(base.model, TrainConfig())
    try:
        anchor = Anchor(model, GENERAL, weight=3.0, pad_id=base.tokenizer.pad_token_id)
        assert float(anchor().detach()) == 0.0  # LoRA starts with B = 0: no change yet
        _move_lora(model)
        value = anchor()
        assert value.requires_grad
        assert float(value.detach()) == pytest.approx(3.0 * _measured_change(model, GENERAL), rel=1e-4)
        value.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
                   if p.requires_grad and "lora_" in n)
    finally:
        METHODS["lora"].detach(model)


def test_anchor_needs_lora_and_general_text(base):
    with pytest.raises(ValueError, match="LoRA"):
        Anchor(base.model, GENERAL, weight=1.0, pad_id=0)
    model = METHODS["lora"].attach(base.model, TrainConfig())
    try:
        with pytest.raises(ValueError, match="general text"):
            Anchor(model, [], weight=1.0, pad_id=0)
    finally:
        METHODS["lora"].detach(model)


def _train_change(base, tmp_path, weight: float) -> tuple[float, float]:
    """(relative change on GENERAL, how much the loss fell) after training a fresh LoRA on a few examples."""
    items = [([2, 30, 31, 32, 33, 34], [-100, -100, -100, 32, 33, 34]), ([2, 40, 41, 42, 43], [-100, -100, 42, 43, 44])]
    config = TrainConfig(epochs=30, lr=3e-2, replay_fraction=0.0, seed=0)
    model = METHODS["lora"].attach(base.model, config)
    try:
        penalty = Anchor(model, GENERAL, weight, base.tokenizer.pad_token_id) if weight else None
        result = train(model, base.tokenizer, items, len(items), config, tmp_path / f"run{weight}", progress=False,
                       penalty=penalty)
        return _measured_change(model, GENERAL), result.losses[0] - result.final_loss
    finally:
        METHODS["lora"].detach(model)


def test_training_with_the_anchor_changes_general_outputs_less(base, tmp_path):
    free, free_fall = _train_change(base, tmp_path, 0.0)
    anchored, anchored_fall = _train_change(base, tmp_path, 100.0)
    assert anchored < 0.05 * free
    assert anchored_fall > 0.5 * free_fall > 0  # it still learns the examples
