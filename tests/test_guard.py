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
