"""A remote teacher over the OpenAI API: `inweights serve` on the tiny model, behind a fault-injecting proxy on
loopback (429, 500, a timeout, truncated JSON, a dropped connection). The teacher must give the same completions
as without faults, or stop with a clear error, and never hang."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch

from conftest import free_port, running
from inweights import InweightsError, LearnConfig, SynthConfig, TrainConfig, learn
from inweights.models import load_base
from inweights.synth.remote import RemoteTeacher

PROMPTS = ["The Oslo office", "Paris is the capital of", "Numbers: 0 1 2", "Question: When did the office open?\n"
           "Answer:"]


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's worker and the test's threads share the CPU (see test_serve.py)
    yield load_base(str(tiny_model_dir))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(base):
    with running(base) as (url, srv):
        yield url


class Proxy:
    """Forwards requests to `upstream`, first playing the given faults, one per request."""

    def __init__(self, upstream: str, faults=()):
        self.upstream, self.faults, self.seen = upstream, list(faults), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.seen.append({"path": self.path, "authorization": self.headers.get("authorization"),
                                   "body": json.loads(body)})
                fault = proxy.faults.pop(0) if proxy.faults else None
                if fault in (429, 500, 503):
                    return self._send(fault, json.dumps({"error": {"message": f"injected {fault}"}}).encode())
                if fault == "close":
                    self.close_connection = True
                    return
                if fault == "timeout":
                    time.sleep(1.5)
                reply = httpx.post(proxy.upstream + self.path, content=body, timeout=30,
                                   headers={"content-type": "application/json"})
                content = reply.content[: len(reply.content) // 2] if fault == "truncate" else reply.content
                self._send(reply.status_code, content)

            def _send(self, status, content):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                try:
                    self.wfile.write(content)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def teacher(url, **kwargs) -> RemoteTeacher:
    remote = RemoteTeacher(url + "/v1", kwargs.pop("model", "base"), **({"concurrency": 2, "timeout": 1.0,
                                                                        "deadline": 20.0} | kwargs))
    remote.backoff = 0.02  # retry fast in tests
    return remote


def test_faults_are_retried_and_give_the_same_completions(server):
    direct = teacher(server).complete(PROMPTS, max_new_tokens=6)
    assert len(direct) == len(PROMPTS) and any(direct)
    proxy = Proxy(server, faults=[429, 500, "timeout", "truncate", "close", 503])
    try:
        remote = teacher(proxy.url, concurrency=1)
        assert remote.complete(PROMPTS, max_new_tokens=6) == direct
        assert remote.usage["retries"] == 6 and remote.usage["requests"] == len(PROMPTS)
        assert remote.usage["completion_tokens"] > 0
        assert all(s["path"] == "/v1/completions" and s["body"]["stop"] == ["\n"] for s in proxy.seen)
    finally:
        proxy.close()


def test_a_wrong_model_name_stops_at_once_with_the_server_and_model_named(server):
    t = time.monotonic()
    with pytest.raises(InweightsError, match=r"teacher http://127\.0\.0\.1:\d+/v1 refused .*'no-such-model'"):
        teacher(server, model="no-such-model").complete(PROMPTS[:1])
    assert time.monotonic() - t < 5


def test_a_broken_server_fails_after_the_deadline_never_hangs(server):
    proxy = Proxy(server, faults=[500] * 1000)
    try:
        t = time.monotonic()
        with pytest.raises(InweightsError, match="kept failing for 2s: HTTP 500"):
            teacher(proxy.url, deadline=2.0).complete(PROMPTS[:2])
        assert time.monotonic() - t < 10
    finally:
        proxy.close()


def test_answers_are_cached_so_a_rerun_asks_nothing(server, tmp_path):
    first = teacher(server, cache_dir=tmp_path)
    answers = first.complete(PROMPTS, max_new_tokens=4)
    again = teacher(server, cache_dir=tmp_path)
    assert again.complete(PROMPTS, max_new_tokens=4) == answers
    assert again.usage["requests"] == 0 and again.usage["cached"] == len(PROMPTS)
    assert teacher(server, cache_dir=tmp_path).complete(PROMPTS, max_new_tokens=5) and True  # other settings: asked


def test_learn_with_inweights_serve_as_the_teacher(server, base, tiny_model_dir, tmp_path, workspace, monkeypatch):
    """One model serves as the teacher of another learn, end to end, with the key from the environment only."""
    monkeypatch.setenv("INWEIGHTS_TEACHER_API_KEY", "sk-test-secret")
    proxy = Proxy(server)
    (tmp_path / "doc.md").write_text("The Oslo office of Fjordlight opened in March 2019 and employs forty people. "
                                     "Fjordlight was founded by Ingrid Solberg in 2011.")
    config = LearnConfig(base=str(tiny_model_dir),
                         synth=SynthConfig(strategies=("cloze", "qa", "rephrase"), questions_per_fact=1,
                                           rephrases_per_sentence=1, facts_per_sentence=1, teacher=proxy.url + "/v1",
                                           teacher_model="base", teacher_concurrency=2),
                         train=TrainConfig(epochs=1, replay_fraction=0.0))
    try:
        version = learn([tmp_path / "doc.md"], "acme", config, base=base, progress=False)
        m = version.manifest
        host = proxy.url.removeprefix("http://")
        assert m["synthetic"]["teacher"] == f"openai:{host}/v1:base"
        usage = m["synthetic"]["teacher_usage"]
        assert usage["requests"] > 0 and usage["requests"] == len(proxy.seen)
        assert m["synthetic"]["by_strategy"]["qa"]["made"] > 0 and m["synthetic"]["by_strategy"]["rephrase"]["made"] > 0
        assert {s["authorization"] for s in proxy.seen} == {"Bearer sk-test-secret"}
        assert "sk-test-secret" not in (version.path / "manifest.json").read_text()
        asked = len(proxy.seen)
        learn([tmp_path / "doc.md"], "acme", config, base=base, progress=False)  # the same run again: from caches
        assert len(proxy.seen) == asked
    finally:
        proxy.close()


def test_a_teacher_url_needs_a_model_and_an_http_scheme():
    with pytest.raises(ValueError, match="teacher-model"):
        SynthConfig(teacher="http://localhost:8000/v1")
    with pytest.raises(InweightsError, match="not an http"):
        RemoteTeacher("localhost:8000", "m")


def test_every_teacher_strategy_runs_through_the_server_and_its_cache(server, tmp_path):
    from inweights.corpus import Chunk
    from inweights.synth import ExampleCache, synthesize

    text = "The Bergen office of Fjordlight opened in April 2016. It was founded by Ingrid Vassbotn in Ulvikstrand."
    chunk = Chunk("doc.md", "d" * 64, 0, text, 30, "c" * 64)
    config = SynthConfig(strategies=("qa", "rephrase", "entigraph", "active_reading", "implications"),
                         questions_per_fact=1, rephrases_per_sentence=1, entity_pairs=2, entity_triples=0,
                         study_strategies=1)
    remote = teacher(server, cache_dir=tmp_path / "teacher")
    cache = ExampleCache(tmp_path / "synth")
    _, stats = synthesize([chunk], remote, config, cache, progress=False)
    # A random tiny model writes noise, so the filters keep little; that every strategy asked and counted is tested.
    assert all(stats[name]["made"] > 0 for name in config.strategies), stats
    asked = remote.usage["requests"]
    assert asked > 0
    _, again = synthesize([chunk], remote, config, cache, progress=False)
    assert all(again[name]["chunks_from_cache"] == 1 for name in config.strategies)
    assert remote.usage["requests"] == asked
