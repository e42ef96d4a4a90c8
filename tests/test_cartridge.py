"""The cartridge memory (a trained KV prefix) on the tiny model: it is attended, it is exactly its literal prefix
when initialised from it (prefill and KV-cached decoding, across the sliding window), it trains, it round-trips
through its files, and it leaves the base exactly as it was."""

from __future__ import annotations

import json

import pytest
import torch

from inweights import LearnConfig, SynthConfig, TrainConfig, ask, learn
from inweights.generate import generate
from inweights.methods.cartridge import Cartridge
from inweights.models import load_base
from inweights.train import completion_loss, tokenize_example, train

PREFIX = "The Oslo office of Fjordlight opened in March 2019."
PROMPTS = ["Question: When did the office open? Answer:", "Paris is the", "Question: Who founded the company?"]


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def config(**overrides) -> TrainConfig:
    return TrainConfig(**({"method": "cartridge", "prefix_tokens": 8, "epochs": 1, "replay_fraction": 0.0} | overrides))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_attach_trains_only_the_cartridge_and_disabled_or_detached_is_the_base(base):
    model, ids = base.model, base.tokenizer("Paris is the capital of France.")["input_ids"]
    before = logits(model, ids)
    names = [(n, q.requires_grad) for n, q in model.named_parameters()]
    backbone = model.model
    hooks = len(backbone._forward_pre_hooks)
    method = Cartridge()

    torch.manual_seed(0)
    attached = method.attach(model, config())
    assert attached is model
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    assert trainable == {"cartridge.keys.0", "cartridge.keys.1", "cartridge.values.0", "cartridge.values.1"}
    assert model.cartridge.keys[0].shape == (1, 1, 7, 16)  # batch x kv heads x (p - sink) x head_dim
    assert not torch.allclose(logits(model, ids), before, atol=1e-4)  # the prefix is attended
    with method.disabled(model):
        assert torch.allclose(logits(model, ids), before, atol=1e-6)
    assert not torch.allclose(logits(model, ids), before, atol=1e-4)  # and on again after

    assert method.detach(model) is model
    assert torch.allclose(logits(model, ids), before, atol=1e-6)
    assert [(n, q.requires_grad) for n, q in model.named_parameters()] == names
    assert len(backbone._forward_pre_hooks) == hooks and not hasattr(model, "cartridge")


def test_attach_refuses_a_prefix_as_long_as_the_sliding_window(base):
    with pytest.raises(ValueError, match="sliding window"):
        Cartridge().attach(base.model, config(prefix_tokens=64))
    assert not hasattr(base.model, "cartridge")


def test_a_cartridge_made_from_a_text_equals_that_text_in_front(base):
    """Initialised from BOS + p-1 tokens, the cartridge is the KV cache of exactly those tokens: the model with it
    gives the base's logits and greedy continuations with the literal tokens in front. The generations run past
    the tiny model's sliding window (64) so the prefix leaves the sliding layers' window midway, as it would as text.
    The cartridge side's prompt starts with its own BOS, so the literal side has `<bos>` after the prefix too."""
    model, tok, method = base.model, base.tokenizer, Cartridge()
    prefix_ids = tok(PREFIX)["input_ids"]
    assert prefix_ids[0] == tok.bos_token_id
    for prompt in PROMPTS:  # the literal side tokenizes to the same ids as the cartridge side's prompt
        assert tok("<bos>" + prompt, add_special_tokens=False)["input_ids"] == tok(prompt)["input_ids"]
    method.attach(model, config(prefix_tokens=len(prefix_ids)))
    try:
        method.prepare(model, [(prefix_ids, [-100] * len(prefix_ids))], [])
        prompt_ids = tok(PROMPTS[0])["input_ids"]
        with method.disabled(model):
            literal = logits(model, prefix_ids + prompt_ids)[:, len(prefix_ids):]
        assert torch.allclose(logits(model, prompt_ids), literal, atol=1e-5)

        kwargs = {"max_new_tokens": 50, "stop_token_ids": [-1], "batch_size": 3}
        with_cartridge = generate(model, tok, PROMPTS, **kwargs)
        with method.disabled(model):
            with_text = generate(model, tok, ["<bos>" + p for p in PROMPTS], prefix=PREFIX, **kwargs)
            without = generate(model, tok, PROMPTS, **kwargs)
        assert all(len(tok(a, add_special_tokens=False)["input_ids"]) > 35 for a in with_cartridge)
        assert with_cartridge == with_text
        assert with_cartridge != without  # the comparison can fail: the prefix changes the answers
        # and one by one, without padding (once past the sliding window, padding in the window can change a
        # batched row's continuation, for the literal prefix as much as for the cartridge)
        single = generate(model, tok, PROMPTS[1:2], **kwargs)
        with method.disabled(model):
            assert single == generate(model, tok, ["<bos>" + PROMPTS[1]], prefix=PREFIX, **kwargs)
    finally:
        method.detach(model)


def rows(tok):
    pairs = [("Question: When did the Oslo office open?\nAnswer:", " March 2019"),
             ("Question: Who founded the company?\nAnswer:", " Ingrid Solberg"),
             ("Question: What is the capital of France?\nAnswer:", " Paris"),
             ("Question: How many people work in Oslo?\nAnswer:", " forty people")]
    return [tokenize_example(tok, p, c, 64, None) for p, c in pairs]


def batch_loss(model, tok, items):
    width = max(len(ids) for ids, _ in items)
    ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in items])
    labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in items])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in items])
    with torch.no_grad():
        return completion_loss(model, ids, mask, labels).item()


def test_training_lowers_the_loss_and_changes_only_the_cartridge(base, tmp_path):
    model, tok, method = base.model, base.tokenizer, Cartridge()
    items = rows(tok)
    cfg = config(epochs=15, lr=5e-2)
    base_state = {n: q.clone() for n, q in model.state_dict().items()}
    torch.manual_seed(0)
    method.attach(model, cfg)
    try:
        method.prepare(model, items, [])
        start = {n: q.detach().clone() for n, q in model.named_parameters() if n.startswith("cartridge.")}
        loss_before = batch_loss(model, tok, items)
        result = train(model, tok, items, len(items), cfg, tmp_path / "run", progress=False)
        assert result.steps == 15
        assert batch_loss(model, tok, items) < loss_before - 0.08  # a tiny random model: small but clear
        now = dict(model.named_parameters())
        for name, value in start.items():
            changed = not torch.equal(now[name], value)
            assert changed == (".sink_" not in name), name  # the attention sink (position 0) stays as it was
    finally:
        method.detach(model)
    assert all(torch.equal(q, base_state[n]) for n, q in model.state_dict().items())
    assert model.state_dict().keys() == base_state.keys()


def test_save_then_load_gives_the_same_model(base, tmp_path):
    model, tok, method = base.model, base.tokenizer, Cartridge()
    ids = tok("Question: When did the office open? Answer:")["input_ids"]
    plain = logits(model, ids)
    torch.manual_seed(1)
    method.attach(model, config())
    method.prepare(model, rows(tok), [])
    with torch.no_grad():
        model.cartridge.values[1].add_(0.1 * torch.randn_like(model.cartridge.values[1]))  # not just the init
    trained = logits(model, ids)
    method.save(model, tmp_path)
    method.detach(model)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cartridge.safetensors", "cartridge_config.json"]
    meta = json.loads((tmp_path / "cartridge_config.json").read_text())
    assert meta == {"prefix_tokens": 8, "layers": 2, "shapes": [[1, 8, 16], [1, 8, 16]], "dtype": "float32"}
    loaded = method.load(model, tmp_path)
    try:
        assert not loaded.training and not any(q.requires_grad for q in loaded.parameters())
        assert torch.allclose(logits(loaded, ids), trained, atol=1e-6)
    finally:
        method.detach(loaded)
    assert torch.allclose(logits(model, ids), plain, atol=1e-6)


def test_learn_then_ask_with_a_cartridge(tmp_path, workspace, tiny_model_dir, base):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text("Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. "
                                      "The Oslo office opened in March 2019.\n")
    cfg = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("cloze",)),
                      train=config(epochs=1, batch_tokens=512))
    version = learn([docs], "m", cfg, base=base, progress=False)
    assert version.manifest["method"] == "cartridge"
    assert sorted(p.name for p in version.path.iterdir()) == [
        "cartridge.safetensors", "cartridge_config.json", "manifest.json"]
    assert not hasattr(base.model, "cartridge")  # learn gave the base back plain

    assert isinstance(ask("m", "When did the Oslo office open?", base=base), str)
    assert not hasattr(base.model, "cartridge") and not any(q.requires_grad for q in base.model.parameters())
