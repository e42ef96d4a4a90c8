"""Which SQuAD questions do memories answer differently? Each memory answers the same closed-book questions; the
questions whose exact match differs between them are listed with each memory's answer.

Run as:
    python benchmarks/answer_flips.py plane-lora-sft-guard-facts-all-strength-p1-8@1 \
        plane-lora-sft-guard-facts-all-strength-p1-8@2 --out benchmarks/results/answer_flips/tune.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plane  # noqa: E402  (the same passages and questions)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("memories", nargs="+", help="memory refs (name@version)")
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--skip-passages", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from inweights.api import load_memory
    from inweights.evaluate.conditions import answer_short
    from inweights.evaluate.metrics import exact_match
    from inweights.models import DEFAULT_BASE, load_base

    _, questions = plane.squad_passages(args.data, args.skip_passages, args.passages)
    base = load_base(DEFAULT_BASE)
    answers = {}
    for ref in args.memories:
        loaded = load_memory(ref, base=base)
        try:
            answers[ref] = answer_short(loaded.model, base.tokenizer, base.stop_token_ids, questions,
                                        [None] * len(questions))
        finally:
            loaded.close()
    first, last = args.skip_passages + 1, args.skip_passages + args.passages
    lines = [f"# Answers that differ (SQuAD dev passages {first}-{last}, {len(questions)} questions)", "",
             f"Command: `python benchmarks/answer_flips.py {' '.join(args.memories)}`", "",
             "| question | gold | " + " | ".join(args.memories) + " |", "|---" * (2 + len(args.memories)) + "|"]
    correct = {ref: 0 for ref in args.memories}
    differ = 0
    for i, q in enumerate(questions):
        em = {ref: exact_match(answers[ref][i], q.answers) for ref in args.memories}
        for ref, hit in em.items():
            correct[ref] += hit
        if len(set(em.values())) > 1:
            differ += 1
            cells = [f"{'✓' if em[ref] else '✗'} {answers[ref][i][:40]}".replace("|", "/") for ref in args.memories]
            lines.append(f"| {q.question.replace('|', '/')} | {q.answers[0]} | " + " | ".join(cells) + " |")
    lines += ["", f"{differ} of {len(questions)} questions are right for some memories and wrong for others; "
              "exact matches: " + ", ".join(f"{ref} {int(n)}" for ref, n in correct.items()) + "."]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
