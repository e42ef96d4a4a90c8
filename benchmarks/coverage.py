"""Which real questions does learn's synthetic data make answerable at all? No training, no model run.

A memory can give a real question's exact answer only if some synthetic question was trained with that answer.
For the chosen SQuAD dev passages this synthesizes learn's default data (the parser's `facts` questions) and sorts
every real question by how its gold answers (any of them, SQuAD-normalised) meet the synthetic answers:

- twin: some synthetic item has a gold answer as its whole answer;
- inside: a gold answer is part of a longer synthetic answer ("arizona cardinals" in "arizona cardinals 49–15");
- contains: a gold answer holds a shorter synthetic answer ("beyoncé and bruno mars" holds "beyoncé");
- none: no synthetic answer shares a whole gold answer either way.

The share with a twin bounds the exact-match score of any memory trained on this data; the other three say
whether the spans are cut differently (inside, contains) or the fact was never asked (none).

Run as:
    python benchmarks/coverage.py --out benchmarks/results/coverage/tune.md                      # passages 1-8
    python benchmarks/coverage.py --skip-passages 24 --passages 24 --out benchmarks/results/coverage/check24.md
    python benchmarks/coverage.py --facts-per-sentence 8 --out benchmarks/results/coverage/tune_fs8.md    # more spans
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plane  # noqa: E402  (the same passages and questions)

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("twin", "inside", "contains", "none")


def kind(gold: set[str], answers: set[str]) -> tuple[str, list[str]]:
    """How a real question's normalised gold answers meet the synthetic answers, and the synthetic answers that
    made it so (the overlapping ones, at most 3)."""
    if gold & answers:
        return "twin", sorted(gold & answers)[:3]
    inside = sorted(a for a in answers if any(g and _part(g, a) for g in gold))
    if inside:
        return "inside", inside[:3]
    contains = sorted(a for a in answers if any(a and _part(a, g) for g in gold))
    return ("contains", contains[:3]) if contains else ("none", [])


def _part(short: str, long: str) -> bool:
    """`short` is a run of whole words of `long`."""
    return f" {short} " in f" {long} "


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--skip-passages", type=int, default=0)
    parser.add_argument("--facts-per-sentence", type=int, default=None, help="default: learn's")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "coverage" / "tune.md")
    args = parser.parse_args(argv)

    from inweights.config import SynthConfig
    from inweights.evaluate.metrics import normalize_answer
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.synth import strategy_versions

    documents, questions = plane.squad_passages(args.data, args.skip_passages, args.passages)
    synth_config = SynthConfig(**({"facts_per_sentence": args.facts_per_sentence} if args.facts_per_sentence else {}))
    base = load_base(DEFAULT_BASE)
    qa = plane.synthetic_questions(documents, base.tokenizer, synth_config)
    answers = {normalize_answer(e.completion) for e in qa}
    rows = [(q, *kind({normalize_answer(a) for a in q.answers}, answers)) for q in questions]
    counts = collections.Counter(k for _, k, _ in rows)

    first, last = args.skip_passages + 1, args.skip_passages + args.passages
    lines = [f"# Coverage of real questions by learn's synthetic answers (SQuAD dev passages {first}-{last})", "",
             f"{len(questions)} questions; {len(qa)} synthetic questions with {len(answers)} distinct answers "
             f"(strategies {strategy_versions(synth_config)}, {synth_config.facts_per_sentence} facts a sentence).",
             "",
             "| kind | questions | share |", "|---|---|---|"]
    lines += [f"| {k} | {counts[k]} | {100 * counts[k] / len(questions):.0f}% |" for k in KINDS]
    lines += ["", "Questions without a twin:", "", "| kind | question | gold | synthetic answers |", "|---|---|---|---|"]
    for q, k, near in sorted((r for r in rows if r[1] != "twin"), key=lambda r: KINDS.index(r[1])):
        lines.append(f"| {k} | {q.question} | {' / '.join(sorted(set(q.answers)))} | {' / '.join(near)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:10]))
    return {k: counts[k] for k in KINDS}


if __name__ == "__main__":
    main()
