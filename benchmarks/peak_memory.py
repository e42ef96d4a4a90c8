"""Peak resident memory of `inweights learn`, `ask` and `eval`, each run as its own process on the wiki demo.

Each command runs as a child process and its peak resident set size is read from the kernel when it exits
(`os.wait4`'s ru_maxrss): what a user's machine must hold for that command, model and all. The eval runs the
wiki demo's 40 questions (each with its source page, so in-context can run) under closed_book, in_context, rag,
memory and memory_rag, and the general suite at `--general-limit` items per task.

Results accumulate in benchmarks/results/peak_memory.json under `--label` (say, the commit), and
peak_memory.md shows every label side by side.

    python benchmarks/peak_memory.py --label after                 # embedded gemma-3-270m
    python benchmarks/peak_memory.py --base DIR --budget 200 --general-limit 2 --out /tmp/peak --label smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "inweights" / "data" / "demo"


def run(argv: list[str], env: dict) -> dict:
    """Run `inweights ARGV` as a child process: its peak RSS in MiB, wall seconds and exit code."""
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "inweights", *argv], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"inweights {' '.join(argv)} failed ({code}):\n{output[-3000:]}")
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="name of this measurement (e.g. before, after, a commit)")
    parser.add_argument("--base", default=None, help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--budget", type=int, default=1500, help="synthetic tokens the memory learns (default 1500)")
    parser.add_argument("--general-limit", type=int, default=50, help="items per general task in eval")
    parser.add_argument("--extra", default="", help="extra options for every command (e.g. '--dtype bfloat16')")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    base = ["--base", args.base] if args.base else []
    extra = args.extra.split()
    results_path = args.out / "peak_memory.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, INWEIGHTS_HOME=os.environ.get("INWEIGHTS_HOME", str(Path.home() / ".inweights")))
        questions = Path(folder) / "questions.jsonl"
        rows = [json.loads(line) for line in (DEMO / "wiki_questions.jsonl").read_text().splitlines() if line]
        questions.write_text("".join(json.dumps(r | {"doc": r["source"]}) + "\n" for r in rows))
        memory = f"peak-memory-{os.getpid()}"
        measured = {}
        try:
            measured["learn"] = run(["learn", str(DEMO / "wiki"), "--memory", memory, "--budget", str(args.budget),
                                     "--yes", "--no-progress", *base, *extra], env)
            measured["ask"] = run(["ask", memory, rows[0]["question"], *extra], env)
            measured["eval"] = run(["eval", memory, str(questions), "--docs", str(DEMO / "wiki"), "--conditions",
                                    "closed_book,in_context,rag,memory,memory_rag", "--general-limit",
                                    str(args.general_limit), "--out", str(Path(folder) / "eval"), "--no-progress",
                                    *extra], env)
        finally:
            subprocess.run([sys.executable, "-m", "inweights", "rm", memory, "--yes"], env=env,
                           capture_output=True)
    results[args.label] = {"commands": measured, "base": args.base or "gemma-3-270m", "budget": args.budget,
                           "general_limit": args.general_limit, "extra": args.extra,
                           "commit": _commit()}
    args.out.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1))
    (args.out / "peak_memory.md").write_text(markdown(results))
    print((args.out / "peak_memory.md").read_text())
    return results


def markdown(results: dict) -> str:
    lines = ["# Peak resident memory per command", "",
             "`python benchmarks/peak_memory.py --label LABEL` (wiki demo: learn with `--budget`, ask one question, "
             "eval 40 questions under closed_book, in_context, rag, memory, memory_rag plus the general suite). "
             "Peak RSS of each command's process, MiB.", "",
             "| label | commit | base | options | learn | ask | eval | eval seconds |", "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        c = r["commands"]
        lines.append(f"| {label} | {r['commit']} | {r['base']} | {r['extra'] or '-'} | "
                     f"{c['learn']['peak_rss_mib']:,.0f} | {c['ask']['peak_rss_mib']:,.0f} | "
                     f"{c['eval']['peak_rss_mib']:,.0f} | {c['eval']['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
