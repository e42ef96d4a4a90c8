"""The sparse memory layer on the tiny model: exact no-op when attached, TF-IDF row choice, sparse training,
exact disable/detach, save/load round trip, and learn -> ask end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import inweights.methods as methods
from inweights import LearnConfig, SynthConfig, TrainConfig, Workspace, ask, learn
from inweights.methods.memory_layer import MemoryLayer, MemoryMLP, SparseMemory, _scored
from inweights.models import load_base
from inweights.train import completion_loss, tokenize_example, train

COMMON = "The weather is mild today and the river runs calm under the old bridge."
SPECIFIC = "Ingrid Vassbotn founded Fjordlight Instruments in 2011 on Rovoy."


@pytest.fixture()
def method() -> MemoryLayer:
    return methods.METHODS["memory_layer"]


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def config(**overrides) -> TrainConfig:
    return TrainConfig(**({"method": "memory_layer", "memory_slots": 256, "memory_topk": 4,
                           "memory_trainable_rows": 8, "replay_fraction": 0.0, "epochs": 1} | overrides))


def logits(model, tokenizer, text=SPECIFIC) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer(text)["input_ids"]])).logits


def wrapper(model) -> MemoryMLP:
    return next(m for m in model.modules() if isinstance(m, MemoryMLP))


def qa_items(tokenizer):
    pairs = [("Who founded Fjordlight Instruments?", " Ingrid Vassbotn"), ("When was Fjordlight founded?", " 2011"),
             ("Where is Lanternfest held?", " on Rovoy")]
    return [tokenize_example(tokenizer, f"Question: {q}\nAnswer:", a, 64, None) for q, a in pairs]


def test_attach_is_an_exact_no_op_and_trains_only_the_memory(method, base):
    before = logits(base.model, base.tokenizer)
    model = method.attach(base.model, config())
    try:
        assert torch.equal(logits(model, base.tokenizer), before)
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.layers.1.mlp.memory.rows"]
        assert model.model.layers[1].mlp.memory.rows.shape == (8, 32)
        with pytest.raises(ValueError, match="already carries"):
            method.attach(model, config())
    finally:
        method.detach(model)


def test_prepare_picks_rows_the_training_data_reads_and_general_text_does_not(method, base):
    tok = base.tokenizer
    common, specific = tok(COMMON)["input_ids"], tok(SPECIFIC)["input_ids"]
    model = method.attach(base.model, config())
    try:
        items = [(common, None), (common, None), (specific, None)]
        method.prepare(model, items, [(common,)] * 3)
        chosen = set(wrapper(model).memory.row_index.tolist())
        general = set(method.read_counts(model, [common]).nonzero().flatten().tolist())
        specific_rows = set(method.read_counts(model, [specific]).nonzero().flatten().tolist())
        assert len(specific_rows - general) >= 8 and len(chosen) == 8
        assert chosen <= specific_rows - general
        method.prepare(model, items, [(common,)] * 3)  # deterministic: a resumed run trains the same rows
        assert set(wrapper(model).memory.row_index.tolist()) == chosen
        method.prepare(model, items, [])  # without general text, the rows read most (the common ones) win
        assert set(wrapper(model).memory.row_index.tolist()) & general
    finally:
        method.detach(model)


def test_standardised_queries_spread_states_that_share_a_dominant_direction():
    """Mid-layer states share an offset and have a few high-variance dimensions: raw, they all read the same
    rows; standardised on their own mean and spread, different states read different rows."""
    torch.manual_seed(0)
    x = torch.randn(64, 32) * 0.1
    x[:, 0] += 20.0  # a common direction
    x[:, 1] *= 100.0  # one dimension that varies far more than the rest

    def shared(memory):  # mean number of rows two states read in common, of topk
        rows = [set(r.tolist()) for r in memory.lookup(x)[0]]
        return sum(len(a & b) for i, a in enumerate(rows) for b in rows[i + 1:]) / (len(rows) * (len(rows) - 1) / 2)

    memory = SparseMemory(hidden=32, slots=1024, topk=8, n_rows=8)
    raw = shared(memory)
    memory.standardise(x.mean(0), x.std(0))
    assert shared(memory) < raw / 3
    memory.standardise(x.mean(0), x.std(0))  # again: the same projection, not rescaled twice
    assert shared(memory) < raw / 3


def test_contrast_cuts_drop_at_most_the_share_asked_and_block_more_general_reads_as_it_grows():
    """`fit_contrast`'s candidates count what a cut drops, as the gate itself would; the cuts `contrast_cuts`
    picks drop no more than the share of training reads asked, and block more general reads for a larger share."""
    torch.manual_seed(0)
    train = [torch.randn(400, 32) + 2 * torch.randn(1, 32) for _ in range(3)]  # clustered: rows differ
    general = [torch.randn(300, 32) for _ in range(2)]
    memory = SparseMemory(hidden=32, slots=256, topk=4, n_rows=24)
    memory.standardise(torch.cat(train).mean(0), torch.cat(train).std(0))
    memory.select(torch.bincount(memory.lookup(torch.cat(train))[0].flatten(), minlength=256).argsort()[-24:])
    memory.fit_contrast(memory.fit_centroids(train), iter(general))

    def reads(states):  # (row, cosine) of every read of a trained row
        q = memory.directions(states)
        rows = memory.slot_row[memory.lookup(states, q)[0]]
        cosines = memory.trained_cosines(q, rows)
        return rows[cosines.isfinite()], cosines[cosines.isfinite()]

    (tr, tc), (gr, gc) = reads(torch.cat(train)), reads(torch.cat(general))
    assert memory.contrast_reads == len(tr) and len(memory.contrast["row"]) == len(gr)
    for i in range(0, len(gr), 7):  # a candidate's counts: what its cut would drop, counted directly
        row, cut = memory.contrast["row"][i], memory.contrast["cut"][i]
        assert memory.contrast["dropped"][i] == int(((tr == row) & (tc < cut)).sum())
        assert memory.contrast["blocked"][i] == int(((gr == row) & (gc < cut)).sum()) >= 1
    blocked = []
    for share in (0.0, 0.05, 0.2, 0.5):
        cuts = memory.contrast_cuts(share)
        assert int((tc < cuts[tr]).sum()) <= share * len(tr)
        blocked.append(int((gc < cuts[gr]).sum()))
    assert blocked[0] > 0  # a cut below every training read of its row drops nothing
    assert blocked == sorted(blocked) and blocked[-1] > blocked[0]


def test_training_rows_count_reads_where_the_loss_is():
    """tf counts reads at the positions that predict a labelled (or soft-target) token, not the shared prompt."""
    assert _scored(([2, 5, 6, 7, 8], [-100, -100, -100, 7, 8])) == [0, 0, 1, 1, 0]
    assert _scored(([2, 5, 6, 7, 8], [-100] * 5, (1, torch.zeros(3, 4), torch.zeros(3, 4)))) == [0, 1, 1, 1, 0]
    assert _scored(([2, 5, 6],)) == [1, 1, 1]  # nothing scored: every position counts


def test_training_lowers_the_loss_and_changes_only_the_selected_rows(method, base, tmp_path):
    items = qa_items(base.tokenizer)
    cfg = config(memory_trainable_rows=32, epochs=20, lr=1e-2, batch_tokens=256, max_seq_len=64)
    model = method.attach(base.model, cfg)
    try:
        method.prepare(model, items, [])
        memory = wrapper(model).memory

        def loss():
            with torch.no_grad():
                return sum(completion_loss(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                                           torch.tensor([labels])).item() for ids, labels in items)

        first = loss()
        result = train(model, base.tokenizer, items, len(items), cfg, tmp_path / "run", progress=False)
        assert result.steps == 20 and loss() < first - 0.5  # summed over 3 items; the random tiny model learns slowly
        table = torch.zeros(256, 32)  # the full value table the memory reads: zero but for the trained rows
        table[memory.row_index] = memory.rows.detach()
        touched = set(table.abs().amax(-1).nonzero().flatten().tolist())
        read = set(method.read_counts(model, [ids for ids, _ in items]).nonzero().flatten().tolist())
        assert touched and touched <= set(memory.row_index.tolist()) & read  # (read at a scored position)
    finally:
        method.detach(model)


def test_disable_detach_and_save_load_are_exact(method, base, tmp_path):
    plain_mlp = base.model.model.layers[1].mlp
    before = logits(base.model, base.tokenizer)
    items = qa_items(base.tokenizer)
    cfg = config(memory_trainable_rows=32, epochs=5, lr=5e-2)
    model = method.attach(base.model, cfg)
    method.prepare(model, items, [])
    train(model, base.tokenizer, items, len(items), cfg, tmp_path / "run", progress=False)
    trained = logits(model, base.tokenizer)
    assert not torch.equal(trained, before)
    with method.disabled(model):
        assert torch.equal(logits(model, base.tokenizer), before)
    assert torch.equal(logits(model, base.tokenizer), trained)
    method.save(model, tmp_path)
    base_model = method.detach(model)

    assert base_model.model.layers[1].mlp is plain_mlp
    assert not any("memory" in n for n, _ in base_model.named_modules())
    assert not any(p.requires_grad for p in base_model.parameters())
    assert torch.equal(logits(base_model, base.tokenizer), before)

    saved = json.loads((tmp_path / "memory_layer_config.json").read_text())
    assert saved["layer"] == 1 and saved["slots"] == 256 and saved["topk"] == 4 and saved["hidden"] == 32
    tensors = load_file(tmp_path / "memory_layer.safetensors")
    assert 0 < tensors["rows"].shape[0] <= 32 and tensors["rows"].abs().amax(-1).min() > 0  # only trained rows
    loaded = method.load(base_model, tmp_path)
    try:
        assert torch.equal(logits(loaded, base.tokenizer), trained)
        assert not any(p.requires_grad for p in loaded.parameters())
    finally:
        method.detach(loaded)
    assert torch.equal(logits(base_model, base.tokenizer), before)


def learn_handbook(tmp_path, tiny_model_dir, base, memory: str, **train):
    """learn a one-line handbook into a small memory layer (cloze data, one epoch)."""
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "handbook.md").write_text(f"# Fjordlight\n\n{SPECIFIC} The Oslo office opened in March 2019.\n")
    cfg = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("cloze",)),
                      train=TrainConfig(method="memory_layer", memory_slots=256, memory_topk=4,
                                        memory_trainable_rows=32, epochs=1, replay_sequences=2, **train))
    return learn([docs], memory=memory, config=cfg, base=base, workspace=Workspace(), progress=False)


def test_learn_then_ask_with_the_memory_layer(method, tmp_path, workspace, tiny_model_dir, base):
    version = learn_handbook(tmp_path, tiny_model_dir, base, "m")

    assert version.manifest["method"] == "memory_layer"
    assert {p.name for p in version.path.iterdir()} == {"memory_layer.safetensors", "memory_layer_config.json",
                                                        "manifest.json"}
    assert not any(isinstance(m, MemoryMLP) for m in base.model.modules())  # learn gave the base back
    assert isinstance(ask("m", "Who founded Fjordlight Instruments?", base=base), str)
    assert not any(isinstance(m, MemoryMLP) for m in base.model.modules())  # ask gave it back too


def test_strength_saves_the_trained_rows_scaled(method, tmp_path, workspace, tiny_model_dir, base):
    rows = []
    for name, strength in (("full", 1.0), ("half", 0.5)):
        version = learn_handbook(tmp_path, tiny_model_dir, base, name, strength=strength)
        rows.append(load_file(version.path / "memory_layer.safetensors"))
    assert torch.equal(rows[0]["row_index"], rows[1]["row_index"]) and rows[0]["rows"].abs().max() > 0
    assert torch.allclose(rows[1]["rows"], 0.5 * rows[0]["rows"])  # the same training, only the scale differs


def test_the_memory_goes_beside_the_layer_the_config_names(method, base):
    model = method.attach(base.model, config(layers=(0,)))
    try:
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.layers.0.mlp.memory.rows"]
    finally:
        method.detach(model)
    with pytest.raises(ValueError, match="does not exist"):
        method.attach(base.model, config(layers=(7,)))
    with pytest.raises(ValueError, match="one layer for memory_layer"):
        config(layers=(0, 1))


def test_the_gate_keeps_reads_like_the_training_queries_and_survives_save_load(method, base, tmp_path):
    tok = base.tokenizer
    items = qa_items(tok)
    cfg = config(memory_trainable_rows=32, epochs=5, lr=5e-2)
    model = method.attach(base.model, cfg)
    try:
        method.prepare(model, items, [])
        memory = wrapper(model).memory
        assert memory.centroids.shape == (32, memory.query.shape[1])
        read = memory.centroids.norm(dim=-1) > 0
        assert read.any() and torch.allclose(memory.centroids[read].norm(dim=-1), torch.ones(int(read.sum())))
        table = memory.gate_table
        assert len(table) == 101 and table == sorted(table) and table[-1] <= 1 + 1e-6
        train(model, tok, items, len(items), cfg, tmp_path / "run", progress=False)
        open_ = logits(model, tok, COMMON)
        method.set_gate(model, 0.5)
        assert memory.threshold() == pytest.approx(table[50])
        half = logits(model, tok, COMMON)
        method.set_gate(model, 0.99)
        shut = logits(model, tok, COMMON)
        with method.disabled(model):
            plain = logits(model, tok, COMMON)
        # a higher gate keeps fewer reads: the output moves toward the base's, never away from it
        assert (shut - plain).abs().sum() <= (half - plain).abs().sum() <= (open_ - plain).abs().sum()
        assert not torch.equal(open_, half)
        method.set_gate(model, 0.5)
        method.save(model, tmp_path)
        saved = json.loads((tmp_path / "memory_layer_config.json").read_text())
        assert saved["gate"] == 0.5 and saved["gate_table"] == table
    finally:
        base_model = method.detach(model)
    loaded = method.load(base_model, tmp_path)
    try:
        assert torch.equal(logits(loaded, tok, COMMON), half)
        method.set_gate(loaded, 0.0)
        assert torch.equal(logits(loaded, tok, COMMON), open_)
    finally:
        method.detach(loaded)
    with pytest.raises(ValueError, match="memory_gate"):
        TrainConfig(memory_gate=0.1)  # LoRA has no gate


def test_the_gate_cut_row_by_row_against_general_text_survives_save_load(method, base, tmp_path):
    tok = base.tokenizer
    items = qa_items(tok)
    texts = (COMMON, "A quiet morning in the harbour town, with rain.", "Who founded the old bridge company?")
    cfg = config(memory_trainable_rows=32, epochs=5, lr=5e-2)
    model = method.attach(base.model, cfg)
    try:
        method.prepare(model, items, [])
        with pytest.raises(ValueError, match="no contrast"):
            method.set_gate(model, 0.0, contrast=0.1)
        method.prepare(model, items, [(tok(text)["input_ids"],) for text in texts])
        train(model, tok, items, len(items), cfg, tmp_path / "run", progress=False)
        method.set_gate(model, 0.0, contrast=0.2)
        memory = wrapper(model).memory
        cuts = memory.cuts()
        assert cuts.isfinite().any()  # the general text read some trained row: it is cut there
        gated = [logits(model, tok, text) for text in (SPECIFIC, *texts)]
        method.save(model, tmp_path)
        stored = memory.rows.detach().abs().amax(-1) > 0
    finally:
        base_model = method.detach(model)
    loaded = method.load(base_model, tmp_path)
    try:
        memory = wrapper(loaded).memory
        assert memory.gate_contrast == 0.2 and torch.equal(memory.cuts()[:-1], cuts[:-1][stored])
        assert all(torch.equal(logits(loaded, tok, text), g) for text, g in zip((SPECIFIC, *texts), gated))
        method.set_gate(loaded, 0.3, contrast=0.0)  # the one cosine for every row
        one = memory.cuts()
        assert torch.equal(one[:-1], torch.full_like(one[:-1], memory.threshold()))
        method.set_gate(loaded, 0.3, contrast=0.2)  # both: the higher cut of each row
        assert torch.equal(memory.cuts(), torch.maximum(one, cuts[torch.cat([stored, torch.tensor([True])])]))
        with pytest.raises(ValueError, match="in \\[0, 1\\)"):
            method.set_gate(loaded, 0.0, contrast=1.0)
    finally:
        method.detach(loaded)


def test_learn_gates_row_by_row_against_the_guards_text(method, tmp_path, workspace, tiny_model_dir, base):
    version = learn_handbook(tmp_path, tiny_model_dir, base, "m", memory_gate=0.1, memory_gate_contrast=0.2)
    saved = json.loads((version.path / "memory_layer_config.json").read_text())
    assert saved["gate"] == 0.1 and saved["gate_contrast"] == 0.2 and saved["contrast_reads"] > 0
    assert "contrast_cut" in load_file(version.path / "memory_layer.safetensors")
    assert isinstance(ask("m", "Who founded Fjordlight Instruments?", base=base), str)
    for bad in ({"memory_gate_contrast": 0.1, "replay_fraction": 0.0}, {"memory_gate_contrast": 1.0}):
        with pytest.raises(ValueError, match="memory_gate_contrast"):
            TrainConfig(method="memory_layer", **bad)
    with pytest.raises(ValueError, match="memory_gate_contrast"):
        TrainConfig(memory_gate_contrast=0.1)  # LoRA has no gate
