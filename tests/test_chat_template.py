"""Instruct bases: a tokenizer with a chat template gets its questions in that template (training rows, `ask`,
evaluation and the server's chat endpoint); a base without one keeps the plain Question:/Answer: format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from inweights import LearnConfig, SynthConfig, TrainConfig, learn, load_memory
from inweights.models import load_base
from inweights.objectives import sft_rows
from inweights.prompt import qa_prompt, render
from inweights.serve.app import render_chat
from inweights.synth import Example
from inweights.train import IGNORE

from conftest import build_tiny_family_dir

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
            "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen2 with a Gemma-style chat template in its tokenizer: an "instruct" base."""
    directory = build_tiny_family_dir(tmp_path_factory.mktemp("tiny-chat"), "qwen2")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def test_a_plain_base_keeps_the_plain_format(tiny_model_dir):
    tokenizer = load_base(str(tiny_model_dir)).tokenizer
    assert render(tokenizer, qa_prompt("Who founded Acme?")) == "Question: Who founded Acme?\nAnswer:"
    assert render_chat([{"role": "user", "content": "Who founded Acme?"}], tokenizer) == \
        "Question: Who founded Acme?\nAnswer:"


def test_a_chat_base_reads_the_question_in_its_template_with_one_bos(chat_model_dir):
    tokenizer = load_base(str(chat_model_dir)).tokenizer
    prompt = render(tokenizer, qa_prompt("Who founded Acme?", context="Acme was founded by Ann."))
    assert prompt == "<start_of_turn>user\nAcme was founded by Ann.\n\nQuestion: Who founded Acme?<end_of_turn>\n" \
                     "<start_of_turn>model\n"
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert render(tokenizer, "plain text, not a question") == "plain text, not a question"
    chat = render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who founded Acme?"}],
                       tokenizer)
    assert chat == "<start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nQuestion: Who founded " \
                   "Acme?<end_of_turn>\n<start_of_turn>model\n"


def test_training_rows_end_the_answer_with_the_end_of_turn_token(chat_model_dir, tiny_model_dir):
    chat = load_base(str(chat_model_dir))
    example = Example(qa_prompt("Who founded Acme?"), " Ann", "facts", "c", "a.md", "d", "none")
    (ids, labels), = sft_rows(chat.tokenizer, [example], 128, chat.newline_id)
    answer = [t for t, label in zip(ids, labels) if label != IGNORE]
    end = chat.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert answer[-1] == end and chat.tokenizer.decode(answer[:-1]) == "Ann"
    assert chat.tokenizer.decode(ids[: len(ids) - len(answer)]).startswith("<bos><start_of_turn>user\nQuestion:")
    plain = load_base(str(tiny_model_dir))
    (ids, labels), = sft_rows(plain.tokenizer, [example], 128, plain.newline_id)
    assert [t for t, label in zip(ids, labels) if label != IGNORE][-1] == plain.newline_id


def test_learn_and_ask_on_a_chat_base(chat_model_dir, tmp_path, workspace, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Ingrid Vassbotn founded Fjordlight Instruments in 2011 in Bergen.\n")
    config = LearnConfig(base=str(chat_model_dir), synth=SynthConfig(chunk_tokens=128),
                         train=TrainConfig(epochs=1, replay_sequences=4, batch_tokens=512))
    version = learn([docs], "chat", config, progress=False)
    assert version.manifest["base"]["prompt_format"] == "chat"
    seen = []
    import inweights.api as api

    real = api.generate
    monkeypatch.setattr(api, "generate", lambda model, tok, prompts, **kw: seen.extend(prompts) or real(
        model, tok, prompts, **kw))
    loaded = load_memory("chat")
    try:
        loaded.answer(["Who founded Fjordlight Instruments?"], max_new_tokens=4)
    finally:
        loaded.close()
    assert seen == ["<start_of_turn>user\nQuestion: Who founded Fjordlight Instruments?<end_of_turn>\n"
                    "<start_of_turn>model\n"]
