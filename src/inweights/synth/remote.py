"""A teacher behind any OpenAI-compatible endpoint: vLLM, llama.cpp, Ollama, a hosted API, or `inweights serve`.

- Plain completions (`/v1/completions`) when the server has them: the strategies' few-shot prompts are text to
  continue. A server without them (404/405) is asked through chat completions, the prompt as one user message.
- Requests run concurrently (`teacher_concurrency`); 429, 5xx, timeouts, dropped connections and unreadable
  replies are retried with exponential backoff until `teacher_deadline` seconds have passed for that request;
  any other error (a wrong model name, a refused key, a bad request) stops at once with a message naming the
  server and the model.
- The key is read from the environment variable named by `teacher_key_env` (default INWEIGHTS_TEACHER_API_KEY),
  never from the command line, and is not part of the teacher's id (host + model), which the manifest and the
  cache keys record.
- Every answer is cached on disk by (teacher id, prompt, settings), so an interrupted `learn` re-asks nothing it
  already has; `usage` counts requests, tokens, retries and seconds for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from inweights.errors import InweightsError
from inweights.store import write_atomic

DEFAULT_KEY_ENV = "INWEIGHTS_TEACHER_API_KEY"


class RemoteTeacher:
    backoff = 0.5  # seconds before the first retry; doubled each time (with jitter), at most 30

    def __init__(self, url: str, model: str, *, concurrency: int = 4, timeout: float = 60.0,
                 deadline: float = 600.0, key_env: str = DEFAULT_KEY_ENV, cache_dir: Path | None = None):
        import openai

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InweightsError(f"teacher URL {url!r} is not an http(s) URL; give the server's OpenAI base URL, "
                                 "for example http://localhost:8000/v1")
        if not model:
            raise InweightsError("a remote teacher needs --teacher-model (the model name the server serves)")
        self.url, self.model = url.rstrip("/"), model
        self.concurrency, self.timeout, self.deadline = max(1, concurrency), timeout, deadline
        self.client = openai.OpenAI(base_url=self.url, api_key=os.environ.get(key_env) or "none",
                                    timeout=timeout, max_retries=0)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.chat = False  # set once a server answers that it has no plain completions
        self.usage = {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0,
                      "seconds": 0.0}
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        parsed = urlparse(self.url)
        return f"openai:{parsed.netloc}{parsed.path.rstrip('/')}:{self.model}"

    def complete(self, prompts: list[str], *, prefix: str | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, seed: int = 0, stop_at_newline: bool = True) -> list[str]:
        """One completion per prompt (`prefix` + prompt), in order."""
        texts = [(prefix or "") + p for p in prompts]
        settings = {"max_tokens": max_new_tokens, "temperature": temperature, "stop": ["\n"] if stop_at_newline
                    else None}
        t = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            out = list(pool.map(lambda i_text: self._one(i_text[1], settings, seed + i_text[0]), enumerate(texts)))
        with self._lock:
            self.usage["seconds"] = round(self.usage["seconds"] + time.perf_counter() - t, 3)
        return out

    def _one(self, text: str, settings: dict, seed: int) -> str:
        key = hashlib.sha256(json.dumps([self.id, text, settings, seed], sort_keys=True).encode()).hexdigest()
        cached = self._cached(key)
        if cached is not None:
            with self._lock:
                self.usage["cached"] += 1
            return cached
        answer = self._ask(text, settings, seed)
        self._store(key, answer)
        return answer

    def _ask(self, text: str, settings: dict, seed: int) -> str:
        import openai

        start, attempt = time.monotonic(), 0
        while True:
            try:
                return self._request(text, settings, seed)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError,
                    ValueError) as exc:
                attempt += 1
                wait = min(30.0, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                if time.monotonic() - start + wait > self.deadline:
                    raise InweightsError(f"teacher {self.url} (model {self.model!r}) kept failing for "
                                         f"{self.deadline:.0f}s: {_describe(exc)}") from None
                with self._lock:
                    self.usage["retries"] += 1
                time.sleep(wait)
            except openai.APIStatusError as exc:
                message = str(exc.message).lower()
                if exc.status_code in (404, 405) and not self.chat and ("chat" in message or "model" not in message):
                    self.chat = True  # no plain completions here: ask through chat from now on
                    continue
                raise InweightsError(f"teacher {self.url} refused the request for model {self.model!r}: "
                                     f"{_describe(exc)}") from None

    def _request(self, text: str, settings: dict, seed: int) -> str:
        extra = {"stop": settings["stop"]} if settings["stop"] else {}
        if self.chat:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": text}], max_tokens=settings["max_tokens"],
                temperature=settings["temperature"], seed=seed, **extra)
            answer = reply.choices[0].message.content or ""
        else:
            reply = self.client.completions.create(model=self.model, prompt=text, max_tokens=settings["max_tokens"],
                                                   temperature=settings["temperature"], seed=seed, **extra)
            answer = reply.choices[0].text or ""
        if not isinstance(answer, str):
            raise ValueError("the reply has no text")
        with self._lock:
            self.usage["requests"] += 1
            if reply.usage is not None:
                self.usage["prompt_tokens"] += reply.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += reply.usage.completion_tokens or 0
        return answer

    def _cached(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / key[:2] / f"{key}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError):
            return None

    def _store(self, key: str, text: str) -> None:
        if self.cache_dir is None:
            return
        path = self.cache_dir / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"text": text}))


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {message}"
