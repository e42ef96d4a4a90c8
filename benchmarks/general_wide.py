"""Forgetting on more items: the four general tasks on their first N items (default 500) for the base and for
memories kept by `strength.py --keep`, so that a change of 2 points can be told from the noise of 100 items.

A memory reshuffles which items a 270M model gets right (strength.py's runs lose 9 to 13 items of 100 on a task
and gain nearly as many), so at 100 items one task's change has a standard error of about 3 points and the
target "no task down more than 2" cannot be read from one run. Here each change comes with its 95% interval
(paired: from the items lost and gained) and is split into the first 100 items, the ones strength.py scores,
and the items after them, which no earlier run looked at.

Run as:
    python benchmarks/general_wide.py --skip-passages 24 --passages 24 --items 500 \
        --memory lora-sft-guard-facts-all@0.7 \
        --memory lora-sft-guard-facts-all+lora-sft-guard-facts-all-sd1@0.7 \
        --out benchmarks/results/general_wide_check24
A memory is POINT[+POINT...]@SCALE: one kept memory of a plane.py point, or the mean of several (as
strength.py --average-with scores it), its update scaled by SCALE (a number, or a strength.py profile such as
'rank=16,all=0.75'). Outputs general_wide.json (every number, each item's mark) and general_wide.md in --out; an
interrupted run resumes, scoring only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plane  # noqa: E402
import strength  # noqa: E402
import yes_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = (("arc_easy", "acc", "ARC-E"), ("piqa", "acc", "PIQA"), ("boolq", "acc", "BoolQ"),
         ("triviaqa", "match", "TriviaQA"))
FIRST = 100
"""Items strength.py and plane.py score (--general-limit 100): the split point of the report."""


def paired_change(base_marks: str, marks: str) -> dict:
    """The change in points from `base_marks` to `marks` (one "1"/"0" per item, the same items), the items lost and
    gained, and the half-width of its 95% interval: each item changes by -1, 0 or +1, so the change is a mean of
    paired differences and its standard error is their standard deviation over the square root of n."""
    if len(base_marks) != len(marks) or not marks:
        raise ValueError(f"need the same items marked: {len(base_marks)} and {len(marks)}")
    n = len(marks)
    lost = sum(a == "1" and b == "0" for a, b in zip(base_marks, marks))
    gained = sum(a == "0" and b == "1" for a, b in zip(base_marks, marks))
    mean = (gained - lost) / n
    variance = ((lost + gained) / n - mean * mean) * n / max(n - 1, 1)
    return {"n": n, "points": 100 * mean, "lost": lost, "gained": gained,
            "ci95_points": 100 * 1.96 * math.sqrt(max(variance, 0.0) / n)}


def split(base_marks: str, marks: str, first: int = FIRST) -> dict:
    """paired_change over all items, the first `first` and the rest (absent when there are no more)."""
    parts = {"all": paired_change(base_marks, marks), "first": paired_change(base_marks[:first], marks[:first])}
    if len(marks) > first:
        parts["rest"] = paired_change(base_marks[first:], marks[first:])
    return parts


def parse_memory(spec: str) -> tuple[list[str], str]:
    """'POINT[+POINT...]@SCALE' -> (points, scale as strength.py keys it); SCALE is a number or a strength.py
    profile (e.g. 'rank=16,all=0.75')."""
    points, at, scale = spec.rpartition("@")
    if not at or not points:
        raise SystemExit(f"memory {spec!r}: expected POINT[+POINT...]@SCALE")
    try:
        return points.split("+"), f"{float(scale):g}"
    except ValueError:
        strength.check_profile(scale)
        return points.split("+"), scale


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", action="append", default=[], help="POINT[+POINT...]@SCALE, repeatable")
    parser.add_argument("--items", type=int, default=500, help="first items of each task (BoolQ has 500)")
    parser.add_argument("--passages", type=int, default=24)
    parser.add_argument("--skip-passages", type=int, default=24)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "general_wide")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    specs = [(spec, *parse_memory(spec)) for spec in args.memory]
    for _, points, _ in specs:
        for p in points:
            if plane._parse(p).method != "lora":
                raise SystemExit(f"{p}: general_wide scores kept LoRA memories")

    from inweights.evaluate.general import GeneralLimits, general_suite
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.store import Workspace

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "general_wide.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"items": args.items, "passages": args.passages, "skip_passages": args.skip_passages,
                "base": DEFAULT_BASE}
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{path} was made with {results['settings']}; use another --out")
    results["settings"] = settings
    results["versions"] = plane._versions()
    results.setdefault("memories", {})
    limits = GeneralLimits(arc_easy=args.items, piqa=args.items, boolq=args.items, triviaqa=args.items,
                           wikitext_tokens=0)
    if "base" in results and all(spec in results["memories"] for spec, _, _ in specs):
        return _report(results, args.out, args.data)  # nothing left to score: no model to load
    base = load_base(DEFAULT_BASE)
    progress = not args.no_progress

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    def evaluate(model) -> dict:
        t = time.perf_counter()
        general = general_suite(model, base.tokenizer, args.data / "general", limits, base.stop_token_ids,
                                progress=progress)
        return {"general": general, "eval_s": time.perf_counter() - t}

    if "base" not in results:
        results["base"] = evaluate(base.model)
        save()
    workspace = Workspace()
    for spec, points, scale in specs:
        if spec in results["memories"]:
            continue
        versions = [strength._kept_other(workspace, plane._parse(p), args.skip_passages, args.passages)
                    for p in points]
        with strength.scaled_memory(base, workspace, versions, scale, "lora") as model:
            row = evaluate(model)
        row["memories"] = [v.ref for v in versions]
        row["changes"] = {task: split(results["base"]["general"][task]["correct"], row["general"][task]["correct"])
                          for task, _, _ in TASKS}
        results["memories"][spec] = row
        print(f"{spec}: " + ", ".join(f"{label} {row['changes'][task]['all']['points']:+.1f}"
                                      for task, _, label in TASKS), flush=True)
        save()
    return _report(results, args.out, args.data)


def cell(change: dict) -> str:
    return f"{change['points']:+.1f} ± {change['ci95_points']:.1f} (-{change['lost']}/+{change['gained']})"


def _report(results: dict, out: Path, data: Path) -> dict:
    s = results["settings"]
    b = results["base"]["general"]
    lines = [f"# General tasks on {s['items']} items each (memories of SQuAD dev passages {s['skip_passages'] + 1}-"
             f"{s['skip_passages'] + s['passages']})", "",
             "Base: " + ", ".join(f"{label} {100 * b[task][key]:.1f}% of {b[task]['n']}" for task, key, label in TASKS)
             + ".", "",
             "Each cell: the change in points against the base, ± the half-width of its 95% interval (paired), "
             "(-items lost/+items gained). Items 1-100 are those strength.py scores; the items after them are new.",
             "", "| memory | items | ARC-E | PIQA | BoolQ | TriviaQA | tasks down > 2 |",
             "|---|---|---|---|---|---|---|"]
    for spec, row in results["memories"].items():
        first = row["changes"]["boolq"]["first"]["n"]
        for part, name in (("all", f"1-{s['items']}"), ("first", f"1-{first}"), ("rest", f"{first + 1}-{s['items']}")):
            changes = [row["changes"][task].get(part) for task, _, _ in TASKS]
            if None in changes:
                continue
            down = [label for (_, _, label), c in zip(TASKS, changes) if c["points"] < -2]
            lines.append(f"| {spec if part == 'all' else ''} | {name} | " + " | ".join(cell(c) for c in changes)
                         + f" | {', '.join(down) or 'none'} |")
    base_marks = b["boolq"]["correct"]
    gold = yes_rate.gold_labels(data, len(base_marks))
    lines += ["", f"BoolQ's first {len(gold)} items are {100 * sum(gold) / len(gold):.0f}% \"yes\"; the base answers "
              f"\"yes\" to {sum(yes_rate.answers(base_marks, gold))} of them, each memory to:", ""]
    for spec, row in results["memories"].items():
        r = yes_rate.shift(base_marks, row["general"]["boolq"]["correct"], gold)
        lines.append(f"- {spec}: {r['yes']} (lost gold yes / no: {r['lost_gold_yes']} / {r['lost_gold_no']}; "
                     f"gained: {r['gained_gold_yes']} / {r['gained_gold_no']})")
    (out / "general_wide.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
