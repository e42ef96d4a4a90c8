"""Serving benchmark: the cost of memories in a batch, time to first token, and a load test, in one run.

1. Decode throughput at the same batch size: every row on one memory vs every row on the base model
   (target: at most 10% slower), and every row on a different memory vs the base (target: at least 0.8x).
   Decode time is T(N tokens) - T(1 token), so the prefill is left out; medians over interleaved repeats.
2. Time to first token over HTTP on loopback: a question to a memory vs the same question after a ~4k-token
   document in the prompt of the base model (the "in-context" alternative; target: at least 10x lower).
3. Load test: 4x `--max-batch` clients for `--load-seconds` against a server with fewer memory slots than
   memories (so memories are evicted and reloaded): no 5xx, every request answered or refused with 429,
   each answer equal to the same request sent alone, resident memory bounded.

Memories are random rank-16 LoRA adapters on every linear layer (the shape `learn` makes), written to a
temporary workspace; throughput does not depend on what a memory learned. Results go to
benchmarks/results/serve.{json,md}.

Run as:
    python benchmarks/serve.py                                           # embedded gemma-3-270m
    python benchmarks/serve.py --base DIR --tokens 16 --load-seconds 5 --threads 1   # smoke test, small model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
TARGETS = {"one_memory_overhead": 0.10, "mixed_vs_base": 0.8, "ttft_speedup": 10.0}
QUESTIONS = ["When did the Oslo office open?", "Who founded the company?", "How many people work in Bergen?"]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_memories(base, count: int, rank: int) -> list:
    """Random LoRA memories: A from PEFT's init, B small and random so each memory changes the output."""
    from peft import LoraConfig, get_peft_model

    from inweights.store import Workspace

    versions = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(base.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LINEAR),
                                                      init_lora_weights=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)
        name = f"bench-{i}"
        manifest = {"name": name, "method": "lora", "base": {"name": base.name, "fingerprint": base.fingerprint}}

        def write(directory, model=model, manifest=manifest):
            model.save_pretrained(str(directory))
            (directory / "manifest.json").write_text(json.dumps(manifest))

        versions.append(Workspace().publish(name, write))
        model.unload()
    return versions


# --- 1. decode throughput -----------------------------------------------------------------------------------


def decode_throughput(base, versions, batch: int, tokens: int, repeats: int) -> dict:
    from inweights.serve.adapters import AdapterCache
    from inweights.serve.batcher import Batcher, Generation

    adapters = AdapterCache(base.model, base.fingerprint, max_memories=len(versions), max_bytes=1 << 40)
    batcher = Batcher(base.model, base.tokenizer, adapters, max_batch=batch, max_queue=batch).start()
    prompt_ids = base.tokenizer(QUESTIONS[0])["input_ids"]
    scenarios = {"base": [None] * batch, "one_memory": [versions[0]] * batch,
                 "mixed_memories": [versions[i % len(versions)] for i in range(batch)]}

    def run(rows, n: int) -> float:
        done = threading.Semaphore(0)
        start = time.perf_counter()
        for version in rows:  # no stop tokens: every row decodes exactly n tokens
            batcher.submit(Generation(prompt_ids, n, version, lambda k, d: k != "text" and done.release()))
        for _ in rows:
            done.acquire()
        return time.perf_counter() - start

    times = {name: {"full": [], "first": []} for name in scenarios}
    try:
        for repeat in range(repeats + 1):  # the first round warms up (and loads the memories)
            for name, rows in scenarios.items():
                full, first = run(rows, tokens), run(rows, 1)
                if repeat:
                    times[name]["full"].append(full)
                    times[name]["first"].append(first)
    finally:
        batcher.stop()
        adapters.close()
    result = {"batch": batch, "tokens_per_row": tokens, "repeats": repeats}
    for name in scenarios:
        decode_s = statistics.median(times[name]["full"]) - statistics.median(times[name]["first"])
        result[name] = {"decode_tokens_per_s": batch * (tokens - 1) / decode_s, "decode_s": decode_s,
                        "prefill_s": statistics.median(times[name]["first"])}
    base_tps = result["base"]["decode_tokens_per_s"]
    result["one_memory_overhead"] = base_tps / result["one_memory"]["decode_tokens_per_s"] - 1
    result["mixed_vs_base"] = result["mixed_memories"]["decode_tokens_per_s"] / base_tps
    return result


# --- a real server on loopback ------------------------------------------------------------------------------


class LoopbackServer:
    def __init__(self, base, **settings):
        import uvicorn

        from inweights.serve.app import Server, create_app
        from inweights.serve.config import ServeConfig

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = Server(base, ServeConfig(port=port, **settings))
        self.web = uvicorn.Server(uvicorn.Config(create_app(self.server), host="127.0.0.1", port=port,
                                                 log_level="error"))
        self.thread = threading.Thread(target=self.web.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}/v1"

    def __enter__(self):
        self.thread.start()
        while not self.web.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.web.should_exit = True
        self.thread.join(30)
        self.server.close()


def complete(url: str, model: str, prompt: str, max_tokens: int) -> str:
    import httpx

    r = httpx.post(url + "/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens},
                   timeout=600)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


# --- 2. time to first token ---------------------------------------------------------------------------------


def time_to_first_token(base, version, doc_tokens: int, repeats: int) -> dict:
    import httpx

    from inweights.demo import demo_dir
    from inweights.prompt import QA_TEMPLATE

    limit = getattr(base.model.config, "max_position_embeddings", doc_tokens + 64)
    doc_tokens = min(doc_tokens, limit - 64)
    text = " ".join(p.read_text() for p in sorted((demo_dir() / "handbook").glob("*.md")))
    ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (doc_tokens // len(ids) + 1))[:doc_tokens]
    document = base.tokenizer.decode(ids)
    question = QA_TEMPLATE.format(question=QUESTIONS[0])

    def first_token_s(url, model, prompt) -> float:
        start = time.perf_counter()
        body = {"model": model, "prompt": prompt, "max_tokens": 4, "stream": True}
        with httpx.stream("POST", url + "/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"text": "' in line and '"text": ""' not in line:
                    return time.perf_counter() - start
        raise RuntimeError("no token came back")

    with LoopbackServer(base, max_prompt_tokens=doc_tokens + 256, max_memories=2) as srv:
        first_token_s(srv.url, version.name, question)  # warm up, load the memory
        memory = [first_token_s(srv.url, version.name, question) for _ in range(repeats)]
        in_context = [first_token_s(srv.url, "base", document + "\n\n" + question) for _ in range(repeats)]
    result = {"document_tokens": len(base.tokenizer(document + "\n\n" + question)["input_ids"]),
              "memory_ttft_s": statistics.median(memory), "in_context_ttft_s": statistics.median(in_context),
              "repeats": repeats}
    result["ttft_speedup"] = result["in_context_ttft_s"] / result["memory_ttft_s"]
    return result


# --- 3. load test -------------------------------------------------------------------------------------------


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_test(base, versions, seconds: float, max_batch: int, tokens: int) -> dict:
    import httpx

    from inweights.prompt import QA_TEMPLATE

    models = ["base"] + [v.name for v in versions]
    prompts = [QA_TEMPLATE.format(question=q) for q in QUESTIONS]
    settings = dict(max_batch=max_batch, max_queue=2 * max_batch, max_memories=max(2, len(versions) // 2),
                    max_concurrent_per_key=1000)
    clients = 4 * max_batch
    with LoopbackServer(base, **settings) as srv:
        expected = {(m, p): complete(srv.url, m, p, tokens) for m in models for p in prompts}  # each alone
        counts = {"ok": 0, "rate_limited": 0, "mismatch": 0, "server_error": 0, "other_error": 0}
        rss = [rss_mb()]
        evictions_before = srv.server.adapters.evictions

        async def one_client(i: int, stop_at: float):
            rng = random.Random(i)
            async with httpx.AsyncClient(base_url=srv.url, timeout=300) as http:
                while time.perf_counter() < stop_at:
                    model, prompt = rng.choice(models), rng.choice(prompts)
                    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "stream": rng.random() < 0.5}
                    try:
                        status, text = await send(http, body)
                    except httpx.HTTPError:
                        counts["other_error"] += 1
                        continue
                    if status == 200:
                        counts["ok" if text == expected[(model, prompt)] else "mismatch"] += 1
                    elif status == 429:
                        counts["rate_limited"] += 1
                        await asyncio.sleep(rng.uniform(0.05, 0.2))
                    else:
                        counts["server_error" if status >= 500 else "other_error"] += 1

        async def send(http, body):
            if not body["stream"]:
                r = await http.post("/completions", json=body)
                return r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else None
            parts = []
            async with http.stream("POST", "/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return r.status_code, None
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            return 500, None
                        parts.append(chunk["choices"][0]["text"])
            return 200, "".join(parts)

        async def watch_memory(stop_at: float):
            while time.perf_counter() < stop_at:
                rss.append(rss_mb())
                await asyncio.sleep(0.5)

        async def run():
            stop_at = time.perf_counter() + seconds
            await asyncio.gather(watch_memory(stop_at), *(one_client(i, stop_at) for i in range(clients)))

        start = time.perf_counter()
        asyncio.run(run())
        elapsed = time.perf_counter() - start
        evictions = srv.server.adapters.evictions - evictions_before
    answered = counts["ok"] + counts["mismatch"]
    half = rss[len(rss) // 2 :]
    result = {"seconds": round(elapsed, 1), "clients": clients, "server": settings, "memories": len(versions),
              "requests": sum(counts.values()), **counts, "answers_per_s": answered / elapsed,
              "evictions": evictions, "rss_start_mb": rss[0], "rss_peak_mb": max(rss), "rss_end_mb": rss[-1],
              "rss_growth_second_half_mb": max(half) - half[0]}
    result["passed"] = (counts["server_error"] == counts["other_error"] == counts["mismatch"] == 0 and answered > 0
                        and result["rss_peak_mb"] - result["rss_start_mb"] < max(512, 0.5 * result["rss_start_mb"]))
    return result


# --- report -------------------------------------------------------------------------------------------------


def markdown(r: dict) -> str:
    d, t, lt = r["decode"], r["ttft"], r["load"]
    rows = [
        ("decode tok/s, base (batch %d)" % d["batch"], f"{d['base']['decode_tokens_per_s']:.1f}", "", ""),
        ("decode tok/s, one memory", f"{d['one_memory']['decode_tokens_per_s']:.1f}", "", ""),
        ("decode tok/s, %d different memories" % d["batch"], f"{d['mixed_memories']['decode_tokens_per_s']:.1f}", "",
         ""),
        ("one-memory overhead vs base", f"{100 * d['one_memory_overhead']:.1f}%", "<= 10%",
         _ok(d["one_memory_overhead"] <= TARGETS["one_memory_overhead"])),
        ("mixed memories / base", f"{d['mixed_vs_base']:.2f}x", ">= 0.8x",
         _ok(d["mixed_vs_base"] >= TARGETS["mixed_vs_base"])),
        ("TTFT, memory", f"{1000 * t['memory_ttft_s']:.0f} ms", "", ""),
        (f"TTFT, {t['document_tokens']}-token document in the prompt", f"{1000 * t['in_context_ttft_s']:.0f} ms", "",
         ""),
        ("TTFT speed-up from the memory", f"{t['ttft_speedup']:.1f}x", ">= 10x",
         _ok(t["ttft_speedup"] >= TARGETS["ttft_speedup"])),
        (f"load: {lt['clients']} clients, {lt['seconds']} s", f"{lt['ok']} ok, {lt['rate_limited']} x 429, "
         f"{lt['server_error']} x 5xx, {lt['mismatch']} mismatched, {lt['other_error']} other", "no 5xx, all match",
         _ok(lt["passed"])),
        ("load: resident memory start / peak / end",
         f"{lt['rss_start_mb']:.0f} / {lt['rss_peak_mb']:.0f} / {lt['rss_end_mb']:.0f} MiB", "bounded", ""),
    ]
    lines = [f"# Serving benchmark ({r['base']}, {r['machine']['threads']} threads, {r['machine']['device']})", "",
             "| measure | value | target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    return "\n".join(lines) + "\n"


def _ok(flag: bool) -> str:
    return "pass" if flag else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="gemma-3-270m", help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--batch", type=int, default=8, help="rows decoded together in the throughput runs")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each row decodes in the throughput runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (medians are reported)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the benchmark memories")
    parser.add_argument("--doc-tokens", type=int, default=4096, help="document length for the in-context TTFT")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="length of the load test")
    parser.add_argument("--load-tokens", type=int, default=16, help="max_tokens of each load-test request")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; "
                        "use 1 on a machine shared with other jobs, where spinning threads slow everything)")
    parser.add_argument("--out", default=str(RESULTS / "serve"), help="output path without suffix")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from inweights.models import load_base

    base = load_base(args.base)  # before the switch below: the embedded model's converted cache is reused
    with tempfile.TemporaryDirectory() as home:
        os.environ["INWEIGHTS_HOME"] = home  # the benchmark memories stay out of the user's workspace
        versions = make_memories(base, max(8, args.batch), args.rank)
        print("decode throughput...", flush=True)
        decode = decode_throughput(base, versions, args.batch, args.tokens, args.repeats)
        print("time to first token...", flush=True)
        ttft = time_to_first_token(base, versions[0], args.doc_tokens, args.repeats)
        print(f"load test ({args.load_seconds:.0f} s)...", flush=True)
        load = load_test(base, versions[:8], args.load_seconds, args.batch, args.load_tokens)
    result = {"base": args.base, "decode": decode, "ttft": ttft, "load": load, "targets": TARGETS,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "device": str(next(base.model.parameters()).device)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
