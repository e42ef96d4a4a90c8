"""Every memory method: attach trains only the memory, `disabled` and `detach` give the exact base back, and a
saved memory loads to the same outputs. Method-specific behaviour is tested in test_cartridge.py and
test_memory_layer.py; learn/ask end to end per method is here."""

from __future__ import annotations

import pytest
import torch

from inweights import LearnConfig, SynthConfig, TrainConfig, Workspace, ask, learn, load_memory
from inweights.config import resolve_train
from inweights.evaluate.metrics import option_logliks
from inweights.methods import METHODS
from inweights.models import load_base
from inweights.synth import STRATEGIES

SMALL = {"tinylora": {}, "full": {}, "lora": {}, "cartridge": {"prefix_tokens": 8},
         "memory_layer": {"memory_slots": 256, "memory_topk": 4, "memory_trainable_rows": 32}}


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("name", ["lora", "tinylora", "full"])
def test_attach_save_load_disable_detach(name, base, tmp_path):
    method = METHODS[name]
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10]])
    reference = _logits(base.model, ids)
    model = method.attach(base.model, TrainConfig(method=name, **SMALL[name]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("embed" not in n for n in trainable)
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: move every trainable number
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    trained = _logits(model, ids)
    assert not torch.allclose(trained, reference)
    with method.disabled(model):
        assert torch.equal(_logits(model, ids), reference)
    assert torch.equal(_logits(model, ids), trained)  # and back on after the context
    method.save(model, tmp_path)
    plain = method.detach(model)
    assert torch.equal(_logits(plain, ids), reference)
    assert not any(p.requires_grad for p in plain.parameters())
    loaded = method.load(plain, tmp_path)
    assert torch.allclose(_logits(loaded, ids), trained, atol=1e-6)
    assert torch.equal(_logits(method.detach(loaded), ids), reference)


def test_full_fine_tuning_refuses_a_second_memory(base):
    method = METHODS["full"]
    model = method.attach(base.model, TrainConfig(method="full"))
    try:
        with pytest.raises(ValueError, match="already carries a memory"):
            method.attach(model, TrainConfig(method="full"))
    finally:
        method.detach(model)


def test_each_method_has_its_own_default_learning_rate():
    assert resolve_train(TrainConfig(method="full", epochs=1), 10).lr == METHODS["full"].default_lr
    assert resolve_train(TrainConfig(method="lora", epochs=1), 10).lr == 5e-4
    assert resolve_train(TrainConfig(method="full", epochs=1, lr=1e-3), 10).lr == 1e-3
    assert len({m.default_lr for m in METHODS.values()}) > 1


@pytest.mark.parametrize("name", sorted(SMALL))
def test_learn_and_ask_with_every_method(name, base, tmp_path, tiny_model_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Oslo office of Fjordlight opened in March 2019 and employs forty people.\n")
    workspace = Workspace(tmp_path / "home")
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("selfstudy",), budget=200),
                         train=TrainConfig(method=name, epochs=1, replay_sequences=4, **SMALL[name]))
    version = learn([docs], "m", config, base=base, workspace=workspace, progress=False)
    manifest = version.manifest
    assert manifest["method"] == name and manifest["training"]["trainable_parameters"] > 0
    assert manifest["synthetic"]["pool"] >= manifest["synthetic"]["examples"]
    assert manifest["synthetic"]["strategy_versions"] == {"selfstudy": STRATEGIES["selfstudy"].VERSION}
    assert isinstance(ask("m", "When did the Oslo office open?", base=base, workspace=workspace), str)
    questions = ["Who founded Fjordlight?", "When did the Oslo office open?"]
    plain = load_memory(None, base=base).answer(questions)
    loaded = load_memory("m", base=base, workspace=workspace)
    try:
        assert loaded.base_answers(questions) == plain  # `disabled` gives the base back inside a loaded memory
        assert len(loaded.answer(questions)) == 2
        story = " ".join(["The Oslo office of Fjordlight opened in March 2019."] * 12)  # > the 64-token window
        contexts, options = [f"{story}\nQ: When?\nA:", f"{story}\nQ: Where?\nA:"], [["March 2019", "never"],
                                                                                     ["Oslo", "Paris"]]
        plain_ll, shared_ll = (option_logliks(loaded.model, base.tokenizer, contexts, options, shared_prefix=n)
                               for n in (0, 16))  # a document's prefix run once, under the memory too
        assert [t for s in shared_ll for t, _ in s] == pytest.approx([t for s in plain_ll for t, _ in s], abs=1e-4)
    finally:
        loaded.close()
    after = dict(base.model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("name", ["lora", "tinylora", "full", "cartridge"])
def test_resume_attaches_a_saved_memory_trainable(name, base, tmp_path):
    """`learn --update` goes on training a saved memory: resume gives the saved outputs, with the memory's
    parameters (and only those) trainable, and detaches back to the exact base."""
    method = METHODS[name]
    config = TrainConfig(method=name, **SMALL[name])
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10]])
    reference = _logits(base.model, ids)
    model = method.attach(base.model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    trained = _logits(model, ids)
    attached = {n for n, p in model.named_parameters() if p.requires_grad}
    method.save(model, tmp_path)
    plain = method.detach(model)
    resumed = method.resume(plain, tmp_path, config)
    try:
        assert torch.allclose(_logits(resumed, ids), trained, atol=1e-5)
        assert {n for n, p in resumed.named_parameters() if p.requires_grad} == attached
    finally:
        plain = method.detach(resumed)
    assert torch.equal(_logits(plain, ids), reference)


def test_lora_on_chosen_layers_only(base):
    model = METHODS["lora"].attach(base.model, TrainConfig(layers=(1,)))
    try:
        adapted = {n.split("layers.")[1].split(".")[0] for n, p in model.named_parameters() if "lora_" in n}
        assert adapted == {"1"}
    finally:
        METHODS["lora"].detach(model)
    with pytest.raises(ValueError, match="layers: any set"):
        TrainConfig(method="full", layers=(0,))


def test_lora_dropout_acts_while_training_only(base, tmp_path):
    model = METHODS["lora"].attach(base.model, TrainConfig(dropout=0.5))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    try:
        for module in model.modules():  # a nonzero update, so dropping its inputs changes the output
            if hasattr(module, "lora_B"):
                torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
        model.eval()
        served = _logits(model, ids)
        assert torch.equal(_logits(model, ids), served)
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(_logits(model, ids), served)
        model.eval()
        METHODS["lora"].save(model, tmp_path)
    finally:
        METHODS["lora"].detach(model)
    loaded = METHODS["lora"].load(base.model, tmp_path)
    try:
        assert torch.allclose(_logits(loaded, ids), served, atol=1e-5)
    finally:
        METHODS["lora"].detach(loaded)
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(method="memory_layer", dropout=0.1)


def test_lora_truncate_keeps_each_updates_best_low_rank_approximation(base):
    from peft.tuners.lora import LoraLayer

    from inweights.methods.lora import truncate

    torch.manual_seed(0)
    model = METHODS["lora"].attach(base.model, TrainConfig(rank=8))
    try:
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        with torch.no_grad():
            for m in layers:  # PEFT starts B at zero: give every update a full rank-8 spectrum
                m.lora_B["default"].weight.normal_()
        updates = [(m.lora_B["default"].weight @ m.lora_A["default"].weight).detach().clone() for m in layers]
        truncate(model, 3)
        for m, before in zip(layers, updates):
            after = (m.lora_B["default"].weight @ m.lora_A["default"].weight).detach()
            u, s, vh = torch.linalg.svd(before)
            best = (u[:, :3] * s[:3]) @ vh[:3]
            assert torch.allclose(after, best, atol=1e-5 * float(s[0]))
            assert int(torch.linalg.matrix_rank(after)) == 3
        truncate(model, drop=1)  # now the top direction of each rank-3 update goes: directions 2 and 3 stay
        for m, before in zip(layers, updates):
            after = (m.lora_B["default"].weight @ m.lora_A["default"].weight).detach()
            u, s, vh = torch.linalg.svd(before)
            assert torch.allclose(after, (u[:, 1:3] * s[1:3]) @ vh[1:3], atol=1e-5 * float(s[0]))
        for bad in ({"rank": 0}, {"drop": -1}, {"rank": 2, "drop": 2}):
            with pytest.raises(ValueError, match="rank"):
                truncate(model, **bad)
    finally:
        METHODS["lora"].detach(model)


def test_quiet_init_starts_lora_in_the_general_texts_least_used_directions(base):
    from inweights.methods.lora import init_quiet

    torch.manual_seed(0)
    general = [torch.randint(3, 100, (24,)).tolist() for _ in range(6)]
    model = METHODS["lora"].attach(base.model, TrainConfig(rank=4))
    ids = torch.tensor([general[0]])
    reference = _logits(model, ids)
    inputs, hooks = {}, []
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    for name, module in layers.items():  # each layer's inputs on the general text, once
        hooks.append(module.register_forward_pre_hook(
            lambda m, args, name=name: inputs.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        for seq in general:
            model(input_ids=torch.tensor([seq]))
    for h in hooks:
        h.remove()

    def reads():  # share of the general inputs' energy that A passes on, relative to A's own size, per layer
        out = {}
        for name, module in layers.items():
            a, x = module.lora_A["default"].weight, torch.cat(inputs[name])
            out[name] = ((x @ a.T).square().sum() / a.square().sum()).item()
        return out

    before = reads()
    norms = {n: m.lora_A["default"].weight.norm(dim=1).clone() for n, m in layers.items()}
    init_quiet(model, general, base.tokenizer.pad_token_id)
    after = reads()
    # reads less of the general text in every layer, and far less where its inputs are far from isotropic
    assert all(after[n] < 0.6 * before[n] for n in layers) and sum(after.values()) < 0.2 * sum(before.values())
    assert all(torch.allclose(m.lora_A["default"].weight.norm(dim=1), norms[n]) for n, m in layers.items())
    assert torch.equal(_logits(model, ids), reference)  # B is still zero: the model is unchanged
    METHODS["lora"].detach(model)
    for init in ("quiet", "quiet-qa"):
        with pytest.raises(ValueError, match="quiet ones need"):
            TrainConfig(lora_init=init, replay_fraction=0)
    with pytest.raises(ValueError, match="must be one of random, quiet, quiet-qa"):
        TrainConfig(lora_init="zeros")


def test_learn_with_the_quiet_init_starts_from_the_guards_text(base, tmp_path, tiny_model_dir, monkeypatch):
    import inweights.api as api

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Oslo office of Fjordlight opened in March 2019 and employs forty people.\n")
    seen, real = [], api.init_quiet
    monkeypatch.setattr(api, "init_quiet", lambda model, sequences, pad_id: (seen.append(len(sequences)),
                                                                             real(model, sequences, pad_id)))
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("selfstudy",), budget=200),
                         train=TrainConfig(epochs=1, replay_sequences=4, lora_init="quiet"))
    version = learn([docs], "m", config, base=base, workspace=Workspace(tmp_path / "home"), progress=False)
    assert seen == [4] and version.manifest["config"]["train"]["lora_init"] == "quiet"


def test_the_quiet_qa_init_adds_questions_about_the_guards_text_as_many_tokens_again(base, tmp_path, monkeypatch):
    import inweights.api as api
    from inweights.synth import ExampleCache

    workspace = Workspace(tmp_path / "home")
    config = TrainConfig(replay_sequences=6, lora_init="quiet-qa", max_seq_len=64)
    texts = ["The Oslo office of Fjordlight opened in March 2019. Maria Berg leads the office in Oslo.",
             "Quentin Rask founded the Harbor Guild in 1852. The guild built the lighthouse at Vard."] * 3
    monkeypatch.setattr(api, "replay_texts", lambda *args, **kwargs: texts)  # the guard's general text
    replay = [(base.tokenizer(t)["input_ids"], None, None) for t in texts]
    rows = api._quiet_rows(base, config, SynthConfig(), workspace, ExampleCache(tmp_path / "synth"), [], replay)
    plain = [row[0] for row in replay]
    assert rows[: len(plain)] == plain and len(rows) > len(plain)
    qa = [base.tokenizer.decode(ids) for ids in rows[len(plain):]]
    assert all("Question:" in text and "\nAnswer:" in text for text in qa)
    plain_tokens, qa_tokens = sum(map(len, plain)), sum(map(len, rows[len(plain):]))
    assert plain_tokens <= qa_tokens < plain_tokens + max(map(len, rows[len(plain):]))
    quiet = api._quiet_rows(base, TrainConfig(lora_init="quiet"), SynthConfig(), workspace, None, [], replay)
    assert quiet == plain
    assert api._quiet_rows(base, TrainConfig(), SynthConfig(), workspace, None, [], replay) == []
