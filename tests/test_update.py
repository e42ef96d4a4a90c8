"""Memories that keep up: learn --update, newer facts win, forget, rollback, diff, rm, the per-memory lock."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from inweights import InweightsError, LearnConfig, SynthConfig, TrainConfig, Workspace, learn
from inweights.api import forget
from inweights.cli import main
from inweights.models import load_base
from inweights.synth import Example
from inweights.train import IGNORE, UNLIKELY, completion_loss, tokenize_example
from inweights.update import contrast, delta, unlikely_rows
from inweights.versions import diff, record_evaluation, remove, render_diff, rollback

COMPANY = """# Fjordlight Instruments

Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. The Oslo office opened in March 2019.
The TideLog 300 sensor costs 1,450 euros.
"""
BERGEN = "The Bergen office has 34 employees. The Bergen office opened in April 2016.\n"
PARTY = "The annual party, Lanternfest, takes place on Rovoy. Lanternfest was first held in 2014.\n"


@pytest.fixture()
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def config(tiny_model_dir, **train) -> LearnConfig:
    return LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("facts",), chunk_tokens=128),
                       train=TrainConfig(**({"epochs": 2, "replay_sequences": 4, "batch_tokens": 512,
                                             "checkpoint_every": 5} | train)))


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def example(prompt: str, completion: str, doc: str = "a.md", chunk: str = "c1") -> Example:
    return Example(f"Question: {prompt}\nAnswer:", " " + completion, "facts:q", chunk, doc, "d", "none")


# --- the data of an update -------------------------------------------------------------------------------------


def record(path, sha, chunks):
    return {"path": path, "sha256": sha, "kind": "md", "chunks": len(chunks), "chunk_sha256": chunks}


def test_delta_names_documents_and_chunks_that_changed():
    old = [record("a.md", "A1", ["x", "y"]), record("b.md", "B1", ["z"]), record("c.md", "C1", ["w"])]
    new = [record("a.md", "A2", ["x", "y2"]), record("b.md", "B1", ["z"]), record("d.md", "D1", ["v"])]
    d = delta(old, new)
    assert (d.added, d.changed, d.removed, d.unchanged) == (["d.md"], ["a.md"], ["c.md"], ["b.md"])
    assert d.fresh_chunks == {"y2", "v"}
    # a.md's unchanged chunk x is gone too (its document's hash changed, so its cache key did): only its
    # examples whose question is no longer asked count as changed or removed facts.
    assert {c["sha256"] for c in d.gone_chunks} == {"x", "y", "w"}
    assert not delta(old, old).gone_chunks and delta(old, old).empty


def test_contrast_finds_changed_and_removed_facts_and_spares_what_is_still_true():
    old = [example("When did the Oslo office open?", "March 2019"),
           example("Who founded Fjordlight?", "Ingrid Vassbotn"),
           example("What does the sensor cost?", "1,450 euros"),
           example("Where is Lanternfest held?", "Rovoy", doc="party.md"),
           example("What opened in March 2019?", "the Oslo office")]
    current = [example("When did the Oslo office open?", "May 2020"),
               example("Who founded Fjordlight?", "Ingrid Vassbotn"),
               example("Which office opened first?", "the Oslo office")]  # the same answer, still in a.md
    changed, removed = contrast(old, current)
    assert [(o.completion, n.completion) for o, n in changed] == [(" March 2019", " May 2020")]
    assert [e.completion for e in removed] == [" 1,450 euros", " Rovoy"]


def test_unlikely_rows_label_only_the_first_token_that_differs(tiny_model_dir, base):
    old = example("When did the Oslo office open?", "March 2019")
    new = example("When did the Oslo office open?", "March 2020")
    (ids, labels, kind), = unlikely_rows(base.tokenizer, [(old, new)], 256, base.newline_id)
    new_ids, _ = tokenize_example(base.tokenizer, new.prompt, new.completion, 256, base.newline_id)
    at = [i for i, label in enumerate(labels) if label != IGNORE]
    assert kind == UNLIKELY and len(at) == 1
    assert ids[: at[0]] == new_ids[: at[0]] and ids[at[0]] != new_ids[at[0]]  # "March" is shared, kept likely
    assert unlikely_rows(base.tokenizer, [(old, old)], 256, base.newline_id) == []


def test_unlikelihood_loss_is_minus_log_one_minus_p_and_lowers_p(base):
    model = base.model
    old = example("When did the Oslo office open?", "March 2019")
    ids, labels = tokenize_example(base.tokenizer, old.prompt, old.completion, 256, base.newline_id)
    split = next(i for i, label in enumerate(labels) if label != IGNORE)
    labels = [IGNORE] * split + [ids[split]] + [IGNORE] * (len(ids) - split - 1)
    x, y, mask = torch.tensor([ids]), torch.tensor([labels]), torch.ones(1, len(ids), dtype=torch.long)

    def p_old():
        with torch.no_grad():
            return torch.softmax(model(input_ids=x).logits[0, split - 1].float(), -1)[ids[split]].item()

    before = p_old()
    loss = completion_loss(model, x, mask, y, unlikely=[0])
    assert loss.item() == pytest.approx(-math.log(1 - before), rel=1e-3)
    assert completion_loss(model, x, mask, y).item() == pytest.approx(-math.log(before), rel=1e-3)
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=0.5)
    state = {id(p): p.detach().clone() for p in params}
    for _ in range(3):
        optimizer.zero_grad()
        completion_loss(model, x, mask, y, unlikely=[0]).backward()
        optimizer.step()
    assert p_old() < before
    with torch.no_grad():  # the session's base model is shared by other tests: put it back
        for p, flag in zip(params, flags):
            p.copy_(state[id(p)])
            p.requires_grad_(flag)


# --- learn --update end to end ----------------------------------------------------------------------------------


def test_update_trains_the_delta_from_the_newest_version(tmp_path, workspace, tiny_model_dir, base):
    docs = write(tmp_path / "docs", {"company.md": COMPANY, "bergen.md": BERGEN, "party.md": PARTY})
    v1 = learn([docs], "acme", config(tiny_model_dir), base=base, progress=False)
    assert v1.manifest["lineage"] == {"mode": "full", "parent": None}
    assert all(len(d["chunk_sha256"]) == d["chunks"] for d in v1.manifest["documents"])

    write(docs, {"company.md": COMPANY.replace("March 2019", "May 2020"), "bergen.md": BERGEN,
                 "stavanger.md": "The Stavanger office opened in June 2022. It has 12 employees.\n"})
    v2 = learn([docs], "acme", config(tiny_model_dir), base=base, progress=False, update=True)
    m = v2.manifest
    assert v2.version == 2 and m["lineage"]["mode"] == "update" and m["lineage"]["parent"] == 1
    assert m["lineage"]["delta"]["added"] == ["stavanger.md"] and m["lineage"]["delta"]["changed"] == ["company.md"]
    assert m["lineage"]["delta"]["removed"] == ["party.md"]
    s = m["synthetic"]
    assert s["changed_facts"] >= 1 and s["unlikely_rows"] >= 1 and s["removed_facts"] >= 1
    assert s["fresh"] > 0 and s["rehearsed"] <= round(0.5 * (s["fresh"] + s["unlikely_rows"] + s["removed_facts"]))
    assert m["config"]["train"]["rank"] == v1.manifest["config"]["train"]["rank"]
    assert not any("lora" in n for n, _ in base.model.named_parameters())  # the base is given back plain

    # Nothing changed: the newest version is already up to date, and no version is made.
    assert learn([docs], "acme", config(tiny_model_dir), base=base, progress=False, update=True) == v2
    # Another method cannot be trained from this one: learned from scratch, and said so in the lineage.
    v3 = learn([docs], "acme", config(tiny_model_dir, method="tinylora"), base=base, progress=False, update=True)
    assert v3.manifest["lineage"]["mode"] == "full" and v3.manifest["lineage"]["parent"] == 2


def test_update_starts_from_the_parents_weights(tmp_path, workspace, tiny_model_dir, base):
    """With nothing to learn but one fact, the update's memory stays near its parent's, far from a fresh one."""
    from safetensors.torch import load_file

    docs = write(tmp_path / "docs", {"company.md": COMPANY, "bergen.md": BERGEN})
    v1 = learn([docs], "acme", config(tiny_model_dir), base=base, progress=False)
    write(docs, {"company.md": COMPANY, "bergen.md": BERGEN.replace("34", "35")})
    v2 = learn([docs], "acme", config(tiny_model_dir, lr=1e-5), base=base, progress=False, update=True)
    w1, w2 = (load_file(v / "adapter_model.safetensors") for v in (v1.path, v2.path))
    b = [k for k in w1 if "lora_B" in k]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-3) for k in b)
    assert v2.manifest["training"]["steps"] < v1.manifest["training"]["steps"]  # a small change, a short update
    assert any(w1[k].abs().max() > 1e-3 for k in b)  # (a fresh LoRA's B starts at zero)


def test_strength_scales_the_saved_update_and_an_update_keeps_it(tmp_path, workspace, tiny_model_dir, base):
    """strength < 1 is the same weights with a smaller alpha (served as saved); an update trains the update as it
    was trained, not as it was saved, and saves it at the parent's strength again."""
    from safetensors.torch import load_file

    from inweights.api import load_memory

    docs = write(tmp_path / "docs", {"company.md": COMPANY, "bergen.md": BERGEN})
    full = learn([docs], "full", config(tiny_model_dir), base=base, progress=False)
    half = learn([docs], "half", config(tiny_model_dir, strength=0.5), base=base, progress=False)
    alpha = [json.loads((v.path / "adapter_config.json").read_text())["lora_alpha"] for v in (full, half)]
    assert alpha == [32.0, 16.0]
    w_full, w_half = (load_file(v.path / "adapter_model.safetensors") for v in (full, half))
    assert all(torch.equal(w_full[k], w_half[k]) for k in w_full)  # the same training, only the scale differs
    from peft.tuners.lora import LoraLayer

    scalings = []
    for ref in ("full", "half"):  # as a server loads them: the scale comes from the saved alpha
        loaded = load_memory(ref, base=base)
        try:
            scalings.append([s for m in loaded.model.modules() if isinstance(m, LoraLayer) for s in m.scaling.values()])
        finally:
            loaded.close()
    assert scalings[0] and scalings[1] == [0.5 * s for s in scalings[0]]
    write(docs, {"company.md": COMPANY, "bergen.md": BERGEN.replace("34", "35")})
    v2 = learn([docs], "half", config(tiny_model_dir, lr=1e-9), base=base, progress=False, update=True)
    assert v2.manifest["config"]["train"]["strength"] == 0.5
    assert json.loads((v2.path / "adapter_config.json").read_text())["lora_alpha"] == 16.0
    w2 = load_file(v2.path / "adapter_model.safetensors")
    assert all(torch.allclose(w_half[k], w2[k], atol=1e-5) for k in w2)  # lr ~0: the weights as the parent's
    with pytest.raises(ValueError, match="strength"):
        TrainConfig(method="cartridge", strength=0.5)


def test_seeds_saves_the_mean_of_the_seeds_updates_and_an_update_trains_it(tmp_path, workspace, tiny_model_dir,
                                                                           base):
    """seeds=2 is the mean of the memories seeds 0 and 1 learn alone (one LoRA of twice the rank), its seeds'
    own memories are not left in the workspace, and `learn --update` trains the averaged memory once."""
    from inweights.api import load_memory

    docs = write(tmp_path / "docs", {"company.md": COMPANY, "bergen.md": BERGEN})
    # no guard: its general text is written per seed, so a lone seed 1 would train on other rows than seeds=2's
    singles = [learn([docs], f"seed{seed}", config(tiny_model_dir, seed=seed, replay_fraction=0), base=base,
                     progress=False) for seed in (0, 1)]
    soup = learn([docs], "soup", config(tiny_model_dir, seeds=2, strength=0.5, replay_fraction=0), base=base,
                 progress=False)
    adapter = json.loads((soup.path / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (32, 16.0)  # twice rank 16, alpha = rank times the strength
    assert soup.manifest["training"]["steps"] == sum(v.manifest["training"]["steps"] for v in singles)
    assert not list(workspace.glob("runs/soup/*/seed*"))

    def deltas(ref):
        loaded = load_memory(ref, base=base)
        try:
            return {name: module.get_delta_weight(module.active_adapters[0]).detach().clone()
                    for name, module in loaded.model.named_modules() if hasattr(module, "get_delta_weight")
                    and module.active_adapters and module.active_adapters[0] in module.lora_A}
        finally:
            loaded.close()

    one, two, mean = deltas("seed0"), deltas("seed1"), deltas("soup")
    assert mean and mean.keys() == one.keys()
    assert not torch.allclose(one[next(iter(one))], two[next(iter(one))])  # the seeds learned different updates
    for name in mean:
        assert torch.allclose(mean[name], 0.25 * (one[name] + two[name]), atol=1e-6)  # mean, times strength 0.5
    write(docs, {"company.md": COMPANY, "bergen.md": BERGEN.replace("34", "35")})
    v2 = learn([docs], "soup", config(tiny_model_dir), base=base, progress=False, update=True)
    assert v2.manifest["lineage"]["mode"] == "update" and v2.manifest["config"]["train"]["seeds"] == 1
    assert json.loads((v2.path / "adapter_config.json").read_text())["r"] == 32
    guarded = learn([docs], "guarded", config(tiny_model_dir, seeds=2), base=base, progress=False)
    assert guarded.manifest["synthetic"]["replay_drawn"] > 0  # targets for the rows either seed draws
    with pytest.raises(ValueError, match="seeds"):
        TrainConfig(method="memory_layer", seeds=2)


def test_forget_removes_a_documents_knowledge_without_its_files(tmp_path, workspace, tiny_model_dir, base):
    docs = write(tmp_path / "docs", {"company.md": COMPANY, "party.md": PARTY})
    learn([docs], "acme", config(tiny_model_dir), base=base, progress=False)
    write(docs, {})  # the documents are gone from disk: forget works from the memory and the cache
    with pytest.raises(InweightsError, match="no document"):
        forget("acme", ["nothing.md"], base=base, progress=False)
    v2 = forget("acme", [str(docs / "party.md")], base=base, progress=False, check=4)
    m = v2.manifest
    assert [d["path"] for d in m["documents"]] == ["company.md"]
    assert m["lineage"]["mode"] == "forget" and m["lineage"]["delta"]["removed"] == ["party.md"]
    assert m["synthetic"]["removed_facts"] > 0 and m["synthetic"]["fresh"] == 0
    assert m["forget_check"]["asked"] == 4 and 0 <= m["forget_check"]["answered_after"] <= 4
    with pytest.raises(InweightsError, match="leaves nothing"):
        forget("acme", ["company.md"], base=base, progress=False)


def test_a_failed_update_leaves_the_previous_version_newest(tmp_path, workspace, tiny_model_dir, base, monkeypatch):
    docs = write(tmp_path / "docs", {"company.md": COMPANY})
    learn([docs], "acme", config(tiny_model_dir), base=base, progress=False)
    write(docs, {"company.md": COMPANY.replace("2011", "2012")})

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr("inweights.api.train", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        learn([docs], "acme", config(tiny_model_dir), base=base, progress=False, update=True)
    assert [v.version for v in Workspace().versions("acme")] == [1]
    assert not list((workspace / "memories" / "acme").glob(".staging*"))
    assert not any("lora" in n for n, _ in base.model.named_parameters())


# --- versions ---------------------------------------------------------------------------------------------------


def test_the_lock_stops_a_second_run_on_the_same_memory(workspace):
    ws = Workspace()
    with ws.lock("acme", "inweights learn"):
        with pytest.raises(InweightsError, match="being changed by `inweights learn` \\(pid"):
            with ws.lock("acme", "inweights learn --update"):
                pass
        with ws.lock("other", "inweights learn"):  # another memory is independent
            pass
    with ws.lock("acme", "inweights forget"):  # released when the first run ended
        pass


def fake_version(ws: Workspace, name: str, docs: list[dict], rank: int = 16, marker: str = "1"):
    def fill(directory: Path) -> None:
        (directory / "adapter_model.safetensors").write_text(marker)
        manifest = {"name": name, "created": "2026-12-03T10:00:00+00:00", "method": "lora",
                    "base": {"name": "b", "fingerprint": "f"}, "documents": docs,
                    "config": LearnConfig(train=TrainConfig(rank=rank)).to_dict(),
                    "synthetic": {"examples": 1}, "training": {"steps": 1}, "timings": {"total_s": 1.0}}
        (directory / "manifest.json").write_text(json.dumps(manifest))

    return ws.publish(name, fill)


def test_rollback_diff_and_rm(workspace, capsys):
    ws = Workspace()
    fake_version(ws, "acme", [record("a.md", "A1", ["x"])], marker="one")
    fake_version(ws, "acme", [record("a.md", "A2", ["y"]), record("b.md", "B1", ["z"])], rank=8, marker="two")
    v3 = rollback("acme", 1)
    assert v3.version == 3 and (v3.path / "adapter_model.safetensors").read_text() == "one"
    assert v3.manifest["lineage"] == {"mode": "rollback", "parent": 2, "rolled_back_to": 1,
                                      "delta": delta(ws.get("acme@2").manifest["documents"],
                                                     ws.get("acme@1").manifest["documents"]).summary()}
    with pytest.raises(InweightsError, match="already the newest"):
        rollback("acme", 3)

    report = {"headline_metric": "em", "created": "now", "run": {"questions_file": "q.jsonl"},
              "questions": {"n": 10}, "conditions": {"memory": {"scores": {"em": 0.4}}},
              "forgetting": {"memory": {"mean_change_points": -1.5}}}
    record_evaluation(ws.get("acme@1"), report)
    record_evaluation(ws.get("acme@2"), report | {"conditions": {"memory": {"scores": {"em": 0.6}}}})
    d = diff("acme@1", "acme@2")
    assert d["documents"]["added"] == ["b.md"] and d["documents"]["changed"] == ["a.md"]
    assert d["config"]["train.rank"] == [16, 8]
    assert d["scores"]["q.jsonl"]["memory"] == [0.4, 0.6]
    text = render_diff(d)
    assert "+ b.md" in text and "~ a.md" in text and "train.rank: 16 -> 8" in text and "0.400 -> 0.600" in text

    assert main(["rm", "acme@3"]) == 2  # no terminal to confirm on, and no --yes: nothing deleted
    assert "confirm with --yes" in capsys.readouterr().err and ws.get("acme").version == 3
    assert main(["rm", "acme@3", "--yes"]) == 0
    assert ws.get("acme").version == 2  # the server follows the newest version: now v2
    assert fake_version(ws, "acme", [record("a.md", "A3", ["q"])]).version == 4  # numbers are never reused
    remove("acme")
    assert ws.versions("acme") == [] and "acme" not in ws.memories()


def test_cli_history_and_diff(workspace, capsys):
    ws = Workspace()
    fake_version(ws, "acme", [record("a.md", "A1", ["x"])])
    fake_version(ws, "acme", [record("a.md", "A2", ["y"])])
    assert main(["history", "acme", "--documents"]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out and "a.md" in out
    assert main(["diff", "acme@1", "acme"]) == 0
    assert "~ a.md" in capsys.readouterr().out


def test_forget_keeps_evaluation_questions_out_of_its_training_rows(tmp_path, workspace, tiny_model_dir, base):
    docs = write(tmp_path / "docs", {"company.md": COMPANY, "party.md": PARTY})
    learn([docs], "acme", config(tiny_model_dir), base=base, progress=False)
    everything = forget("acme", ["party.md"], base=base, progress=False, check=0)
    rollback("acme", 1)
    asked = ["the annual party, Lanternfest"]  # an evaluation question some removed facts' wordings contain
    clean = forget("acme", ["party.md"], base=base, progress=False, check=0, exclude_questions=asked)
    assert 0 < clean.manifest["synthetic"]["removed_facts"] < everything.manifest["synthetic"]["removed_facts"]
