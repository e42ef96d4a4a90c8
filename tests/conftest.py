"""Shared fixtures: a tiny random Gemma-3 model (and Llama and Qwen2 ones) with a small trained BPE tokenizer, saved as
a local HF directory.

Every fast test uses it, so the whole suite runs on a CPU in seconds with fixed seeds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

TINY_TEXT = """\
The Oslo office of Fjordlight opened in March 2019 and employs forty people.
Question: When did the office open? Answer: March 2019.
The quick brown fox jumps over the lazy dog. Water boils at one hundred degrees.
Paris is the capital of France. The company was founded by Ingrid Solberg in 2011.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 2019 2011 42. Punctuation: . , ; : ! ? ' " ( ) - _
""" * 3


FAMILIES = ("llama", "qwen2", "gemma3")
"""Model families `build_tiny_family_dir` can build."""


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (400 tokens) trained on TINY_TEXT; ids 0-4 are <pad>, <eos>, <bos>, <unk>,
    <end_of_turn>, and BOS is put in front of every encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_TEXT.splitlines(), trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<end_of_turn>"])


def _tiny_config(family: str, vocab_size: int):
    """A 2-layer, 32-wide config (2 heads of 16, 1 KV head) of the family, with the tokenizer's special ids."""
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                  pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if family == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        return Gemma3ForCausalLM, Gemma3TextConfig(**common, sliding_window=64, tie_word_embeddings=True,
                                                   layer_types=["sliding_attention", "full_attention"])
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM, LlamaConfig(**common, tie_word_embeddings=False)
    if family == "qwen2":  # Qwen2's q/k/v projections carry a bias; the small Qwen2 models tie the head
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM, Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def build_tiny_family_dir(directory: Path, family: str, seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide random causal LM of `family` (llama, qwen2 or gemma3) and the tiny byte-level
    BPE tokenizer to `directory`, as a local Hugging Face model directory."""
    torch.manual_seed(seed)
    fast = build_tiny_tokenizer()
    cls, config = _tiny_config(family, len(fast))
    model = cls(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def build_tiny_model_dir(directory: Path, seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide random Gemma-3 causal LM and a byte-level BPE tokenizer to `directory`."""
    return build_tiny_family_dir(directory, "gemma3", seed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty $INWEIGHTS_HOME for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("INWEIGHTS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark data beside the project (../shared/data); slow tests skip without it."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not present")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(base, **settings):
    """A real `inweights serve` (uvicorn) on loopback in a background thread; yields (url, server)."""
    import uvicorn

    from inweights.serve import ServeConfig
    from inweights.serve.app import Server, create_app

    config = ServeConfig(port=free_port(), **settings)
    server = Server(base, config)
    web = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=config.port, log_level="error"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not web.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}", server
    finally:
        web.should_exit = True
        thread.join(10)
        server.close()  # puts the base model's own linear layers back


def pytest_collection_modifyitems(config, items):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
