"""The plane benchmark's point names: every point it runs can be named on the command line and read back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from inweights.synth import STRATEGIES


def _benchmark(name: str):
    """A script of benchmarks/ as a module; plane is registered as `plane`, which its dataclasses look up."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if name == "plane":
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


plane = _benchmark("plane")
strength = _benchmark("strength")


@pytest.mark.parametrize("point", plane.default_points([750, 1500, 6000, 12000], 6000, 1500)
                         + [plane.Point("lora", "sft", True, "cloze", None, 1e-4),
                            plane.Point("memory_layer", "distill", False, "selfstudy", 1500, 0.1),
                            plane.Point("full", "sft", True, "cloze", None, 1e-05),
                            plane.Point("full", "sft", True, "cloze", None, None, 0.5, 256),
                            plane.Point("lora", "distill", True, "selfstudy", 6000, 2e-05, 0.35, None),
                            plane.Point("full", "sft", True, "cloze", None, 1e-05, None, None, 10),
                            plane.Point("memory_layer", "sft", True, "cloze", None, 0.03, rows=8192),
                            plane.Point("memory_layer", "sft", True, "cloze", None, rows=8192, topk=128),
                            plane.Point("lora", "sft", True, "facts", None, replay=0.5, mlp=1)])
def test_point_names_round_trip(point):
    assert plane._parse(point.name) == point


def test_memory_names_are_valid_for_every_point():
    from inweights.store import validate_name

    for point in [plane.Point("full", "sft", True, "cloze", None, 1e-05), plane.Point("lora", "sft", True, "x", 5)]:
        validate_name(plane._memory_name(point))  # raises on '.', '+' and the like


def test_guard_knobs_reach_the_train_config():
    assert plane.Point("lora", "sft", True, "cloze", None, None, 0.5, 256).train_config().replay_sequences == 256
    assert plane.Point("lora", "sft", True, "cloze", None, None, 0.5).train_config().replay_fraction == 0.5
    assert plane.Point("lora", "sft", False, "cloze", None, None, 0.5).train_config().replay_fraction == 0.0
    assert plane.Point("lora", "sft", True, "cloze", None, facts=10).synth_config().facts_per_sentence == 10
    assert plane.Point("memory_layer", "sft", True, "cloze", None, rows=99).train_config().memory_trainable_rows == 99
    assert plane.Point("lora", "sft", True, "facts", None, mlp=1).train_config().target_modules == plane.MLP_PROJECTIONS
    assert plane.Point("lora", "sft", True, "facts", None).train_config().target_modules == ()
    assert plane._parse("lora-sft-guard-facts-all-ly3-an100").train_config().layers == (0, 1, 2)
    assert plane._parse("lora-sft-guard-facts-all-ly3-an100").train_config().anchor == 100
    assert plane._parse("memory_layer-sft-guard-facts-all-at4").train_config().layers == (4,)
    with pytest.raises(SystemExit):
        plane._parse("lora-sft-guard-cloze-all-xx3")


def test_a_stored_point_is_matched_by_its_config_not_its_name():
    from inweights.config import LearnConfig

    def requested(name):
        point = plane._parse(name)
        return plane._requested(LearnConfig(synth=point.synth_config(), train=point.train_config()))

    import json

    stored = json.loads(json.dumps(requested("lora-sft-guard-facts-all")))  # as plane.json keeps it
    assert stored == requested("lora-sft-guard-facts-all")
    assert stored == requested("lora-sft-guard-facts-all-kt1")  # spelling out today's default changes nothing
    assert stored != requested("lora-sft-guard-facts-all-kt0")  # what the same name meant before the KL fix
    assert stored != requested("lora-sft-guard-facts-all-rs64")
    assert plane.same_config(requested("lora-sft-guard-facts-all"), stored)
    assert not plane.same_config(requested("lora-sft-guard-facts-all-kt0"), stored)
    # a setting added after the point ran is absent from its stored config: equal only at its default
    older = json.loads(json.dumps(stored))
    del older["train"]["replay_tokens"]
    assert plane.same_config(requested("lora-sft-guard-facts-all"), older)
    assert not plane.same_config(requested("lora-sft-guard-facts-all-rt32"), older)
    # a setting the point leaves unset must be unset in the stored run too (plane.py --teacher keeps the name)
    taught = json.loads(json.dumps(stored))
    taught["synth"]["teacher"] = "http://localhost:8000/v1"
    assert not plane.same_config(requested("lora-sft-guard-facts-all"), taught)
    # a memory's manifest records what learn resolved (lr, epochs) where the point asked for the default (None)
    resolved = json.loads(json.dumps(stored))
    resolved["train"] |= {"lr": 5e-4, "epochs": 3}
    assert not plane.same_config(requested("lora-sft-guard-facts-all"), resolved)

    def config(name):
        point = plane._parse(name)
        return LearnConfig(synth=point.synth_config(), train=point.train_config())

    assert strength.learned_with(config("lora-sft-guard-facts-all"), resolved)
    assert not strength.learned_with(config("lora-sft-guard-facts-all-lr0.0002"), resolved)
    assert not strength.learned_with(config("lora-sft-guard-facts-all-ep5"), resolved)

    # a kept memory is reused only when today's strategies made its examples (a parser change makes new ones)
    class Kept:
        manifest = {"config": resolved, "synthetic": {}}

    class Workspace:
        def get(self, name):
            return Kept

    wanted = config("lora-sft-guard-facts-all")
    assert strength._kept(Workspace(), "m", wanted) is None  # from before the manifest recorded the versions
    Kept.manifest["synthetic"]["strategy_versions"] = {"facts": STRATEGIES["facts"].VERSION}
    assert strength._kept(Workspace(), "m", wanted) is Kept
    Kept.manifest["synthetic"]["strategy_versions"] = {"facts": STRATEGIES["facts"].VERSION - 1}
    assert strength._kept(Workspace(), "m", wanted) is None


def test_strength_memory_names_are_valid_and_distinct():
    from inweights.store import validate_name

    names = {strength.memory_name(plane._parse(p), skip, 24) for p in
             ("lora-sft-guard-facts-all", "memory_layer-sft-guard-facts-all-mr8192-at15-sd1",
              "memory_layer-sft-guard-facts-all-mr8192-at15-sd2") for skip in (0, 24)}
    assert len(names) == 6
    for name in names:
        validate_name(name)
    assert strength.memory_name(plane._parse("lora-sft-guard-facts-all"), 0, 8) == \
        "plane-lora-sft-guard-facts-all-strength-p1-8"  # short names as before: kept memories are found again


def test_strength_reaches_the_train_config():
    assert plane._parse("lora-sft-guard-facts-all-st0.7").train_config().strength == 0.7
    assert plane._parse("lora-sft-guard-facts-all-st0.7").name == "lora-sft-guard-facts-all-st0.7"


def test_a_stored_point_made_by_older_strategies_is_run_again():
    from inweights.config import SynthConfig

    facts_only = SynthConfig(strategies=("facts",))
    assert not plane._strategies_changed(facts_only)  # facts makes what it made when points recorded no versions
    changed = dict(plane.UNVERSIONED, facts=STRATEGIES["facts"].VERSION - 1)
    original, plane.UNVERSIONED = plane.UNVERSIONED, changed
    try:
        assert plane._strategies_changed(facts_only)
        assert not plane._strategies_changed(SynthConfig(strategies=("selfstudy",)))
    finally:
        plane.UNVERSIONED = original


def test_yes_rate_reads_each_answer_from_its_mark_and_gold_label():
    yes_rate = _benchmark("yes_rate")
    gold = [1, 1, 0, 0, 1]
    assert yes_rate.answers("10101", gold) == [1, 0, 0, 1, 1]
    # the base says yes, no, no, yes, yes; the memory says yes to all: it gains item 1 and loses item 2
    row = yes_rate.shift("10101", "11001", gold)
    assert row == {"n": 5, "yes": 5, "base_yes": 3, "lost_gold_yes": 0, "lost_gold_no": 1,
                   "gained_gold_yes": 1, "gained_gold_no": 0}
    with pytest.raises(ValueError):
        yes_rate.answers("101", gold)


def test_yes_rate_takes_the_base_marks_from_another_folder_only_for_the_same_items(tmp_path, monkeypatch):
    yes_rate = _benchmark("yes_rate")
    monkeypatch.setattr(yes_rate, "gold_labels", lambda data, n: [1, 1, 0, 0, 1][:n])

    def folder(name, base_boolq, scales):
        (tmp_path / name).mkdir()
        (tmp_path / name / "strength.json").write_text(json.dumps({"base": {"general": {"boolq": base_boolq}},
                                                                   "scales": scales}))
        return str(tmp_path / name)

    run = {"general": {"boolq": {"correct": "11001"}}, "general_deltas": {"boolq": {"acc_points": 0.0}}}
    marked = folder("marked", {"n": 5, "acc": 0.6, "correct": "10101"}, {})
    copied = folder("copied", {"n": 5, "acc": 0.6}, {"1": run})
    other = folder("other", {"n": 5, "acc": 0.4}, {"1": run})
    rows = yes_rate.main([copied, "--base-from", marked, "--data", str(tmp_path)])
    assert [(r["yes"], r["base_yes"], r["lost_gold_no"], r["gained_gold_yes"]) for r in rows] == [(5, 3, 1, 1)]
    with pytest.raises(SystemExit, match="no per-item marks"):  # another base's items are not taken
        yes_rate.main([other, "--base-from", marked, "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="no per-item marks"):
        yes_rate.main([copied, "--data", str(tmp_path)])


def test_general_wide_gives_each_change_a_paired_interval():
    general_wide = _benchmark("general_wide")
    # 10 items: the memory loses items 0 and 1, gains item 9; the others are as before
    change = general_wide.paired_change("1111100000", "0011100001")
    assert (change["n"], change["lost"], change["gained"]) == (10, 2, 1)
    assert change["points"] == pytest.approx(-10.0)
    # differences -1, -1, +1 and seven 0: mean -0.1, sample variance (0.3 - 0.01) * 10 / 9
    assert change["ci95_points"] == pytest.approx(100 * 1.96 * ((0.29 * 10 / 9) / 10) ** 0.5)
    assert general_wide.paired_change("1010", "1010")["ci95_points"] == 0.0
    parts = general_wide.split("1111100000", "0011100001", first=4)
    assert (parts["first"]["lost"], parts["rest"]["gained"], parts["all"]["n"]) == (2, 1, 10)
    assert "rest" not in general_wide.split("10", "01", first=4)
    assert general_wide.parse_memory("lora-sft-guard-facts-all+lora-sft-guard-facts-all-sd1@0.70") == (
        ["lora-sft-guard-facts-all", "lora-sft-guard-facts-all-sd1"], "0.7")
    assert general_wide.parse_memory("lora-sft-guard-facts-all@rank=16,all=0.75") == (
        ["lora-sft-guard-facts-all"], "rank=16,all=0.75")
    for bad in ("lora-sft-guard-facts-all", "lora-sft-guard-facts-all@rank=x", "lora-sft-guard-facts-all@big"):
        with pytest.raises(SystemExit):
            general_wide.parse_memory(bad)
    with pytest.raises(ValueError):
        general_wide.paired_change("10", "1")


def test_general_wide_report_counts_tasks_down_and_boolq_answers(tmp_path):
    general_wide = _benchmark("general_wide")
    (tmp_path / "general").mkdir()
    gold = [1, 1, 0, 1]
    (tmp_path / "general" / "boolq_500.jsonl").write_text(
        "".join(f'{{"query": "q{i}", "choices": ["no", "yes"], "gold": {g}}}\n' for i, g in enumerate(gold)))
    base = {"arc_easy": "1100", "piqa": "1010", "boolq": "1101", "triviaqa": "0001"}
    memory = {"arc_easy": "1100", "piqa": "1011", "boolq": "0111", "triviaqa": "0001"}
    general = lambda marks: {t: {"acc" if t != "triviaqa" else "match": m.count("1") / 4, "n": 4, "correct": m}
                             for t, m in marks.items()}
    results = {"settings": {"items": 4, "passages": 24, "skip_passages": 24},
               "base": {"general": general(base)},
               "memories": {"m@0.7": {"general": general(memory),
                                      "changes": {t: general_wide.split(base[t], memory[t], first=2) for t in base}}}}
    general_wide._report(results, tmp_path, tmp_path)
    text = (tmp_path / "general_wide.md").read_text()
    # BoolQ: item 0 lost (-25 points over 4 items), item 2 gained: net 0; PIQA gains item 3 (+25)
    assert "| m@0.7 | 1-4 | +0.0 ± 0.0 (-0/+0) | +25.0" in text and "| none |" in text
    assert "| 1-2 | +0.0 ± 0.0 (-0/+0) | +0.0 ± 0.0 (-0/+0) | -50.0" in text and "| BoolQ |" in text
    assert "| 3-4 | +0.0 ± 0.0 (-0/+0) | +50.0" in text
    # the base says yes to all four (item 2, gold no, wrong); the memory says no to items 0 (lost) and 2 (gained)
    assert "the base answers \"yes\" to 4 of them" in text
    assert "- m@0.7: 2 (lost gold yes / no: 1 / 0; gained: 0 / 1)" in text


def test_a_profile_rank_entry_truncates_and_is_no_factor():
    assert strength.profile_rank("rank=4") == (4, 0)
    assert strength.profile_rank("rank=8,all=0.85") == (8, 0)
    assert strength.profile_rank("drop=1") == (None, 1) and strength.profile_rank("drop=1,rank=8") == (8, 1)
    assert strength.profile_rank("mlp=0.5") is None and strength.profile_rank("0.7") is None
    assert strength.profile_factor("rank=8,all=0.85", "x.layers.3.self_attn.q_proj", 18) == 0.85
    assert strength.profile_factor("rank=8,drop=1", "x.layers.3.mlp.up_proj", 18) == 1.0
    for bad in ("rank=0", "rank=x", "drop=-1", "drop=4,rank=4"):
        with pytest.raises(SystemExit, match="rank=K|drop=J"):
            strength.profile_rank(bad)


def test_a_memory_layer_profile_gates_and_scales():
    assert strength.memory_layer_profile("0.7") == (0.7, None, None)
    assert strength.memory_layer_profile("gate=0.1") == (1.0, 0.1, None)
    assert strength.memory_layer_profile("scale=0.5,gate=0") == (0.5, 0.0, None)
    assert strength.memory_layer_profile("cgate=0.2,gate=0.1") == (1.0, 0.1, 0.2)
    assert plane._parse("memory_layer-sft-guard-facts-all-at15-mg0.1").train_config().memory_gate == 0.1
    assert plane._parse("memory_layer-sft-guard-facts-all-at15-mc0.1").train_config().memory_gate_contrast == 0.1
    for bad in ("gate=1", "cgate=1", "gate=x", "mlp=0.5", "gate"):
        with pytest.raises(SystemExit, match="gate=Q or cgate=S"):
            strength.check_profile(bad, "memory_layer")


def _strength_results(folder: Path, point: str, rows: dict, gold: bool = True) -> None:
    """A strength.json; rows: scale -> (ppl %, EM gap, p(gold)), without p(gold) where `gold` is False."""
    scales = {s: {"wikitext_ppl_pct": ppl, "gap_recovered": em} | ({"gold": {"p_gold": p}} if gold else {})
              for s, (ppl, em, p) in rows.items()}
    folder.mkdir()
    (folder / "strength.json").write_text(json.dumps({"settings": {"point": point}, "base": {}, "scales": scales}))


def test_strength_lines_compares_rows_with_the_line_at_the_same_perplexity(tmp_path):
    lines = _benchmark("strength_lines")
    _strength_results(tmp_path / "plain", "p", {"1": (10.0, 0.6, 0.3), "0.5": (4.0, 0.3, 0.2)})
    _strength_results(tmp_path / "edit", "q", {"1": (6.0, 0.5, 0.3), "0.5": (2.0, 0.1, 0.12)})
    _, plain = lines.load_rows(tmp_path / "plain")
    assert [r["scale"] for r in plain] == ["0.5", "1"]  # ordered by perplexity
    assert plain[1]["gold"] == pytest.approx(30.0)
    assert lines.at_ppl(plain, 6.0, "em_gap") == pytest.approx(40.0)  # a third of the way from 30% to 60%
    assert lines.at_ppl(plain, 6.0, "gold") == pytest.approx(20 + 10 / 3)
    assert lines.at_ppl(plain, 2.0, "em_gap") is None  # below the line's range: no reference
    text = lines.report([tmp_path / "plain"], [tmp_path / "edit"], [5.0])
    assert "| edit | 1 | +6.0% | 50% | 40% | +10 | 30.0% | 23.3% | +6.7 |" in text
    assert "| edit | 0.5 | +2.0% | 10% | - | - |" in text
    assert "| edit | q | 40% / 25.5% |" in text  # its own line at +5%: 3/4 of the way from 10% to 50%, 12% to 30%
    mean = lines.report([tmp_path / "plain", tmp_path / "edit"], [], [5.0])  # two lines, averaged where both are
    assert "| edit | 1 | +6.0% | 50% | 45% | +5 | 30.0% | 26.7% | +3.3 |" in mean
    assert "| plain | 0.5 | +4.0% | 30% | 30% | +0 | 20.0% | 20.5% | -0.5 |" in mean  # edit's line: 30%, 21%
    assert "| edit | 0.5 | +2.0% | 10% | - | - |" in mean  # below the plain line's range
    _strength_results(tmp_path / "old", "o", {"1": (5.0, 0.2, 0.2)}, gold=False)
    assert lines.load_rows(tmp_path / "old")[1][0]["gold"] is None  # scored before p(gold) existed


def test_update_cosine_compares_the_products_of_the_factors(tmp_path):
    import torch
    from safetensors.torch import save_file

    cosine = _benchmark("update_cosine")
    torch.manual_seed(0)
    a, b = torch.randn(4, 12), torch.randn(10, 4)
    a2, b2 = torch.randn(4, 12), torch.randn(10, 4)
    assert cosine.update_inner(a, b, a2, b2) == pytest.approx(float(((b @ a) * (b2 @ a2)).sum()), rel=1e-5)
    prefix = "base_model.model.model.layers.0.mlp.up_proj"
    for name, (fa, fb) in {"one": (a, b), "scaled": (2 * a, 3 * b), "other": (a2, b2),
                           "opposite": (a, -b)}.items():
        (tmp_path / name).mkdir()
        save_file({f"{prefix}.lora_A.weight": fa, f"{prefix}.lora_B.weight": fb},
                  str(tmp_path / name / "adapter_model.safetensors"))
    assert cosine.cosines(tmp_path / "one", tmp_path / "scaled")[prefix] == pytest.approx(1.0)
    assert cosine.cosines(tmp_path / "one", tmp_path / "opposite")[prefix] == pytest.approx(-1.0)
    want = float(((b @ a) * (b2 @ a2)).sum() / ((b @ a).norm() * (b2 @ a2).norm()))
    assert cosine.cosines(tmp_path / "one", tmp_path / "other")[prefix] == pytest.approx(want, rel=1e-5)


def test_drift_probe_fits_wikitext_on_the_tuning_half_and_checks_it_on_the_other():
    drift_probe = _benchmark("drift_probe")

    def memory(half, pairs):
        return {"half": half, "scales": {s: {"probe_ppl_pct": p, "wikitext_ppl_pct": w} for s, (p, w) in pairs.items()}}

    fit = drift_probe.fit({"a": memory("tune", {"1": (2.0, 6.0), "0.7": (1.0, 3.0)}),
                           "b": memory("tune", {"1": (4.0, 12.0)}),
                           "c": memory("check", {"1": (2.0, 8.0), "0.7": (1.0, 3.0)})})
    assert fit["c"] == pytest.approx(3.0) and fit["tune"]["mean_abs_error"] == pytest.approx(0.0, abs=1e-9)
    assert fit["check"]["n"] == 2 and fit["check"]["mean_abs_error"] == pytest.approx(1.0)
    assert fit["check"]["max_abs_error"] == pytest.approx(2.0) and fit["check"]["ratio_max"] == pytest.approx(4.0)
    assert fit["tune"]["corr_at_1"] == pytest.approx(1.0) and fit["tune"]["n_at_1"] == 2
