"""Base model loading, the embedded model's cache checks, and generation."""

from __future__ import annotations

import json

import pytest
import torch

from inweights import InweightsError
from inweights.generate import generate
from inweights.models import _MARKER, _cache_is_valid, _sha256, load_base


def test_local_directory_loads_frozen_with_a_stable_fingerprint(tiny_model_dir):
    a, b = load_base(str(tiny_model_dir)), load_base(str(tiny_model_dir))
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("files-sha256:")
    assert not any(p.requires_grad for p in a.model.parameters())
    assert a.newline_id is not None and a.newline_id in a.stop_token_ids
    assert a.tokenizer.eos_token_id in a.stop_token_ids


def test_a_file_given_as_base_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(InweightsError, match="is a file"):
        load_base(str(path))


def test_embedded_cache_check_detects_partial_and_corrupt_files(tmp_path):
    directory = tmp_path / "gemma"
    directory.mkdir()
    weights = directory / "model.safetensors"
    weights.write_bytes(b"w" * 1000)
    (directory / "config.json").write_text("{}")
    assert not _cache_is_valid(directory)  # no completion marker: an interrupted conversion
    marker = {"files": {"model.safetensors": {"size": 1000, "head_sha256": _sha256(weights, limit=8 << 20)},
                        "config.json": {"size": 2}}}
    (directory / _MARKER).write_text(json.dumps(marker))
    assert _cache_is_valid(directory)
    weights.write_bytes(b"w" * 999)  # truncated
    assert not _cache_is_valid(directory)
    weights.write_bytes(b"v" * 1000)  # same size, different bytes
    assert not _cache_is_valid(directory)
    (directory / _MARKER).write_text("{not json")
    assert not _cache_is_valid(directory)


def test_shared_prefix_generation_matches_plain_generation(tiny_model_dir):
    base = load_base(str(tiny_model_dir))
    prefix = "The Oslo office of Fjordlight opened in"
    suffixes = [" March", " the year 2019 and then", " x"]
    with_prefix = generate(base.model, base.tokenizer, suffixes, max_new_tokens=6, prefix=prefix)
    plain = generate(base.model, base.tokenizer, [prefix + s for s in suffixes], max_new_tokens=6)
    assert with_prefix == plain


def test_batched_greedy_generation_matches_one_by_one_and_transformers(tiny_model_dir):
    base = load_base(str(tiny_model_dir))
    prompts = ["Paris is", "The quick brown fox jumps over the", "Water"]
    batched = generate(base.model, base.tokenizer, prompts, max_new_tokens=5, batch_size=3)
    single = [generate(base.model, base.tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single
    ids = base.tokenizer(prompts[1], return_tensors="pt").input_ids
    reference = base.model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert base.tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True).strip() == batched[1]


def test_sampling_is_reproducible_with_a_seed(tiny_model_dir):
    base = load_base(str(tiny_model_dir))
    run = lambda: generate(base.model, base.tokenizer, ["Paris is"] * 3, max_new_tokens=6, temperature=1.0, seed=3)
    assert run() == run()
