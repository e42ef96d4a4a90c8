"""The drift probe and learn --max-drift: a memory saved at the strength that keeps the probe within budget."""

from __future__ import annotations

import json

import pytest

from inweights import LearnConfig, SynthConfig, TrainConfig, learn
from inweights.cli import main
from inweights.drift import choose_strength, drift_pct, load_probe
from inweights.models import load_base
from inweights.store import Workspace

HANDBOOK = """# Fjordlight Instruments

Fjordlight Instruments was founded by Ingrid Vassbotn in 2011. The Oslo office opened in March 2019.
The TideLog 300 sensor costs 1,450 euros. The Bergen office has 34 employees.
"""


def test_choose_strength_keeps_the_cap_when_it_is_within_budget():
    calls = []
    choice = choose_strength(lambda s: calls.append(s) or 2.0 * s * s, budget=3.0, cap=0.9)
    assert choice.strength == 0.9 and calls == [0.9] and choice.measured == [(0.9, pytest.approx(1.62))]


@pytest.mark.parametrize("power", [1.0, 2.0, 2.6])
def test_choose_strength_lands_just_under_the_budget(power):
    choice = choose_strength(lambda s: 10.0 * s**power, budget=5.0)
    drift = 10.0 * choice.strength**power
    assert 4.5 <= drift <= 5.0 and len(choice.measured) <= 4
    assert choice.strength == max(s for s, d in choice.measured if d <= 5.0)  # a measured strength, not a guess


def test_choose_strength_gives_an_estimate_when_no_measurement_is_within_budget():
    choice = choose_strength(lambda s: 4.0 + 10.0 * s, budget=5.0, tries=2)  # far from a power law
    assert len(choice.measured) == 2 and all(d > 5.0 for _, d in choice.measured)
    assert 0 < choice.strength < min(s for s, _ in choice.measured)
    assert choice.to_dict(5.0)["budget_pct"] == 5.0


def test_the_base_does_not_drift_from_itself(tiny_model_dir, workspace):
    base = load_base(str(tiny_model_dir))
    probe = load_probe(base, Workspace().cache_dir("replay"), n=8)
    assert 0 < len(probe.rows) <= 8 and all(row[0] == base.tokenizer.bos_token_id for row in probe.rows)
    assert drift_pct(probe, base.model) == pytest.approx(0.0, abs=1e-4)


def test_max_drift_measures_the_memory_against_the_plain_base(tmp_path, workspace, tiny_model_dir, monkeypatch):
    """learn scores the probe with the memory it trained, against the base's NLL without it (as the probe scores
    the memory once it is saved and loaded again)."""
    import inweights.drift
    from inweights.api import load_memory

    monkeypatch.setattr(inweights.drift, "PROBE_TEXTS", 8)
    base = load_base(str(tiny_model_dir))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(HANDBOOK)
    config = LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("facts",)),
                         train=TrainConfig(epochs=1, replay_sequences=4, lr=5e-3, max_drift=1000.0))
    version = learn([docs], "m", config, base=base, progress=False)
    (strength, measured), = version.manifest["drift"]["measured"]
    probe = load_probe(base, Workspace().cache_dir("replay"))  # the base carries no memory now
    loaded = load_memory("m", base=base)
    try:
        assert strength == 1.0 and measured == pytest.approx(drift_pct(probe, loaded.model), abs=1e-3)
    finally:
        loaded.close()
    assert abs(measured) > 0.01  # the memory moved the tiny model's probe (a memory left out would read 0)


def test_max_drift_saves_the_memory_at_the_strength_within_budget(tmp_path, workspace, tiny_model_dir, monkeypatch,
                                                                   capsys):
    """The strength is searched on the trained memory (here a stand-in probe that drifts 8 x s^2 percent: the tiny
    random model's real probe falls as it learns), saved as the adapter's alpha and recorded in the manifest."""
    import inweights.drift

    monkeypatch.setattr(inweights.drift, "PROBE_TEXTS", 8)
    seen = []

    def drift(probe, model):
        s = model.peft_config["default"].lora_alpha / 32.0  # the strength the model carries while it is measured
        seen.append(s)
        return 8.0 * s * s

    monkeypatch.setattr(inweights.drift, "drift_pct", drift)
    base = load_base(str(tiny_model_dir))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(HANDBOOK)

    def config(**train):
        return LearnConfig(base=str(tiny_model_dir), synth=SynthConfig(strategies=("facts",)),
                           train=TrainConfig(**({"epochs": 1, "replay_sequences": 4} | train)))

    free = learn([docs], "free", config(), base=base, progress=False)
    assert free.manifest["strength"] == 1.0 and "drift" not in free.manifest and not seen
    kept = learn([docs], "kept", config(max_drift=2.0), base=base, progress=False)
    drift_record, strength = kept.manifest["drift"], kept.manifest["strength"]
    assert drift_record["budget_pct"] == 2.0 and drift_record["measured"][0] == [1.0, 8.0] and seen[0] == 1.0
    assert 1.8 <= 8.0 * strength**2 <= 2.0 and strength == pytest.approx(drift_record["strength"], abs=1e-4)
    alpha = [json.loads((v.path / "adapter_config.json").read_text())["lora_alpha"] for v in (free, kept)]
    assert alpha == [32.0, pytest.approx(32.0 * strength)]
    main(["history", "kept"])
    assert capsys.readouterr().out.rstrip().endswith(f"strength {strength:.3g} (drift budget 2%)")
    (docs / "handbook.md").write_text(HANDBOOK.replace("34", "35"))
    seen.clear()
    update = learn([docs], "kept", config(lr=1e-9), base=base, progress=False, update=True)
    assert update.manifest["lineage"]["mode"] == "update" and seen[0] == 1.0  # trained and measured as trained
    assert update.manifest["drift"]["budget_pct"] == 2.0 and update.manifest["strength"] == pytest.approx(strength)
    capped = learn([docs], "capped", config(max_drift=20.0, strength=0.8), base=base, progress=False)
    assert capped.manifest["strength"] == 0.8 and capped.manifest["drift"]["measured"] == [[0.8, 5.12]]
    with pytest.raises(ValueError, match="max_drift"):
        TrainConfig(method="cartridge", max_drift=5.0)
