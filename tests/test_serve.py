"""The server on the tiny model: OpenAI-client round trips, batching across memories, the memory cache, tenants,
limits and export. Memories here are random LoRA adapters (distinct outputs, no training) except one that is
learned, to show a real memory serves as it is."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from inweights import InweightsError, LearnConfig, SynthConfig, TrainConfig, Workspace, learn
from inweights.generate import generate
from inweights.models import load_base
from inweights.serve import ServeConfig, add_key, export_memory, list_keys, revoke_key
from inweights.serve.adapters import AdapterCache, CacheFull
from inweights.serve.app import Server, render_chat
from inweights.serve.batcher import Batcher, Generation, QueueFull
from inweights.serve.export import vllm_max_lora_rank
from inweights.prompt import QA_TEMPLATE
from conftest import running

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = ["The Oslo office", "Paris is the capital of France. The quick brown fox jumps over the lazy dog.",
           "Numbers: 0 1 2", QA_TEMPLATE.format(question="When did the office open?")]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    # One thread: the server's worker and the test's client threads share the CPU; with more, a 32-wide model
    # spends its time in thread spin-waits (60x slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_base(str(tiny_model_dir))
    torch.set_num_threads(threads)


def make_memory(base, name: str, rank: int = 8, targets=("q_proj", "v_proj"), seed: int = 0):
    """Publish a random LoRA adapter as the next version of `name` (nonzero B, so it changes the output).
    Call it while no server or cache holds the base model: PEFT cannot wrap the server's layers."""
    torch.manual_seed(seed)
    model = get_peft_model(base.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                                  init_lora_weights=False))

    def write(directory: Path):
        model.save_pretrained(str(directory))
        manifest = {"name": name, "method": "lora", "base": {"name": base.name, "fingerprint": base.fingerprint}}
        (directory / "manifest.json").write_text(json.dumps(manifest))

    try:
        return Workspace().publish(name, write)
    finally:
        model.unload()


def republish(version, name: str):
    """Publish a copy of `version`'s files as the next version of `name` (works while a server runs)."""
    return Workspace().publish(name, lambda d: [shutil.copy(f, d) for f in version.path.iterdir()])


def alone(base, version, prompt: str, max_tokens: int, stop_ids) -> str:
    """The reference: PEFT's own LoRA (or the plain base) through the project's generate loop."""
    if version is None:
        return generate(base.model, base.tokenizer, [prompt], max_tokens, stop_token_ids=stop_ids)[0]
    model = PeftModel.from_pretrained(base.model, str(version.path)).eval()
    try:
        return generate(model, base.tokenizer, [prompt], max_tokens, stop_token_ids=stop_ids)[0]
    finally:
        model.unload()


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def collect(requests: list[Generation], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while any(r.finish_reason is None for r in requests):
        assert time.time() < deadline, "requests did not finish"
        time.sleep(0.01)


def make_request(base, prompt: str, version, max_tokens: int = 12, **kwargs) -> Generation:
    events = []
    request = Generation(base.tokenizer(prompt)["input_ids"], max_tokens, version, lambda k, d: events.append((k, d)),
                      stop_ids=frozenset([base.tokenizer.eos_token_id]), **kwargs)
    request.events = events
    return request


# --- the OpenAI API ------------------------------------------------------------------------------------------


def test_openai_client_round_trips(workspace, base, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Oslo office of Fjordlight opened in March 2019 and employs forty people.\n")
    learned = learn([docs], "acme", LearnConfig(base=base.name, synth=SynthConfig(strategies=("cloze",)),
                                                train=TrainConfig(epochs=1, replay_fraction=0)),
                    base=base, progress=False)
    question = "When did the Oslo office open?"
    prompt = QA_TEMPLATE.format(question=question)
    end = [base.tokenizer.eos_token_id, base.tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    want_completion = alone(base, learned, prompt, 16, end)
    want_answer = alone(base, learned, prompt, 16, base.stop_token_ids)
    want_base = alone(base, None, prompt, 16, end)

    with running(base) as (url, _):
        api = client(url)
        assert {m.id for m in api.models.list().data} == {"base", "acme"}

        plain = api.completions.create(model="acme", prompt=prompt, max_tokens=16)
        assert plain.model == "acme@1" and plain.choices[0].text.strip() == want_completion
        assert plain.usage.prompt_tokens == len(base.tokenizer(prompt)["input_ids"])
        streamed = list(api.completions.create(model="acme@1", prompt=prompt, max_tokens=16, stream=True))
        assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
        assert streamed[-1].choices[0].finish_reason == plain.choices[0].finish_reason

        from_base = api.completions.create(model="base", prompt=prompt, max_tokens=16)
        assert from_base.choices[0].text.strip() == want_base

        chat = api.chat.completions.create(model="acme", messages=[{"role": "user", "content": question}],
                                           max_tokens=16)
        assert chat.choices[0].message.content == want_answer and chat.choices[0].message.role == "assistant"
        chunks = list(api.chat.completions.create(model="acme", messages=[{"role": "user", "content": question}],
                                                  max_tokens=16, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_answer
        assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_chat_messages_render_as_plain_text_then_the_question():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "Who founded Acme?"}]}]
    assert render_chat(messages) == "Be brief.\nHi\nHello.\nQuestion: Who founded Acme?\nAnswer:"
    assert render_chat([{"role": "user", "content": "Q?"}]) == QA_TEMPLATE.format(question="Q?")


# --- batching across memories --------------------------------------------------------------------------------


def test_mixed_batch_gives_each_memory_its_own_tokens(workspace, base):
    a = make_memory(base, "a", rank=8, targets=("q_proj", "v_proj"), seed=1)
    b = make_memory(base, "b", rank=16, targets=ALL_LINEAR, seed=2)
    plan = [(PROMPTS[0], a), (PROMPTS[1], b), (PROMPTS[2], None), (PROMPTS[3], b), (PROMPTS[3], a)]
    eos = [base.tokenizer.eos_token_id]
    want = [alone(base, v, p, 12, eos) for p, v in plan]
    assert len(set(want)) == len(want)  # the memories really change the output

    adapters = AdapterCache(base.model, base.fingerprint, max_memories=4, max_bytes=1 << 30)
    batcher = Batcher(base.model, base.tokenizer, adapters, max_batch=8)
    try:
        first = [make_request(base, p, v) for p, v in plan[:4]]
        for r in first:
            batcher.submit(r)  # all waiting before the worker starts: one batch
        batcher.start()
        while not first[0].tokens:
            time.sleep(0.005)
        late = make_request(base, *plan[4])  # joins the running batch at a step boundary
        batcher.submit(late)
        collect(first + [late])
        assert batcher.steps < sum(len(r.tokens) for r in first)  # decoded together, not one after another
    finally:
        batcher.stop()
        adapters.close()
    for request, expected in zip(first + [late], want):
        assert base.tokenizer.decode(request.tokens, skip_special_tokens=True).strip() == expected
        assert "".join(d for k, d in request.events if k == "text") == \
            base.tokenizer.decode(request.tokens, skip_special_tokens=True)
        assert request.events[-1][0] == "done"


def test_rows_longer_than_the_sliding_window_decode_correctly(workspace, base):
    a = make_memory(base, "a", seed=3)
    long_prompt = " ".join(PROMPTS) * 3  # past the tiny model's 64-token sliding window
    eos = [base.tokenizer.eos_token_id]
    want = [alone(base, a, long_prompt, 20, eos), alone(base, None, PROMPTS[0], 20, eos)]
    adapters = AdapterCache(base.model, base.fingerprint, max_memories=2, max_bytes=1 << 30)
    batcher = Batcher(base.model, base.tokenizer, adapters).start()
    try:
        short = make_request(base, PROMPTS[0], None, max_tokens=20)
        batcher.submit(short)
        while len(short.tokens) < 3:
            time.sleep(0.002)
        long = make_request(base, long_prompt, a, max_tokens=20)
        batcher.submit(long)
        collect([short, long])
    finally:
        batcher.stop()
        adapters.close()
    got = [base.tokenizer.decode(r.tokens, skip_special_tokens=True).strip() for r in (long, short)]
    assert got == want


def test_stop_strings_end_the_text_and_are_not_sent(workspace, base):
    adapters = AdapterCache(base.model, base.fingerprint, max_memories=1, max_bytes=1 << 30)
    batcher = Batcher(base.model, base.tokenizer, adapters).start()
    try:
        free = make_request(base, PROMPTS[1], None, max_tokens=12)
        batcher.submit(free)
        collect([free])
        text = base.tokenizer.decode(free.tokens, skip_special_tokens=True)
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        stopped = make_request(base, PROMPTS[1], None, max_tokens=12, stop_strings=(stop,))
        batcher.submit(stopped)
        collect([stopped])
    finally:
        batcher.stop()
        adapters.close()
    sent = "".join(d for k, d in stopped.events if k == "text")
    assert sent == text[: text.find(stop)] and stopped.finish_reason == "stop"


# --- the memory cache ---------------------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_and_keeps_pinned(workspace, base):
    versions = {n: make_memory(base, n, seed=i) for i, n in enumerate(["a", "b", "c", "d"])}
    cache = AdapterCache(base.model, base.fingerprint, max_memories=2, max_bytes=1 << 30, pinned=("a",))
    try:
        for name in ("a", "b", "c"):
            cache.acquire(versions[name])
            cache.release(versions[name].ref)
        assert list(cache.loaded) == ["a@1", "c@1"]  # b went: a is pinned
        cache.acquire(versions["c"])  # c is in use now
        with pytest.raises(CacheFull):  # a pinned, c busy: d must wait for a slot
            cache.acquire(versions["d"])
        cache.release("c@1")
        cache.acquire(versions["d"])
        cache.release("d@1")
        assert list(cache.loaded) == ["a@1", "d@1"] and cache.evictions == 2

        newer = republish(versions["b"], "a")  # a pin holds the newest version; the old one may go
        cache.acquire(newer)
        cache.release(newer.ref)
        cache.acquire(versions["b"])
        cache.release("b@1")
        assert list(cache.loaded) == ["a@2", "b@1"]
    finally:
        cache.close()


def test_more_memories_than_slots_wait_their_turn_and_stay_correct(workspace, base):
    a, b = make_memory(base, "a", seed=1), make_memory(base, "b", seed=2)
    eos = [base.tokenizer.eos_token_id]
    want = {"a": alone(base, a, PROMPTS[1], 12, eos), "b": alone(base, b, PROMPTS[1], 12, eos)}
    adapters = AdapterCache(base.model, base.fingerprint, max_memories=1, max_bytes=1 << 30)
    batcher = Batcher(base.model, base.tokenizer, adapters, max_batch=8)
    done = []
    requests = []
    for name, version in [("a", a), ("b", b), ("a", a), ("base", None)]:
        request = make_request(base, PROMPTS[1], version)
        request.on_event = lambda k, d, r=request, n=name: (r.events.append((k, d)), k == "done" and done.append(n))
        requests.append(request)
        batcher.submit(request)
    try:
        batcher.start()
        collect(requests)
    finally:
        batcher.stop()
        adapters.close()
    assert done.index("a") < done.index("b") < len(done) - 1 - done[::-1].index("a")  # b is not starved
    for request, name in zip(requests[:3], ["a", "b", "a"]):
        assert base.tokenizer.decode(request.tokens, skip_special_tokens=True).strip() == want[name]
    assert adapters.evictions == 2


def test_byte_budget_evicts_before_loading(workspace, base):
    a, b = make_memory(base, "a", seed=1), make_memory(base, "b", seed=2)
    from inweights.serve.adapters import read_adapter

    size = read_adapter(a)[1]
    cache = AdapterCache(base.model, base.fingerprint, max_memories=8, max_bytes=int(size * 1.5))
    try:
        cache.acquire(a)
        cache.release(a.ref)
        cache.acquire(b)
        assert list(cache.loaded) == ["b@1"] and cache.nbytes <= cache.max_bytes
        tiny = AdapterCache(base.model, base.fingerprint, max_memories=8, max_bytes=size // 2)
        with pytest.raises(InweightsError, match="max-memory-mb"):
            tiny.acquire(a)
    finally:
        cache.close()


def test_a_new_version_is_served_without_restart_and_running_requests_finish_on_theirs(workspace, base):
    make_memory(base, "acme", seed=1)
    other = make_memory(base, "other", seed=2)
    with running(base) as (url, server):
        decode = server.batcher._decode
        server.batcher._decode = lambda batch: (time.sleep(0.02), decode(batch))  # keep the long one going ~4 s
        api = client(url)
        stream = api.completions.create(model="acme", prompt=PROMPTS[1], max_tokens=200, stream=True)
        first = next(iter(stream))
        republish(other, "acme")  # acme@2, published while the first request is generating
        during = api.completions.create(model="acme", prompt=PROMPTS[1], max_tokens=20)
        deadline = time.monotonic() + 2.0  # the worker retires the finished row just after the reply goes out
        while server.batcher.running > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.batcher.running == 1  # the first is still generating, on acme@1
        rest = list(stream)
        server.batcher._decode = decode
        old_text = first.choices[0].text + "".join(c.choices[0].text for c in rest)
        assert first.model == "acme@1" and during.model == "acme@2"

        pinned_old = api.completions.create(model="acme@1", prompt=PROMPTS[1], max_tokens=200)
        pinned_new = api.completions.create(model="acme@2", prompt=PROMPTS[1], max_tokens=20)
        assert old_text == pinned_old.choices[0].text
        assert during.choices[0].text == pinned_new.choices[0].text != pinned_old.choices[0].text[:20]
        assert {"acme@1", "acme@2"} <= set(server.adapters.loaded)


def test_a_client_that_goes_away_frees_its_row_and_its_place(workspace, base):
    with running(base, max_concurrent_per_key=1) as (url, server):
        decode = server.batcher._decode
        server.batcher._decode = lambda batch: (time.sleep(0.005), decode(batch))
        body = {"model": "base", "prompt": PROMPTS[0], "max_tokens": 400, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
            next(response.iter_lines())
        deadline = time.time() + 5
        while server.batcher.running or server._active.get("open"):
            assert time.time() < deadline, "the abandoned request kept running"
            time.sleep(0.01)
        server.batcher._decode = decode
        assert httpx.post(url + "/v1/completions", json={**body, "stream": False, "max_tokens": 2}).status_code == 200


# --- tenants ------------------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_can_be_revoked(workspace):
    key = add_key("acme-co", ["acme"])
    text = (workspace / "keys.json").read_text()
    assert key.startswith("iw-") and key not in text
    [entry] = list_keys()
    assert entry["tenant"] == "acme-co" and entry["memories"] == ["acme"] and "sha256" not in entry
    assert revoke_key(entry["id"]) == 1 and list_keys() == []
    with pytest.raises(InweightsError, match="no key"):
        revoke_key(entry["id"])
    with pytest.raises(InweightsError, match="invalid memory name"):
        add_key("x", ["../etc"])


def test_a_key_never_reaches_or_learns_of_another_tenants_memory(workspace, base):
    make_memory(base, "acme", seed=1)
    make_memory(base, "globex", seed=2)
    acme_key = add_key("acme-co", ["acme"])
    globex_key = add_key("globex-co", ["globex"])
    with running(base) as (url, _):
        def post(model, key=acme_key):
            return httpx.post(url + "/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2},
                              headers={"Authorization": f"Bearer {key}"})

        assert post("acme").status_code == 200
        answers = {m: post(m) for m in ["globex", "globex@1", "nope", "../x", "a/b", "ACME", "acme@7", "..", "%2e"]}
        for model, response in answers.items():
            assert response.status_code == 404
            body = response.json()
            assert body == {"error": {"message": f"The model '{model}' does not exist or you do not have access to "
                                                 "it.", "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_found"}}
        assert post("globex", globex_key).status_code == 200
        assert {m.id for m in client(url, acme_key).models.list().data} == {"base", "acme"}

        assert post("acme", "wrong").status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401
        revoke_key(acme_key)  # takes effect without a restart
        denied = post("acme")
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"


def test_open_server_refuses_a_non_loopback_address(workspace, base):
    with pytest.raises(InweightsError, match="loopback"):
        Server(base, ServeConfig(host="0.0.0.0"))


# --- limits -------------------------------------------------------------------------------------------------


def test_each_limit_answers_a_clear_openai_shaped_error(workspace, base):
    settings = dict(max_prompt_tokens=16, max_tokens=8, max_body_kb=1, max_concurrent_per_key=1, max_queue=1)
    with running(base, **settings) as (url, server):
        def post(body, **kw):
            return httpx.post(url + "/v1/completions", json={"model": "base", **body}, timeout=30, **kw)

        too_long = post({"prompt": "word " * 40, "max_tokens": 2})
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
        assert "at most 16" in too_long.json()["error"]["message"]
        too_many = post({"prompt": "Hi", "max_tokens": 9})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"
        too_big = post({"prompt": "x" * 2000, "max_tokens": 2})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
        bad = httpx.post(url + "/v1/completions", content=b"{not json", timeout=30)
        assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}

        # Hold one request in the queue by pausing the batcher, then probe the per-key and queue limits.
        server.batcher.stop()
        held = threading.Thread(target=post, args=({"prompt": "Hi", "max_tokens": 2},))
        held.start()
        while server.batcher.waiting < 1:
            time.sleep(0.01)
        busy = post({"prompt": "Hi", "max_tokens": 2})
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_concurrent_requests"
        server.config.max_concurrent_per_key = 5
        full = post({"prompt": "Hi", "max_tokens": 2})
        assert full.status_code == 429 and full.json()["error"]["code"] == "server_overloaded"
        server.batcher.start()
        held.join(30)
        assert post({"prompt": "Hi", "max_tokens": 2}).status_code == 200

        # The official client sees a 429 as what it is.
        server.batcher.stop()
        server.config.max_concurrent_per_key = 1
        held = threading.Thread(target=post, args=({"prompt": "Hi", "max_tokens": 2},))
        held.start()
        while server.batcher.waiting < 1:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError, match="requests in progress"):
            client(url).completions.create(model="base", prompt="Hi", max_tokens=2)
        server.batcher.start()
        held.join(30)


def test_queue_full_is_immediate(base):
    adapters = AdapterCache(base.model, base.fingerprint, max_memories=1, max_bytes=1 << 30)
    batcher = Batcher(base.model, base.tokenizer, adapters, max_queue=2)  # not started: nothing drains
    for _ in range(2):
        batcher.submit(make_request(base, "Hi", None))
    with pytest.raises(QueueFull, match="capacity"):
        batcher.submit(make_request(base, "Hi", None))
    adapters.close()


# --- export -------------------------------------------------------------------------------------------------


def test_export_peft_for_vllm_and_merged_model(workspace, base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = make_memory(base, "acme", rank=8, targets=ALL_LINEAR, seed=4)
    out = export_memory("acme", tmp_path / "acme-lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["bias"] == "none" and not config.get("modules_to_save")
    assert (out / "adapter_model.safetensors").read_bytes() == (version.path / "adapter_model.safetensors").read_bytes()
    assert vllm_max_lora_rank(out) == 8
    with pytest.raises(InweightsError, match="not an empty folder"):
        export_memory("acme", out)

    merged_dir = export_memory("acme", tmp_path / "acme-merged", format="merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    eos = [base.tokenizer.eos_token_id]
    for prompt in PROMPTS:
        assert generate(merged, tokenizer, [prompt], 16, stop_token_ids=eos) == [alone(base, version, prompt, 16, eos)]


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"), ({"r": 1024}, "above vLLM's largest"), ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
])
def test_export_refuses_adapters_vllm_cannot_load(workspace, base, tmp_path, change, message):
    version = make_memory(base, "acme", seed=5)
    path = version.path / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    with pytest.raises(InweightsError, match=message):
        export_memory("acme", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rollback_and_rm_are_followed_without_restart(workspace, base):
    from inweights.versions import remove, rollback

    make_memory(base, "acme", seed=1)
    make_memory(base, "acme", seed=2)
    with running(base) as (url, server):
        api = client(url)
        first = api.completions.create(model="acme@1", prompt=PROMPTS[1], max_tokens=12)
        second = api.completions.create(model="acme", prompt=PROMPTS[1], max_tokens=12)
        assert second.model == "acme@2" and second.choices[0].text != first.choices[0].text
        rollback("acme", 1)  # acme@3 holds acme@1's memory
        back = api.completions.create(model="acme", prompt=PROMPTS[1], max_tokens=12)
        assert back.model == "acme@3" and back.choices[0].text == first.choices[0].text
        remove("acme@3")
        after = api.completions.create(model="acme", prompt=PROMPTS[1], max_tokens=12)
        assert after.model == "acme@2" and after.choices[0].text == second.choices[0].text
        with pytest.raises(openai.NotFoundError):
            api.completions.create(model="acme@3", prompt=PROMPTS[1], max_tokens=12)
