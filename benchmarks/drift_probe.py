"""Does the drift probe (src/inweights/drift.py: general text the base model wrote, no memory trained on) track
WikiText-2 perplexity? Scores the probe on memories that strength.py kept and scored on 16,384 WikiText-2 tokens,
at the strengths it scored them, and fits WikiText-2's change against the probe's on the tuning half's memories
(SQuAD passages 1-24) only, then checks the fit on the confirmation half's (25-48).

Run as:
    python benchmarks/drift_probe.py --out benchmarks/results/drift_probe
    python benchmarks/drift_probe.py --out benchmarks/results/drift_probe --choose 1.6 \
        --memories strength_check24_wt16k,strength_sd1_check24_wt16k   # the strength learn --max-drift 1.6 saves
With --choose, each named memory gets the strength `learn --max-drift` would save it at (drift.choose_strength
on the same probe), for strength.py to score (`--keep --scales <it>`, into the same folder).
Outputs: drift_probe.json (every number) and drift_probe.md in --out; a rerun scores only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import strength  # noqa: E402  (scaled_memory)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

MEMORIES = {  # strength.py's result folder: the memory it scored (kept in the workspace)
    "strength_tune24_wt16k": "tune", "strength_sd1_tune24_wt16k": "tune", "strength_sd2_tune24_wt16k": "tune",
    "strength_wd4_tune24_wt16k": "tune", "strength_qi2_tune24_wt16k": "tune", "strength_dp01_tune24_wt16k": "tune",
    "strength_ep2ss2_tune24_wt16k": "tune", "strength_qi1_tune24_wt16k": "tune", "strength_rk48_tune24_wt16k": "tune",
    "strength_ta05_tune24_wt16k": "tune", "strength_gq05_tune24_wt16k": "tune",
    "strength_mean3_tune24_wt16k": "tune",
    "strength_check24_wt16k": "check", "strength_sd1_check24_wt16k": "check", "strength_sd2_check24_wt16k": "check",
    "strength_wd4_check24_wt16k": "check", "strength_qi2_check24_wt16k": "check",
    "strength_mean3_check24_wt16k": "check",
}
SCALES = ("1", "0.85", "0.7")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "drift_probe")
    parser.add_argument("--texts", type=int, default=None, help="probe texts (default: drift.PROBE_TEXTS)")
    parser.add_argument("--choose", type=float, default=None,
                        help="a drift budget (%%): choose each --memories memory's strength within it instead")
    parser.add_argument("--memories", default="", help="comma-separated result folders (of MEMORIES) for --choose")
    args = parser.parse_args(argv)

    from inweights.drift import PROBE_TEXTS, load_probe, score, strength_within
    from inweights.methods import METHODS
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.store import Workspace

    base = load_base(DEFAULT_BASE)
    workspace = Workspace()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "drift_probe.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    n = args.texts or PROBE_TEXTS
    t = time.perf_counter()
    probe = load_probe(base, workspace.cache_dir("replay"), n, progress=True, targets=True)
    results["probe"] = {"texts": n, "rows": len(probe.rows), "tokens": sum(len(r) - 1 for r in probe.rows),
                        "base_nll": probe.base_nll, "load_s": time.perf_counter() - t}
    if args.choose is not None:
        chosen = results.setdefault("choices", {}).setdefault(f"{args.choose:g}", {})
        for folder in [f for f in args.memories.split(",") if f]:
            stored = json.loads((RESULTS / folder / "strength.json").read_text())
            if folder in chosen or stored.get("averaged_with"):
                continue
            t = time.perf_counter()
            with strength.scaled_memory(base, workspace, [workspace.get(stored["memory"])], "1", "lora") as model:
                choice = strength_within(model, probe, METHODS["lora"].scale, args.choose)
            chosen[folder] = choice.to_dict(args.choose) | {"memory": stored["memory"],
                                                             "choose_s": time.perf_counter() - t}
            print(folder, chosen[folder], flush=True)
            path.write_text(json.dumps(results, indent=1))
        if "fit" in results:
            (args.out / "drift_probe.md").write_text(report(results))
        return results
    results.setdefault("memories", {})
    for folder, half in MEMORIES.items():
        stored = json.loads((RESULTS / folder / "strength.json").read_text())
        versions = [workspace.get(ref) for ref in [stored["memory"], *(stored.get("averaged_with") or [])]]
        entry = results["memories"].setdefault(folder, {"half": half, "memory": stored["memory"],
                                                        "averaged_with": stored.get("averaged_with") or [],
                                                        "scales": {}})
        for s in SCALES:
            if s not in stored["scales"] or s in entry["scales"]:
                continue
            t = time.perf_counter()
            with strength.scaled_memory(base, workspace, versions, s, "lora") as model:
                nll, kl = score(model, probe.rows, probe.targets)
            entry["scales"][s] = {"probe_ppl_pct": 100 * (math.exp(nll - probe.base_nll) - 1), "probe_kl": kl,
                                  "wikitext_ppl_pct": stored["scales"][s]["wikitext_ppl_pct"],
                                  "score_s": time.perf_counter() - t}
            print(folder, s, {k: round(v, 3) for k, v in entry["scales"][s].items()}, flush=True)
            path.write_text(json.dumps(results, indent=1))
    results["fit"] = fit(results["memories"])
    path.write_text(json.dumps(results, indent=1))
    (args.out / "drift_probe.md").write_text(report(results))
    print(report(results))
    return results


def fit(memories: dict) -> dict:
    """WikiText-2's change as c x the probe's (least squares through 0), on the tuning half; its error on both."""
    points = {half: [(row["probe_ppl_pct"], row["wikitext_ppl_pct"]) for m in memories.values()
                     if m["half"] == half for row in m["scales"].values()] for half in ("tune", "check")}
    tune = points["tune"]
    c = sum(p * w for p, w in tune) / sum(p * p for p, _ in tune)
    out = {"c": c}
    for half, pts in points.items():
        errors = [w - c * p for p, w in pts]
        at_one = [(m["scales"]["1"]["probe_ppl_pct"], m["scales"]["1"]["wikitext_ppl_pct"])
                  for m in memories.values() if m["half"] == half and "1" in m["scales"]]
        ratios = [w / p for p, w in pts]
        out[half] = {"n": len(pts), "mean_abs_error": sum(abs(e) for e in errors) / len(errors),
                     "max_abs_error": max(abs(e) for e in errors), "corr": _corr(pts),
                     "corr_at_1": _corr(at_one), "n_at_1": len(at_one), "ratio_min": min(ratios),
                     "ratio_max": max(ratios)}
    return out


def _corr(pts: list[tuple[float, float]]) -> float:
    n = len(pts)
    mx, my = sum(p for p, _ in pts) / n, sum(w for _, w in pts) / n
    sxy = sum((p - mx) * (w - my) for p, w in pts)
    sxx, syy = sum((p - mx) ** 2 for p, _ in pts), sum((w - my) ** 2 for _, w in pts)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")


def report(results: dict) -> str:
    probe, f = results["probe"], results["fit"]
    lines = ["# The drift probe against WikiText-2 perplexity (16,384 tokens)", "",
             f"Probe: {probe['rows']} texts the base model wrote (drift.PROBE_SEED), {probe['tokens']:,} tokens; "
             f"base NLL {probe['base_nll']:.3f}. Fit on the tuning half: WikiText-2 change = {f['c']:.2f} x the "
             "probe's perplexity change.", "",
             "| half | points | correlation | at s = 1 only (memories) | WikiText-2 / probe | mean abs error (pts) | "
             "max abs error (pts) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {h} | {f[h]['n']} | {f[h]['corr']:.2f} | {f[h]['corr_at_1']:.2f} ({f[h]['n_at_1']}) | "
              f"{f[h]['ratio_min']:.2f} to {f[h]['ratio_max']:.2f} | {f[h]['mean_abs_error']:.2f} | "
              f"{f[h]['max_abs_error']:.2f} |" for h in ("tune", "check")]
    lines += ["", "| memory | half | s | probe ppl | probe KL | WikiText-2 ppl | predicted |",
              "|---|---|---|---|---|---|---|"]
    for folder, m in results["memories"].items():
        for s, row in m["scales"].items():
            lines.append(f"| {folder} | {m['half']} | {s} | {row['probe_ppl_pct']:+.2f}% | {row['probe_kl']:.4f} | "
                         f"{row['wikitext_ppl_pct']:+.1f}% | {f['c'] * row['probe_ppl_pct']:+.1f}% |")
    for budget, chosen in results.get("choices", {}).items():
        lines += ["", f"Strengths `learn --max-drift {budget}` saves (each measurement: strength, the probe's "
                  "change):",
                  "", "| memory | strength | measured | seconds |", "|---|---|---|---|"]
        lines += [f"| {folder} | {c['strength']:.4f} | {', '.join(f'{s:.4f}: {d:+.3f}%' for s, d in c['measured'])} | "
                  f"{c['choose_s']:.0f} |" for folder, c in chosen.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
