"""The forgetting guard's general text: the cache, and the embedded model's texts shipped with the package."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from inweights import guard
from inweights.config import TrainConfig

EMBEDDED_FINGERPRINT = "sha256:cf4e538230192cf987f7ff033d906fd151bbfef797688e662d8214ea3115bf04"
"""The fingerprint of the embedded gemma-3-270m as converted from its GGUF (checked again on a fresh conversion)."""


def _name(fingerprint: str, n: int, seed: int = 0) -> str:
    return guard.texts_file_name(fingerprint, n, seed, max_new_tokens=64)


def test_the_default_guard_text_of_the_embedded_model_ships_with_the_package():
    config = TrainConfig()
    path = guard.SHIPPED / _name(EMBEDDED_FINGERPRINT, config.replay_sequences, config.seed)
    assert path.is_file(), "the shipped guard text no longer matches the default (replay_sequences, seed, _SEEDS)"
    data = json.loads(path.read_text())
    assert data["base"] == EMBEDDED_FINGERPRINT
    assert len(data["texts"]) > 0.95 * config.replay_sequences
    assert all(any(t.startswith(s) for s in guard._SEEDS) for t in data["texts"])


def test_shipped_texts_are_used_only_for_their_own_base(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(guard, "SHIPPED", shipped)
    (shipped / _name('sha256:abc', 3)).write_text(json.dumps({"base": "sha256:abc", "texts": ["a", "b"]}))
    # a file under another base's name (a renamed or stale file) is not trusted
    (shipped / _name('sha256:xyz', 3)).write_text(json.dumps({"base": "sha256:abc", "texts": ["c"]}))
    assert guard.replay_texts(SimpleNamespace(fingerprint="sha256:abc"), 3, tmp_path / "cache") == ["a", "b"]
    with pytest.raises(AttributeError):  # not shipped: falls through to writing them with the (absent) model
        guard.replay_texts(SimpleNamespace(fingerprint="sha256:xyz"), 3, tmp_path / "cache")


def test_written_texts_are_cached_and_read_back(tiny_model_dir, tmp_path):
    from inweights.models import load_base

    tiny_base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    first = guard.replay_texts(tiny_base, 4, tmp_path, max_new_tokens=8, progress=False)
    assert first and len(list(tmp_path.glob("*.json"))) == 1
    assert guard.replay_texts(tiny_base, 4, tmp_path, max_new_tokens=8, progress=False) == first


def test_texts_sampled_from_the_whole_distribution_are_cached_apart(tiny_model_dir, tmp_path):
    from inweights.models import load_base

    assert _name("sha256:abc", 3) == guard.texts_file_name("sha256:abc", 3, 0, 64, top_k=guard.SAMPLE_TOP_K)
    tiny_base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    cut = guard.replay_texts(tiny_base, 4, tmp_path, max_new_tokens=8, progress=False)
    whole = guard.replay_texts(tiny_base, 4, tmp_path, max_new_tokens=8, progress=False, top_k=0)
    assert len(list(tmp_path.glob("*.json"))) == 2 and whole and whole != cut
    assert guard.cached_texts(tiny_base, 4, tmp_path, max_new_tokens=8, top_k=0) == whole
    with pytest.raises(ValueError, match="replay_top_k"):
        TrainConfig(replay_top_k=-1)


def test_sampling_without_a_top_k_cut_reaches_rare_tokens():
    import torch

    from inweights.generate import _pick

    logits = torch.zeros(1, 1000)
    logits[0, :10] = 8.0  # ten likely tokens hold ~97% of the mass; the other 990 share the rest
    generator = torch.Generator().manual_seed(0)
    picks = [int(_pick(logits, 1.0, 0, 1.0, generator)) for _ in range(400)]
    assert any(p >= 10 for p in picks)
    assert all(int(_pick(logits, 1.0, 10, 1.0, generator)) < 10 for _ in range(100))


TEXTS = [f"{seed} the river flows past the old mill and the village of number {i} in the valley below."
         for i, seed in enumerate(["The history of", "In mathematics,", "Farmers", "The film", "Music has", "Water is"])]


def _forward_rows(base):
    """Counts the rows that go through the base model's backbone."""
    seen = []
    base.model.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    return seen


def test_targets_are_computed_only_for_needed_rows_and_cached_row_by_row(tiny_model_dir, tmp_path):
    import torch

    from inweights.models import load_base

    base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    full = guard.replay_targets(base, TEXTS, tmp_path / "all", top_k=4)
    assert len(full) == len(TEXTS) and all(ids is not None for _, ids, _ in full)
    # The reference: log-softmax over the whole vocabulary of the model's own logits, top k.
    row = full[2][0]
    reference = torch.log_softmax(base.model(input_ids=torch.tensor([row])).logits[0, :-1].float(), -1).topk(4, -1)
    assert torch.equal(full[2][1], reference.indices)
    torch.testing.assert_close(full[2][2], reference.values, rtol=0, atol=1e-5)

    seen = _forward_rows(base)
    lazy = guard.replay_targets(base, TEXTS, tmp_path / "lazy", top_k=4, needed={0, 3})
    assert [ids is not None for _, ids, _ in lazy] == [True, False, False, True, False, False]
    assert sum(seen) == 2
    more = guard.replay_targets(base, TEXTS, tmp_path / "lazy", top_k=4, needed=[3, 4])
    assert sum(seen) == 3  # row 3 came from the cache; only row 4 was computed
    assert [ids is not None for _, ids, _ in more] == [False, False, False, True, True, False]
    for i in (0, 3, 4):
        got = (lazy if i == 0 else more)[i]
        assert got[0] == full[i][0] and torch.equal(got[1], full[i][1])
        torch.testing.assert_close(got[2], full[i][2], rtol=0, atol=1e-6)


def test_learn_computes_guard_targets_only_for_the_rows_it_draws(tmp_path, workspace, tiny_model_dir):
    """The run draws a fraction of the guard's rows; the others never get targets, and training (which refuses a
    drawn row without targets) still runs: `replay_drawn` names every row the run draws."""
    from inweights import LearnConfig, SynthConfig, learn
    from inweights.models import load_base
    from inweights.train import train

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. "
                               "The Oslo office opened in March 2019.\n")
    base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("facts",), views=False),
                         train=TrainConfig(epochs=1, replay_sequences=48, batch_tokens=512))
    synthetic = learn([docs], "acme", config, base=base, progress=False).manifest["synthetic"]
    assert 0 < synthetic["replay_drawn"] < synthetic["replay_sequences"]

    rows = [(list(range(2, 12)), [-100] * 9 + [5]) for _ in range(8)]
    replay = [(list(range(2, 20)), None, None)] * 8
    with pytest.raises(ValueError, match="no targets"):
        train(base.model, base.tokenizer, rows, len(rows), TrainConfig(epochs=1, replay_fraction=0.5),
              tmp_path / "run", progress=False, replay=replay)


def test_replay_tokens_cuts_the_guard_rows_and_their_targets_to_a_prefix(workspace, tiny_model_dir):
    """`replay_tokens` trains the guard on the first N tokens of each row, with the prefix of that row's targets
    (the same numbers: a causal model's next-token targets for a prefix do not depend on what follows)."""
    import torch

    from inweights.api import _guard_rows
    from inweights.config import SynthConfig
    from inweights.models import load_base
    from inweights.store import Workspace

    base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    items = [(list(range(2, 12)), [-100] * 9 + [5]) for _ in range(40)]

    def rows(**fields):
        config = TrainConfig(epochs=2, replay_sequences=16, replay_fraction=0.5, **fields)
        return _guard_rows(base, config, SynthConfig(), Workspace(), None, [], items, len(items), progress=False)[0]

    whole, cut = rows(), rows(replay_tokens=12)
    assert max(len(ids) for ids, _, _ in whole) > 12
    assert len(whole) == len(cut)
    drawn = 0
    for (ids, top, logp), (cut_ids, cut_top, cut_logp) in zip(whole, cut):
        assert cut_ids == ids[:12]
        if cut_top is not None:
            drawn += 1
            assert top is not None and cut_top.shape[0] == len(cut_ids) - 1
            assert torch.equal(cut_top, top[: len(cut_ids) - 1]) and torch.equal(cut_logp, logp[: len(cut_ids) - 1])
    assert drawn > 0
    with pytest.raises(ValueError, match="replay_tokens"):
        TrainConfig(replay_tokens=1)


def test_guard_questions_add_qa_rows_about_the_guards_text_with_the_base_models_targets(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    """`guard_questions` makes that share of the guard's rows questions and answers about its general text, in the
    QA format, with the base model's targets like the plain rows; the plain rows and their cached targets stay."""
    import torch

    import inweights.api as api
    from inweights.config import SynthConfig
    from inweights.models import load_base
    from inweights.store import Workspace
    from inweights.synth import ExampleCache

    base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    texts = [f"The Oslo office of Fjordlight opened in March {2000 + i}. Maria Berg founded the Harbor Guild in "
             f"{1800 + i}, and the guild built the lighthouse at Vard." for i in range(8)]
    monkeypatch.setattr(api, "replay_texts", lambda *args, **kwargs: texts)  # English the parser can ask about
    items = [(list(range(2, 12)), [-100] * 9 + [5]) for _ in range(40)]
    workspace = Workspace(tmp_path / "home")

    def rows(share):
        config = TrainConfig(epochs=2, replay_sequences=8, replay_fraction=0.5, guard_questions=share)
        return api._guard_rows(base, config, SynthConfig(), workspace, ExampleCache(tmp_path / "synth"), [], items,
                               len(items), progress=False)[0]

    plain, mixed = rows(0.0), rows(0.5)
    assert len(plain) == 8 and len(mixed) == 16 and [r[0] for r in mixed[:8]] == [r[0] for r in plain]
    both = [(a, b) for a, b in zip(plain, mixed) if a[1] is not None and b[1] is not None]  # drawn by both runs
    assert both and all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in both)
    questions = [base.tokenizer.decode(ids) for ids, _, _ in mixed[8:]]
    assert all("Question:" in q and "\nAnswer: " in q for q in questions)
    drawn = [(ids, top) for ids, top, _ in mixed[8:] if top is not None]
    assert drawn and all(top.shape[0] == len(ids) - 1 for ids, top in drawn)
    with pytest.raises(ValueError, match="guard_questions"):
        TrainConfig(guard_questions=1.0)


def test_the_tail_bucket_makes_the_guard_penalise_sharpening():
    """The guard's KL over the base model's top k: renormalised, it rewards a student that moves the rest of the
    vocabulary's probability onto the top k (below its value at the teacher itself); with the rest as one more
    outcome it is zero at the teacher and rises with that sharpening."""
    import torch

    from inweights.train import soft_kl

    torch.manual_seed(0)
    logits = torch.randn(5, 1000) * 2
    teacher = torch.log_softmax(logits, -1)
    top = teacher.topk(8, -1)
    sharp = torch.log_softmax(logits * 1.5, -1).gather(-1, top.indices)  # more mass on the top k, same order
    at_teacher = soft_kl(top.values, top.values, tail=True)
    assert abs(float(at_teacher)) < 1e-5
    assert float(soft_kl(sharp, top.values, tail=True)) > 0.05
    assert float(soft_kl(sharp, top.values, tail=False)) < float(soft_kl(top.values, top.values, tail=False)) - 0.05


def test_a_damaged_targets_file_is_computed_again(tiny_model_dir, tmp_path):
    import torch

    from inweights.models import load_base

    base = load_base(str(tiny_model_dir), dtype="float32", device="cpu")
    first = guard.replay_targets(base, TEXTS, tmp_path, top_k=4, needed=[1])
    (path,) = tmp_path.glob("*.targets.safetensors")
    assert guard.cached_rows(base, TEXTS, tmp_path, top_k=4) == 1
    path.write_bytes(b"not a safetensors file")
    assert guard.cached_rows(base, TEXTS, tmp_path, top_k=4) == 0
    again = guard.replay_targets(base, TEXTS, tmp_path, top_k=4, needed=[1])
    assert torch.equal(again[1][1], first[1][1]) and guard.cached_rows(base, TEXTS, tmp_path, top_k=4) == 1
