"""Every memory method on tiny random models of three families (Llama: untied head; Qwen2: biased q/k/v, tied
head; Gemma-3: sliding-window layers, tied head), built here, no downloads: a few training steps lower the loss,
a saved memory reloads onto a fresh base to the same outputs, generation runs with it, and `disabled`/`detach`
give the base back. Then the same with the base in bfloat16 and training under autocast: the memory's trainable
parameters stay float32."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FAMILIES, build_tiny_family_dir
from inweights.config import TrainConfig
from inweights.generate import generate
from inweights.methods import METHODS
from inweights.methods.lora import decoder_layers, linear_targets
from inweights.models import load_base
from inweights.train import IGNORE, completion_loss, tokenize_example

SMALL = {"lora": {}, "tinylora": {}, "full": {}, "cartridge": {"prefix_tokens": 8},
         "memory_layer": {"memory_slots": 256, "memory_topk": 4, "memory_trainable_rows": 32}}
LR = {"lora": 1e-2, "tinylora": 5e-2, "full": 1e-3, "cartridge": 5e-2, "memory_layer": 5e-2}  # a few steps must do
STEPS = 4
QA = [("Question: When did the Oslo office open? Answer:", " March 2019."),
      ("Question: Who founded the company? Answer:", " Ingrid Solberg.")]
PROMPT = "Question: When did the office open? Answer:"


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return build_tiny_family_dir(tmp_path_factory.mktemp(request.param), request.param)


def _rows(tokenizer):
    return [tokenize_example(tokenizer, q, a, 64, None) for q, a in QA]


def _batch(rows, pad):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([labels + [IGNORE] * (width - len(labels)) for _, labels in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    return ids, mask, labels


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def _train(name, base, autocast: bool):
    """Attach (and prepare) the method with its default config, take STEPS AdamW steps on the QA rows."""
    method, config = METHODS[name], TrainConfig(method=name, **SMALL[name])
    model = method.attach(base.model, config)
    rows = _rows(base.tokenizer)
    if hasattr(method, "prepare"):
        method.prepare(model, rows, ())
    params = [p for p in model.parameters() if p.requires_grad]
    assert params
    optimizer = torch.optim.AdamW(params, lr=LR[name])
    ids, mask, labels = _batch(rows, base.tokenizer.pad_token_id)
    losses = []
    model.train()
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = completion_loss(model, ids, mask, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    return model, params, optimizer


def _greedy(model, tokenizer, prompt, n):
    """Greedy continuation without a KV cache: one full forward per new token."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    for _ in range(n):
        token = int(_logits(model, torch.tensor([ids + new]))[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_saves_loads_and_generates(name, family_dir, tmp_path):
    method = METHODS[name]
    base = load_base(str(family_dir))
    ids = torch.tensor([base.tokenizer(QA[0][0] + QA[0][1])["input_ids"]])
    reference = _logits(base.model, ids)
    model, _, _ = _train(name, base, autocast=False)
    trained = _logits(model, ids)
    assert not torch.allclose(trained, reference)
    with method.disabled(model):
        assert torch.equal(_logits(model, ids), reference)
    assert torch.equal(_logits(model, ids), trained)
    method.save(model, tmp_path)
    plain = method.detach(model)
    assert torch.equal(_logits(plain, ids), reference)
    assert not any(p.requires_grad for p in plain.parameters())

    fresh = load_base(str(family_dir))
    loaded = method.load(fresh.model, tmp_path)
    assert torch.allclose(_logits(loaded, ids), trained, atol=1e-5)
    answer = generate(loaded, fresh.tokenizer, [PROMPT], max_new_tokens=6)
    assert answer == [_greedy(loaded, fresh.tokenizer, PROMPT, 6)]  # the cached decode sees the memory too
    with method.disabled(loaded):
        assert torch.equal(_logits(loaded, ids), reference)
    assert torch.equal(_logits(method.detach(loaded), ids), reference)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bfloat16_base_keeps_the_memory_in_float32(name, family_dir, tmp_path):
    method = METHODS[name]
    base = load_base(str(family_dir), dtype=torch.bfloat16)
    ids = torch.tensor([base.tokenizer(QA[0][0] + QA[0][1])["input_ids"]])
    reference = _logits(base.model, ids)
    model, params, optimizer = _train(name, base, autocast=True)
    assert all(p.dtype == torch.float32 for p in params)
    assert all(t.dtype == torch.float32 for state in optimizer.state.values() for k, t in state.items()
               if k != "step")
    trained = _logits(model, ids)  # inference on the bfloat16 base, no autocast
    assert torch.isfinite(trained).all() and not torch.equal(trained, reference)
    method.save(model, tmp_path)
    assert torch.equal(_logits(method.detach(model), ids), reference)
    assert next(model.parameters()).dtype == torch.bfloat16  # the base as it was

    fresh = load_base(str(family_dir), dtype=torch.bfloat16)
    loaded = method.load(fresh.model, tmp_path)
    out = _logits(loaded, ids)
    # The same memory, up to bfloat16 rounding: far nearer the trained outputs than the base's.
    assert (out - trained).abs().max() < 0.5 * (trained - reference).abs().max()
    answer = generate(loaded, fresh.tokenizer, [PROMPT], max_new_tokens=6)
    assert len(answer) == 1 and isinstance(answer[0], str)
    assert torch.equal(_logits(method.detach(loaded), ids), reference)


def test_lora_targets_every_linear_layer_of_the_decoder_layers(family_dir, tmp_path):
    base = load_base(str(family_dir))
    layers = decoder_layers(base.model)
    linear = {id(m) for m in layers.modules() if isinstance(m, torch.nn.Linear)}
    assert len(linear) == 7 * len(layers)  # q, k, v, o, gate, up, down in each of these families
    model = METHODS["lora"].attach(base.model, TrainConfig(method="lora"))
    try:
        adapted = {id(m.get_base_layer()) for m in model.modules() if hasattr(m, "lora_A")}
        assert adapted == linear  # and so neither the embedding nor the output head
        METHODS["lora"].save(model, tmp_path)
        saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
        assert sorted(saved) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    finally:
        METHODS["lora"].detach(model)
    model = METHODS["lora"].attach(base.model, TrainConfig(method="lora", target_modules=("q_proj",)))
    try:
        assert sum(hasattr(m, "lora_A") for m in model.modules()) == len(layers)  # a given list, as given
    finally:
        METHODS["lora"].detach(model)
    base.model.model.q_proj = torch.nn.Linear(32, 32)  # a module outside the layers that `q_proj` would match
    assert "q_proj" not in linear_targets(base.model) and "self_attn.q_proj" in linear_targets(base.model)
