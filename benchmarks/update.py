"""Update benchmark: a corpus in releases; `learn --update` against a full re-learn (issue 13).

Release 1 is learned from scratch (memory `chain`); each later release is learned into `chain` with `--update`,
and release 2 also from scratch into `full` (the full re-learn to compare with). Every question is asked
closed-book and sorted, against release 1, into:

- unchanged: the same answer in both releases (retention: the update against release 1's memory);
- changed: another answer now; `stale` = the answer gives a former value;
- new: a fact of a document added since release 1;
- removed: a fact of a document removed since release 1, scored as "still answered" with the old value
  (should fall to the base model's rate).

Forgetting (WikiText-2 perplexity and ARC-Easy, PIQA, BoolQ, TriviaQA) is measured after 1, 2 and 5 updates,
and the time of each update against the full re-learn's, all in one process.

Corpora:
- handbook: the demo handbook (release 1) and benchmarks/data/update/handbook/releases.json (release 2: 9 of
  the 40 asked facts changed, a document added with 8 asked facts, a document removed; releases 3-6: one asked
  fact changed in one chunk each).
- squad: SQuAD dev passages 29-34 (release 1; passages 1-16 were used to tune and check issue 12, and 17-28
  have almost no numeric answers); release 2 changes up to a fifth of the asked facts, those whose answer holds a
  number and occurs once in its passage (each number shifted, the passage edited in place), adds passages 35-36
  and removes passage 29.

    python benchmarks/update.py --corpus handbook --out benchmarks/results/update/handbook
    python benchmarks/update.py --corpus squad --out benchmarks/results/update/squad --chain 1
    python benchmarks/update.py --corpus squad --chain 1 --rehearsal 0 --reuse benchmarks/results/update/squad \
        --out benchmarks/results/update/squad_rehearsal0      # the update again, another rehearsal size
    python benchmarks/update.py --corpus handbook --base DIR --general-limit 2 --out /tmp/upd   # smoke

A rerun with the same --out goes on from what it finished (results.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DATA = ROOT.parent / "shared" / "data"
HANDBOOK = ROOT / "src" / "inweights" / "data" / "demo"
RELEASES = ROOT / "benchmarks" / "data" / "update" / "handbook" / "releases.json"


# --- scenarios: releases of documents and each question's gold answers in each release --------------------------


def handbook_scenario(chain: int) -> tuple[list[dict[str, str]], list[dict]]:
    spec = json.loads(RELEASES.read_text())
    docs = {p.name: p.read_text(encoding="utf-8") for p in sorted((HANDBOOK / "handbook").glob("*.md"))}
    questions = []
    for line in (HANDBOOK / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        questions.append({"question": q["question"], "source": q["source"], "gold": [[q["answer"], *q["aliases"]]]})
    releases = [dict(docs)]
    for k in range(2, chain + 2):
        change = spec["releases"][str(k)]
        docs = dict(docs)
        for name in change.get("add", []):
            docs[name] = (RELEASES.parent / name).read_text(encoding="utf-8")
        for name in change.get("remove", []):
            del docs[name]
        edited = {}
        for edit in change["edits"]:
            assert docs[edit["file"]].count(edit["old"]) == 1, edit
            docs[edit["file"]] = docs[edit["file"]].replace(edit["old"], edit["new"])
            edited[edit["question"]] = [edit["answer"], *edit["aliases"]]
        for q in spec["new_questions"].get(str(k), []):
            questions.append({"question": q["question"], "source": q["source"],
                              "gold": [None] * (k - 1) + [[q["answer"], *q["aliases"]]]})
        for q in questions:
            if len(q["gold"]) < k:
                present = q["source"] in docs
                q["gold"].append(edited.get(q["question"], q["gold"][-1]) if present else None)
        releases.append(docs)
    return releases, questions


def squad_scenario(chain: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict]]:
    from inweights.evaluate.questions import load_squad

    if chain != 1:
        raise SystemExit("the squad corpus has one update (release 2); use --chain 1")
    documents, qs = load_squad(DATA / "squad" / "squad_dev.jsonl", 36)
    ids = list(documents)
    v1_ids, added, removed = ids[28:34], ids[34:36], ids[28]
    r1 = {f"{i}.txt": documents[i] for i in v1_ids}
    r2 = {f"{i}.txt": documents[i] for i in v1_ids + added if i != removed}
    by_doc: dict[str, list] = {}
    for q in qs:
        by_doc.setdefault(q.doc, []).append(q)
    rng = random.Random(seed)
    changes: dict[tuple[str, str], str] = {}  # (doc, old answer) -> new answer
    kept = [i for i in v1_ids if i != removed]
    candidates = []
    for doc in kept:
        answers = {q.answers[0] for q in by_doc[doc]}
        for a in sorted(answers):
            others = [b for b in answers if b != a]
            if re.search(r"\d", a) and documents[doc].count(a) == 1 and not any(a in b or b in a for b in others):
                candidates.append((doc, a))
    asked = sum(len(by_doc[d]) for d in kept)
    rng.shuffle(candidates)
    n_changed = 0
    for doc, a in candidates:
        if n_changed >= 0.2 * asked:
            break
        changes[(doc, a)] = _shift_numbers(a)
        n_changed += sum(q.answers[0] == a for q in by_doc[doc])
    for (doc, a), new in changes.items():
        r2[f"{doc}.txt"] = r2[f"{doc}.txt"].replace(a, new)
    questions = []
    for doc in ids[28:36]:
        for q in by_doc[doc]:
            g1 = [q.answers[0]] if doc in v1_ids else None
            g2 = None if doc == removed else [changes.get((doc, q.answers[0]), q.answers[0])]
            questions.append({"question": q.question, "source": f"{doc}.txt", "gold": [g1, g2]})
    return [r1, r2], questions


def _shift_numbers(text: str) -> str:
    """Every number in `text` moved to another plausible value: years by 3, other numbers by about a third."""
    def shift(match):
        raw = match.group(0)
        n = int(raw.replace(",", ""))
        new = n + 3 if 1000 <= n <= 2100 and "," not in raw else max(n + 1, round(n * 4 / 3))
        return f"{new:,}" if "," in raw else str(new)

    return re.sub(r"\d[\d,]*\d|\d", shift, text)


def category(q: dict, k: int) -> str | None:
    """The question's category in release k+1 (0-based k) against release 1."""
    first, now = q["gold"][0], q["gold"][k]
    if first is None and now is None:
        return None
    if first is None:
        return "new"
    if now is None:
        return "removed"
    return "unchanged" if _norm(first[0]) == _norm(now[0]) else "changed"


def stale_values(q: dict, k: int) -> list[str]:
    now = {_norm(a) for a in q["gold"][k] or []}
    return [a for g in q["gold"][:k] if g for a in g if _norm(a) not in now]


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


# --- scoring ----------------------------------------------------------------------------------------------------


def score(questions: list[dict], answers: dict[str, str], k: int) -> dict:
    from inweights.evaluate.metrics import contains, exact_match

    out: dict = {}
    for cat in ("unchanged", "changed", "new", "removed"):
        rows = [q for q in questions if category(q, k) == cat]
        if not rows:
            continue
        if cat == "removed":  # still answered with the value of release 1
            hits = [contains(answers[q["question"]], q["gold"][0]) for q in rows]
            out[cat] = {"n": len(rows), "still_answered": sum(hits) / len(rows)}
            continue
        acc = [contains(answers[q["question"]], q["gold"][k]) for q in rows]
        em = [exact_match(answers[q["question"]], q["gold"][k]) for q in rows]
        out[cat] = {"n": len(rows), "accuracy": sum(acc) / len(rows), "em": sum(em) / len(rows)}
        if cat == "changed":
            stale = [contains(answers[q["question"]], stale_values(q, k)) if stale_values(q, k) else 0.0
                     for q in rows]
            out[cat]["stale"] = sum(stale) / len(rows)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["handbook", "squad"], default="handbook")
    parser.add_argument("--chain", type=int, default=None, help="successive updates after release 1 (handbook: "
                        "up to 5, default 5; squad: 1)")
    parser.add_argument("--base", default=None, help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--general-limit", type=int, default=100, help="items per general task (default 100)")
    parser.add_argument("--rehearsal", type=float, default=None, help="TrainConfig.rehearsal (default: its default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--forget", default=None, help="after the updates, `forget` this document from the "
                        "newest version and ask its questions (with the values of the last release) and the others")
    parser.add_argument("--reuse", type=Path, default=None, help="take the base, release-1 and full re-learn runs "
                        "(results and memories) of this earlier --out, and run only the updates")
    parser.add_argument("--reuse-updates", type=int, default=0, help="with --reuse, also take its first N updates "
                        "(when they would be the same: a rehearsal larger than the unchanged examples takes them all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chain = args.chain or (5 if args.corpus == "handbook" else 1)

    from inweights import LearnConfig, TrainConfig, learn, load_memory
    from inweights.evaluate.general import GeneralLimits, compare, general_suite
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.store import Workspace

    progress = not args.no_progress
    releases, questions = (handbook_scenario if args.corpus == "handbook" else squad_scenario)(chain)
    base = load_base(args.base or DEFAULT_BASE)
    n = args.general_limit
    limits = GeneralLimits(arc_easy=n, piqa=n, boolq=n, triviaqa=n, wikitext_tokens=2048)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(out / "workspace")
    results_path = out / "results.json"
    if args.reuse and not results_path.is_file():
        _reuse(args.reuse, out, args.reuse_updates)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    settings = {"corpus": args.corpus, "chain": chain, "base": base.name, "general_limit": n,
                "rehearsal": args.rehearsal, "questions": len(questions)}
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{results_path} was made with {results['settings']}; use another --out")
    results["settings"] = settings
    results["machine"] = {"threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__}
    results.setdefault("runs", {})

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))

    train = TrainConfig() if args.rehearsal is None else TrainConfig(rehearsal=args.rehearsal)
    config = LearnConfig(base=args.base or DEFAULT_BASE, train=train)
    exclude = [q["question"] for q in questions]
    all_questions = [q["question"] for q in questions]

    def evaluate(label: str, ref: str | None, k: int, general: bool) -> None:
        if label in results["runs"] and "scores" in results["runs"][label]:
            return
        t = time.perf_counter()
        loaded = load_memory(ref, base=base, workspace=workspace)
        try:
            answers = dict(zip(all_questions, loaded.answer(all_questions)))
            gen = general_suite(loaded.model, base.tokenizer, DATA / "general", limits, base.stop_token_ids,
                                progress=progress) if general else None
        finally:
            loaded.close()
        run = results["runs"].setdefault(label, {})
        run |= {"ref": ref, "release": k + 1, "scores": score(questions, answers, k), "answers": answers,
                "eval_s": round(time.perf_counter() - t, 1)}
        if gen is not None:
            run["general"] = gen
            if "base" in results["runs"] and label != "base":
                run["general_change"] = compare(results["runs"]["base"]["general"], gen)
        save()
        print(f"{label}: {json.dumps(run['scores'])}", flush=True)

    def learned(label: str, release: int, memory: str, update: bool) -> str:
        run = results["runs"].get(label)
        if run and "ref" in run and run.get("manifest"):
            return run["ref"]
        folder = out / "releases" / f"r{release}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in releases[release - 1].items():
            (folder / name).write_text(text, encoding="utf-8")
        version = learn([folder], memory, config, base=base, workspace=workspace, exclude_questions=exclude,
                        progress=progress, update=update, yes=True)
        m = version.manifest
        results["runs"][label] = {"ref": version.ref, "manifest": {
            "lineage": m.get("lineage"), "synthetic": {k: v for k, v in m["synthetic"].items()
                                                        if k not in ("diversity", "by_strategy")},
            "steps": m["training"]["steps"], "tokens": m["training"]["tokens"], "timings": m["timings"],
            "epochs": m["config"]["train"]["epochs"]}}
        save()
        return version.ref

    evaluate("base", None, 1, general=True)
    ref = learned("v1_full", 1, "chain", update=False)
    evaluate("v1_full", ref, 0, general=True)
    ref = learned("v2_full", 2, "full", update=False)
    evaluate("v2_full", ref, 1, general=True)
    for k in range(2, chain + 2):
        label = f"update_{k - 1}"
        ref = learned(label, k, "chain", update=True)
        evaluate(label, ref, k - 1, general=k - 1 in (1, 2, 5))
    if args.forget:
        forget_document(args.forget, results, questions, chain, base, workspace, exclude, progress, save)
    results["summary"] = summary(results, questions, chain)
    save()
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())
    return results


def forget_document(document: str, results: dict, questions: list[dict], chain: int, base, workspace, exclude,
                    progress: bool, save) -> None:
    """`inweights forget` one document from the newest chain version: how many of its questions are still
    answered with their last value (before, after, the base model), and the other questions' accuracy."""
    from inweights.api import forget, load_memory
    from inweights.evaluate.metrics import contains

    if "forget" in results["runs"]:
        return
    last = chain  # 0-based release index of the newest version
    asked = [q for q in questions if q["gold"][last] is not None]
    gone = [q for q in asked if q["source"] == document]
    kept = [q for q in asked if q["source"] != document]
    parent = workspace.get("chain")
    t = time.perf_counter()
    version = forget("chain", [document], base=base, workspace=workspace, progress=progress,
                     exclude_questions=exclude)
    seconds = time.perf_counter() - t
    loaded = load_memory(version.ref, base=base, workspace=workspace)
    try:
        after = dict(zip([q["question"] for q in asked], loaded.answer([q["question"] for q in asked])))
    finally:
        loaded.close()
    before = results["runs"][f"update_{chain}"]["answers"] if chain else results["runs"]["v1_full"]["answers"]
    base_answers = results["runs"]["base"]["answers"]

    def rate(answers, rows):
        return sum(contains(answers[q["question"]], q["gold"][last]) for q in rows) / max(len(rows), 1)

    m = version.manifest
    results["runs"]["forget"] = {
        "ref": version.ref, "parent": parent.ref, "document": document, "answers": after,
        "forgotten_still_answered": {"n": len(gone), "before": rate(before, gone), "after": rate(after, gone),
                                     "base": rate(base_answers, gone)},
        "others_accuracy": {"n": len(kept), "before": rate(before, kept), "after": rate(after, kept)},
        "forget_check": m.get("forget_check"), "seconds": round(seconds, 1),
        "manifest": {"synthetic": {k: v for k, v in m["synthetic"].items() if k not in ("diversity", "by_strategy")},
                     "steps": m["training"]["steps"], "timings": m["timings"]}}
    save()
    print(f"forget: {json.dumps(results['runs']['forget']['forgotten_still_answered'])} others "
          f"{json.dumps(results['runs']['forget']['others_accuracy'])}", flush=True)


def _reuse(source: Path, out: Path, updates: int = 0) -> None:
    """Start `out` from `source`'s base, v1_full and v2_full runs and its first `updates` updates: their results
    and memories (chain@1 .. chain@(1 + updates), full)."""
    from inweights.store import Workspace

    earlier = json.loads((source / "results.json").read_text())
    shutil.copytree(source / "workspace", out / "workspace")
    workspace = Workspace(out / "workspace")
    for v in workspace.versions("chain")[1 + updates:]:
        workspace.remove("chain", v.version)
    wanted = {"base", "v1_full", "v2_full"} | {f"update_{i}" for i in range(1, updates + 1)}
    keep = {k: v for k, v in earlier["runs"].items() if k in wanted}
    (out / "results.json").write_text(json.dumps({"runs": keep, "reused_from": str(source)}, indent=1))


def summary(results: dict, questions: list[dict], chain: int) -> dict:
    """The issue's measures. Retention compares each update with release 1's memory on the same questions (those
    still unchanged at the update's release), from release 1's recorded answers."""
    runs = results["runs"]
    full, upd, v1 = runs["v2_full"], runs["update_1"], runs["v1_full"]

    def get(run, cat, key):
        return run["scores"].get(cat, {}).get(key)

    v1_at = {label: score(questions, v1["answers"], r["release"] - 1)
             for label, r in runs.items() if label.startswith("update_") and "scores" in r}
    out = {
        "retention_unchanged": {label: {"update": get(runs[label], "unchanged", "accuracy"),
                                        "v1": sc.get("unchanged", {}).get("accuracy"),
                                        "ratio": _ratio(get(runs[label], "unchanged", "accuracy"),
                                                        sc.get("unchanged", {}).get("accuracy")),
                                        "n": sc.get("unchanged", {}).get("n")}
                                for label, sc in v1_at.items()},
        "changed_vs_full": _ratio(get(upd, "changed", "accuracy"), get(full, "changed", "accuracy")),
        "stale_update": get(upd, "changed", "stale"), "stale_full": get(full, "changed", "stale"),
        "stale_v1": v1_at["update_1"].get("changed", {}).get("stale"),
        "removed_still_answered": {"base": get(runs["base"], "removed", "still_answered"),
                                   "v1": v1_at["update_1"].get("removed", {}).get("still_answered"),
                                   "update": get(upd, "removed", "still_answered"),
                                   "full": get(full, "removed", "still_answered")},
        "time_vs_full": {label: round(r["manifest"]["timings"]["total_s"] / full["manifest"]["timings"]["total_s"], 3)
                         for label, r in runs.items() if label.startswith("update_") and "manifest" in r},
        "wikitext2_ppl_pct": {label: r["general_change"]["wikitext2"]["ppl_pct"]
                              for label, r in runs.items() if "general_change" in r},
    }
    if "forget" in runs:
        out["forget"] = {k: runs["forget"][k] for k in ("document", "forgotten_still_answered", "others_accuracy",
                                                        "forget_check", "seconds")}
    return out


def _ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


def markdown(results: dict) -> str:
    s, runs = results["settings"], results["runs"]
    lines = [f"# Update benchmark: {s['corpus']}", "",
             f"`python benchmarks/update.py --corpus {s['corpus']} --out ...` ({s['questions']} questions, "
             f"general tasks {s['general_limit']} items each, WikiText-2 2,048 tokens, base {s['base']}, "
             f"{results['machine']['threads']} threads). Questions sorted against release 1.", "",
             "| run | release | unchanged acc | changed acc | stale | new acc | removed still answered | "
             "WikiText-2 ppl | general (mean pts) | time s | steps |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        if label == "forget":
            continue
        sc = r.get("scores", {})

        def cell(cat, key):
            v = sc.get(cat, {}).get(key)
            return "-" if v is None else f"{100 * v:.1f}% (n={sc[cat]['n']})"

        change = r.get("general_change", {})
        ppl = change.get("wikitext2", {}).get("ppl_pct")
        points = [v for task, d in change.items() for key, v in d.items() if key in ("acc_points", "match_points")]
        m = r.get("manifest", {})
        lines.append(f"| {label} | {r.get('release', '-')} | {cell('unchanged', 'accuracy')} | "
                     f"{cell('changed', 'accuracy')} | {cell('changed', 'stale')} | {cell('new', 'accuracy')} | "
                     f"{cell('removed', 'still_answered')} | {'-' if ppl is None else f'{ppl:+.1f}%'} | "
                     f"{'-' if not points else f'{sum(points) / len(points):+.1f}'} | "
                     f"{m.get('timings', {}).get('total_s', '-')} | {m.get('steps', '-')} |")
    sm = results.get("summary", {})
    lines += ["", "Summary (targets of issue 13 in brackets):", "",
              f"- unchanged-fact accuracy of each update / release 1's memory on the same questions: "
              f"{json.dumps(sm.get('retention_unchanged'))} (>= 0.95)",
              f"- changed-fact accuracy of the update / the full re-learn's: {sm.get('changed_vs_full')} (>= 0.8); "
              f"stale rate update {sm.get('stale_update')}, full {sm.get('stale_full')} (<= 0.10); release 1's "
              f"memory gave the old value on {sm.get('stale_v1')} of them",
              f"- removed facts still answered: {sm.get('removed_still_answered')}",
              f"- update time / full re-learn time: {sm.get('time_vs_full')} (<= 0.30 for a 10% change)",
              f"- WikiText-2 perplexity change: {sm.get('wikitext2_ppl_pct')} (after 5 updates <= the full "
              "re-learn's)"]
    if "forget" in sm:
        lines.append(f"- forget: {json.dumps(sm['forget'])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
