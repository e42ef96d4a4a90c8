"""Teacher throughput: a remote teacher against `inweights serve` on the same machine, at several concurrencies.

Runs the server in this process (uvicorn on loopback, the embedded model), then asks the same prompts (question-
writing prompts of the `qa` strategy over the demo handbook's sentences, greedy) through `RemoteTeacher` at each
concurrency, with no cache, and through the local teacher (batched generation in-process, the default) as the
baseline of the same run. Then times `synthesize` of the demo handbook with `qa` and `rephrase` through the
server, and reports each strategy's yield (kept / made).

    python benchmarks/teacher.py                                  # embedded gemma-3-270m
    python benchmarks/teacher.py --base DIR --prompts 8 --concurrency 1,4 --out /tmp/teacher   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per measurement (default 32)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--no-synthesis", action="store_true", help="skip timing the handbook's synthesis")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import socket
    import tempfile

    import uvicorn

    from inweights.config import SynthConfig
    from inweights.corpus import chunk_documents, load_corpus
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.serve import ServeConfig
    from inweights.serve.app import Server, create_app
    from inweights.synth import ExampleCache, synthesize
    from inweights.synth.qa import _WRITE_PREFIX
    from inweights.synth.remote import RemoteTeacher
    from inweights.synth.teacher import LocalTeacher
    from inweights.synth.text import answer_spans, sentences

    base = load_base(args.base or DEFAULT_BASE)
    handbook = ROOT / "src" / "inweights" / "data" / "demo" / "handbook"
    chunks = chunk_documents(load_corpus([handbook]), base.tokenizer, max_tokens=256)
    asks = [(c, s, a) for c in chunks for s in sentences(c.text) for a in answer_spans(s, limit=1)][: args.prompts]
    prompts = [_WRITE_PREFIX.format(passage=c.text) + f"Sentence: {s}\nAnswer: {a}\nQuestion:" for c, s, a in asks]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Server(base, ServeConfig(port=port, max_concurrent_per_key=64))
    web = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1"
    results: dict = {"prompts": len(prompts), "max_tokens": args.max_tokens, "base": base.name,
                     "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(),
                                 "torch": torch.__version__}, "remote": {}}
    try:
        t = time.perf_counter()
        local = LocalTeacher(base).complete(prompts, max_new_tokens=args.max_tokens)
        seconds = time.perf_counter() - t
        tokens = sum(len(base.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in local)
        results["local"] = {"seconds": round(seconds, 2), "requests_per_s": round(len(prompts) / seconds, 3),
                            "completion_tokens_per_s": round(tokens / seconds, 2)}
        print(f"local (in-process, batched): {results['local']}", flush=True)
        for c in [int(x) for x in args.concurrency.split(",")]:
            remote = RemoteTeacher(url, "base", concurrency=c, timeout=600)
            t = time.perf_counter()
            answers = remote.complete(prompts, max_new_tokens=args.max_tokens)
            seconds = time.perf_counter() - t
            results["remote"][str(c)] = {
                "seconds": round(seconds, 2), "requests_per_s": round(len(prompts) / seconds, 3),
                "completion_tokens_per_s": round(remote.usage["completion_tokens"] / seconds, 2),
                "vs_local": round(results["local"]["seconds"] / seconds, 3),
                "same_as_local": sum(a.strip() == b.strip() for a, b in zip(answers, local))}
            print(f"remote c={c}: {results['remote'][str(c)]}", flush=True)
        if not args.no_synthesis:
            with tempfile.TemporaryDirectory() as tmp:
                remote = RemoteTeacher(url, "base", concurrency=16, timeout=600)
                config = SynthConfig(strategies=("qa", "rephrase"))
                t = time.perf_counter()
                examples, stats = synthesize(chunks, remote, config, ExampleCache(Path(tmp)), progress=False)
                seconds = time.perf_counter() - t
            results["handbook_synthesis"] = {
                "chunks": len(chunks), "seconds": round(seconds, 1), "examples": len(examples),
                "usage": remote.usage,
                "yield": {name: {"made": s.get("made", 0), "kept": s.get("examples", 0)} for name, s in stats.items()},
                "stats": stats}
            print(f"handbook synthesis: {json.dumps(results['handbook_synthesis']['yield'])} in {seconds:.0f}s")
    finally:
        web.should_exit = True
        thread.join(10)
        server.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher.json").write_text(json.dumps(results, indent=1))
    (args.out / "teacher.md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(r: dict) -> str:
    lines = ["# Teacher throughput", "",
             f"`python benchmarks/teacher.py` ({r['prompts']} qa question-writing prompts over the demo handbook, "
             f"greedy, at most {r['max_tokens']} tokens; `inweights serve` on {r['base']} in the same process, "
             f"{r['machine']['threads']} threads).", "",
             "| teacher | seconds | requests/s | completion tokens/s | speed vs local |", "|---|---|---|---|---|",
             f"| local (in-process batched generation) | {r['local']['seconds']} | {r['local']['requests_per_s']} | "
             f"{r['local']['completion_tokens_per_s']} | 1.0 |"]
    for c, m in r["remote"].items():
        lines.append(f"| remote, concurrency {c} | {m['seconds']} | {m['requests_per_s']} | "
                     f"{m['completion_tokens_per_s']} | {m['vs_local']} |")
    if "handbook_synthesis" in r:
        h = r["handbook_synthesis"]
        lines += ["", f"Demo handbook ({h['chunks']} chunks), `qa` + `rephrase` through the server at concurrency "
                      f"16: {h['seconds']} s, {h['usage']['requests']} requests; yield (kept / made): "
                      + ", ".join(f"{k} {v['kept']}/{v['made']}" for k, v in h["yield"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
