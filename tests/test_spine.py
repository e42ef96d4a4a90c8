"""The learn -> ask path end to end on the tiny model: files written, manifest, resume, caching, versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inweights import InweightsError, LearnConfig, SynthConfig, TrainConfig, Workspace, ask, learn, load_memory
from inweights.models import load_base
from inweights.store import validate_name

DOC = """# Fjordlight Instruments

Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. The Oslo office opened in March 2019.
The TideLog 300 sensor costs 1,450 euros. The annual party, Lanternfest, takes place on Rovoy.
"""


@pytest.fixture()
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "handbook.md").write_text(DOC)
    (folder / "notes.txt").write_text("The Bergen office has 34 employees and opened in April 2016.\n")
    return folder


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def small_config(tiny_model_dir, **train) -> LearnConfig:
    """Teacher strategies on, but few of everything so the suite stays fast."""
    return LearnConfig(
        base=str(tiny_model_dir),
        synth=SynthConfig(strategies=("cloze", "qa", "rephrase"), questions_per_fact=1, rephrases_per_sentence=1,
                          facts_per_sentence=1, chunk_tokens=128, statements=True),
        train=TrainConfig(**({"epochs": 2, "replay_sequences": 4, "batch_tokens": 512, "checkpoint_every": 3} | train)),
    )


def test_learn_then_ask_writes_a_versioned_memory(docs, workspace, tiny_model_dir, base):
    version = learn([docs], "acme", small_config(tiny_model_dir), base=base, progress=False)

    assert version.path == workspace / "memories" / "acme" / "v1"
    assert sorted(p.name for p in version.path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    adapter = json.loads((version.path / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 16
    weights = load_file(version.path / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert not list((workspace / "memories" / "acme").glob(".staging*"))
    assert not list((workspace / "runs").rglob("checkpoint"))  # removed once training finished

    answer = ask("acme", "Who founded Fjordlight Instruments?", base=base)
    assert isinstance(answer, str)
    # The base model is left without the memory attached after learn and ask.
    assert not any("lora" in n for n, _ in base.model.named_parameters())


def test_manifest_records_everything_that_made_the_memory(docs, workspace, tiny_model_dir, base):
    version = learn([docs], "acme", small_config(tiny_model_dir), base=base, progress=False)
    m = version.manifest
    assert m["name"] == "acme" and m["method"] == "lora"
    assert m["base"] == {"name": str(tiny_model_dir), "fingerprint": base.fingerprint, "dtype": "float32",
                         "device": "cpu", "prompt_format": "plain"}
    assert {d["path"] for d in m["documents"]} == {"handbook.md", "notes.txt"}
    assert all(len(d["sha256"]) == 64 and d["chunks"] >= 1 for d in m["documents"])
    assert m["config"]["train"]["epochs"] == 2 and m["config"]["synth"]["questions_per_fact"] == 1
    assert LearnConfig.from_dict(m["config"]) == LearnConfig.from_dict(m["config"])  # round-trips
    synth = m["synthetic"]
    assert synth["examples"] > 0 and set(synth["by_strategy"]) == {"cloze", "qa", "rephrase"}
    assert 0 < synth["diversity"]["distinct_2"] <= 1 and sum(synth["diversity"]["by_kind"].values()) == synth["examples"]
    assert synth["by_strategy"]["qa"]["made"] > 0  # the teacher ran; its drops are counted by reason
    assert m["training"]["steps"] > 0 and m["training"]["tokens"] > 0
    assert {"load_base_s", "synthesize_s", "train_s", "total_s"} <= set(m["timings"])


def test_relearning_makes_a_new_version_and_reuses_cached_examples(docs, workspace, tiny_model_dir, base):
    config = small_config(tiny_model_dir)
    first = learn([docs], "acme", config, base=base, progress=False)
    (docs / "notes.txt").write_text("The Bergen office has 35 employees and opened in April 2016.\n")
    second = learn([docs], "acme", config, base=base, progress=False)

    assert (first.version, second.version) == (1, 2)
    assert Workspace().get("acme").version == 2 and Workspace().get("acme@1").version == 1
    stats = second.manifest["synthetic"]["by_strategy"]
    # handbook.md is unchanged: its chunks come from the cache; notes.txt changed and is regenerated.
    assert stats["cloze"]["chunks_from_cache"] == first.manifest["documents"][0]["chunks"]
    assert first.manifest["documents"][1]["sha256"] != second.manifest["documents"][1]["sha256"]


def test_same_seed_gives_the_same_memory(docs, tmp_path, monkeypatch, tiny_model_dir, base):
    weights = []
    for run in ("a", "b"):
        monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / run))
        version = learn([docs], "acme", small_config(tiny_model_dir), base=base, progress=False)
        weights.append(load_file(version.path / "adapter_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_init_seed_sets_the_memorys_start_and_seed_the_datas_order(docs, tmp_path, monkeypatch, tiny_model_dir,
                                                                    base):
    import inweights.api as api
    import inweights.train as train_module

    seen = []
    real_train, real_plan = api.train, train_module.run_plan

    def record_start(model, *args, **kwargs):
        seen.append({"start": next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()})
        return real_train(model, *args, **kwargs)

    def record_plan(*args, **kwargs):
        seen[-1]["plan"] = real_plan(*args, **kwargs)
        return seen[-1]["plan"]

    monkeypatch.setattr(api, "train", record_start)
    monkeypatch.setattr(train_module, "run_plan", record_plan)
    for i, train in enumerate(({"seed": 0}, {"seed": 1}, {"seed": 0, "init_seed": 1})):
        monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / str(i)))
        learn([docs], "acme", small_config(tiny_model_dir, replay_fraction=0, **train), base=base, progress=False)
    zero, one, mixed = seen
    assert not torch.equal(zero["start"], one["start"]) and zero["plan"] != one["plan"]
    assert torch.equal(mixed["start"], one["start"]) and mixed["plan"] == zero["plan"]


def test_interrupted_training_resumes_to_the_same_memory(docs, tmp_path, monkeypatch, tiny_model_dir, base):
    import inweights.train as train_module

    config = small_config(tiny_model_dir, epochs=3)
    monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / "straight"))
    straight = learn([docs], "acme", config, base=base, progress=False)

    monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / "interrupted"))
    real_save = train_module._save_checkpoint
    saves = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(args[3])
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed right after the second checkpoint

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        learn([docs], "acme", config, base=base, progress=False)
    assert not Workspace().versions("acme")  # nothing half-written became visible
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed = learn([docs], "acme", config, base=base, progress=False)

    assert resumed.manifest["training"]["resumed_from_step"] == saves[-1] > 0
    a = load_file(straight.path / "adapter_model.safetensors")
    b = load_file(resumed.path / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_interrupted_seeds_keep_the_finished_seed_and_resume_the_other(docs, tmp_path, monkeypatch, tiny_model_dir,
                                                                        base):
    import inweights.api as api
    import inweights.train as train_module

    config = small_config(tiny_model_dir, epochs=3, seeds=2)
    monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / "straight"))
    straight = learn([docs], "acme", config, base=base, progress=False)

    monkeypatch.setenv("INWEIGHTS_HOME", str(tmp_path / "interrupted"))
    real_save, real_train = train_module._save_checkpoint, api.train

    def die_in_the_second_seed(directory, *args, **kwargs):
        real_save(directory, *args, **kwargs)
        if directory.parent.name == "seed1":
            raise KeyboardInterrupt  # killed right after the second seed's first checkpoint

    monkeypatch.setattr(train_module, "_save_checkpoint", die_in_the_second_seed)
    with pytest.raises(KeyboardInterrupt):
        learn([docs], "acme", config, base=base, progress=False)
    assert not Workspace().versions("acme")
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    trained = []
    monkeypatch.setattr(api, "train", lambda *a, **k: trained.append(a[4].seed) or real_train(*a, **k))
    resumed = learn([docs], "acme", config, base=base, progress=False)

    assert trained == [1] and resumed.manifest["training"]["resumed_from_step"] > 0  # seed 0 was not trained again
    a = load_file(straight.path / "adapter_model.safetensors")
    b = load_file(resumed.path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_failed_write_leaves_no_version(workspace):
    def broken(directory: Path):
        (directory / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        Workspace().publish("acme", broken)
    assert Workspace().versions("acme") == []
    assert list((workspace / "memories" / "acme").iterdir()) == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "UPPER", "x" * 65, "acme@1", "a b"])
def test_memory_names_are_validated(name):
    with pytest.raises(InweightsError):
        validate_name(name)


def test_unknown_memory_and_version_give_clear_errors(workspace):
    with pytest.raises(InweightsError, match="no memory named 'nope'"):
        Workspace().get("nope")
    with pytest.raises(InweightsError, match="invalid version"):
        Workspace().get("nope@x")


def test_learn_with_nothing_readable_fails_clearly(tmp_path, workspace, tiny_model_dir, base):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(InweightsError):
        learn([tmp_path / "blob.txt"], "acme", small_config(tiny_model_dir), base=base, progress=False)


def test_evaluation_questions_never_reach_training(docs, workspace, tiny_model_dir, base):
    leaked = "Fjordlight Instruments was founded by Ingrid Vassbotn in when"  # an echo question cloze makes
    config = small_config(tiny_model_dir)
    config.synth = SynthConfig(strategies=("cloze",), facts_per_sentence=1)
    version = learn([docs], "acme", config, base=base, exclude_questions=[leaked], progress=False)
    assert version.manifest["synthetic"]["dropped_matching_eval_questions"] == 1
    clean = learn([docs], "acme", config, base=base, progress=False)
    assert clean.manifest["synthetic"]["examples"] == version.manifest["synthetic"]["examples"] + 1


def test_load_memory_base_answers_match_the_plain_base(docs, workspace, tiny_model_dir, base):
    learn([docs], "acme", small_config(tiny_model_dir, lr=5e-2), base=base, progress=False)
    questions = ["Who founded Fjordlight?", "When did the Oslo office open?"]
    plain = load_memory(None, base=base).answer(questions)
    loaded = load_memory("acme", base=base)
    try:
        assert loaded.base_answers(questions) == plain
    finally:
        loaded.close()


def test_context_distillation_targets_align_with_the_completion(tiny_model_dir, base, tmp_path):
    """The teacher's top-k at each completion position equals a direct forward of chunk + example."""
    from inweights.objectives import distill_rows
    from inweights.synth import Example

    chunk_text = "The Oslo office opened in March 2019."
    examples = [Example("Question: When did the Oslo office open?\nAnswer:", " March 2019", "cloze", "c" * 64,
                        "d.md", "d" * 64, "none"),
                Example("", "The Oslo office opened in March 2019.", "cloze", "c" * 64, "d.md", "d" * 64, "none")]
    rows = distill_rows(base, examples, {"c" * 64: chunk_text}, 64, base.newline_id, tmp_path, top_k=5,
                        progress=False)
    tok = base.tokenizer
    for example, (ids, labels, (start, top_ids, top_logprobs)) in zip(examples, rows):
        assert all(x == -100 for x in labels)
        full = tok(chunk_text + "\n\n")["input_ids"] + ids[1:]
        with torch.no_grad():
            logprobs = torch.log_softmax(base.model(torch.tensor([full])).logits[0].float(), -1)
        offset = len(full) - len(ids)  # where the student's position 0 sits in the teacher's sequence
        expected = logprobs[offset + start : offset + start + top_ids.shape[0]].topk(5, -1)
        assert start + top_ids.shape[0] == len(ids) - 1  # scores up to the last token
        assert torch.equal(expected.indices, top_ids)
        assert torch.allclose(expected.values, top_logprobs, atol=1e-4)
    # cached: a second call reads the file
    again = distill_rows(base, examples, {"c" * 64: chunk_text}, 64, base.newline_id, tmp_path, top_k=5,
                         progress=False)
    assert all(torch.equal(a[2][1], b[2][1]) for a, b in zip(rows, again))


def test_learn_with_the_distillation_objective(docs, workspace, tiny_model_dir, base):
    config = small_config(tiny_model_dir, objective="distill")
    version = learn([docs], "acme", config, base=base, progress=False)
    assert version.manifest["config"]["train"]["objective"] == "distill"
    assert version.manifest["training"]["loss_tokens"] > 0


def test_qa_warmup_mixes_questions_about_the_general_text(docs, workspace, tiny_model_dir, base):
    from inweights.train import plan_batches

    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("facts",), views=False),
                         train=TrainConfig(epochs=1, replay_sequences=6, warmup_fraction=0.3, batch_tokens=512))
    version = learn([docs], "acme", config, base=base, progress=False)
    synth = version.manifest["synthetic"]
    assert synth["warmup_examples"] > 0 and synth["replay_sequences"] > 0
    # Each epoch: the examples, then replay and warm-up rows at their shares of all sequences.
    plan = plan_batches([10] * 100, 50, 20, 0.2, 1, 10_000, seed=0, n_warmup=30, warmup_fraction=0.3)
    rows = [i for batch in plan for i in batch]
    assert sum(i < 50 for i in rows) == 50 and sum(50 <= i < 70 for i in rows) == 20
    assert sum(i >= 70 for i in rows) == 30


def test_held_out_wordings_are_measured_and_recorded(docs, workspace, tiny_model_dir, base):
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(),
                         train=TrainConfig(exposures=4, holdout=0.3, checkpoint_every=2, replay_fraction=0.0,
                                           batch_tokens=512))
    m = learn([docs], "acme", config, base=base, progress=False).manifest
    assert m["synthetic"]["held_out_wordings"] > 0 and m["synthetic"]["items_per_fact"] > 1
    assert m["config"]["train"]["epochs"] == -(-4 // m["synthetic"]["items_per_fact"])  # ceil(exposures / items)
    assert m["training"]["validation"] and m["training"]["best_step"] is not None
