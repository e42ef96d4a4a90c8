"""Which way a memory moved BoolQ: how often the base and each scored memory answer "yes", from the per-item
marks that `general_suite` keeps and the gold labels of the same items.

BoolQ's first 100 items are 70% "yes" and the base model answers "yes" to most of them, so a memory can lose or
gain points there by shifting its yes/no prior alone, without knowing less. With two choices, a wrong answer is
the other choice, so the marks and the gold labels give each answer: a memory that says "yes" more often than the
base, losing the gold-"no" items it had right, moved its prior; one that lost items of both labels in proportion
forgot something else.

Run as:
    python benchmarks/yes_rate.py benchmarks/results/strength_mean3_check24_wt16k \
        benchmarks/results/strength_sd2_check24_wt16k --out benchmarks/results/yes_rate.md
Reads strength.json in each folder (its base and every scale that kept marks); prints and writes a table. Where a
folder's base scores were copied without marks, `--base-from FOLDER` takes them from another folder's base (the same
items, checked by their count and accuracy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def answers(marks: str, gold: list[int]) -> list[int]:
    """Each item's chosen answer (0 = "no", 1 = "yes") from its mark: the gold one when right, else the other."""
    if len(marks) != len(gold):
        raise ValueError(f"{len(marks)} marks for {len(gold)} gold labels")
    return [g if m == "1" else 1 - g for m, g in zip(marks, gold)]


def shift(base_marks: str, marks: str, gold: list[int]) -> dict:
    """How one run's answers differ from the base's on the same items: its "yes" count and the base's, and the
    items it lost and gained split by their gold label."""
    before, after = answers(base_marks, gold), answers(marks, gold)
    row = {"n": len(gold), "yes": sum(after), "base_yes": sum(before)}
    for label, name in ((1, "yes"), (0, "no")):
        items = [i for i, g in enumerate(gold) if g == label]
        row[f"lost_gold_{name}"] = sum(base_marks[i] == "1" and marks[i] == "0" for i in items)
        row[f"gained_gold_{name}"] = sum(base_marks[i] == "0" and marks[i] == "1" for i in items)
    return row


def gold_labels(data: Path, n: int) -> list[int]:
    from inweights.evaluate.general import MULTIPLE_CHOICE_FILES, load_multiple_choice

    items = load_multiple_choice(data / "general" / MULTIPLE_CHOICE_FILES["boolq"], n)
    if [item["choices"] for item in items] != [["no", "yes"]] * n:
        raise ValueError("expected BoolQ's choices to be ['no', 'yes'] on every item")
    return [item["gold"] for item in items]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="strength.py --out folders")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--base-from", type=Path, help="a strength.py folder whose base kept its per-item marks, for "
                        "folders whose base scores were copied without them (the same items: checked by their count "
                        "and accuracy)")
    args = parser.parse_args(argv)
    rows = []
    fallback = json.loads((args.base_from / "strength.json").read_text())["base"]["general"]["boolq"] \
        if args.base_from else None
    for folder in args.folders:
        results = json.loads((folder / "strength.json").read_text())
        base = results["base"]["general"]["boolq"]
        if "correct" not in base and fallback is not None and "correct" in fallback \
                and (fallback["n"], fallback["acc"]) == (base["n"], base["acc"]):
            base = fallback
        if "correct" not in base:
            raise SystemExit(f"{folder}: the base's BoolQ has no per-item marks")
        gold = gold_labels(args.data, len(base["correct"]))
        for scale, run in results.get("scales", {}).items():
            marks = run["general"]["boolq"].get("correct")
            if marks is None:
                continue
            delta = round(run["general_deltas"]["boolq"]["acc_points"])
            rows.append({"folder": folder.name, "scale": scale, "delta": delta} | shift(base["correct"], marks, gold))
    lines = ["| result | s | BoolQ | says yes (base) | lost: gold yes / no | gained: gold yes / no |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['folder']} | {r['scale']} | {r['delta']:+d} | {r['yes']} ({r['base_yes']}) of {r['n']} | "
                     f"{r['lost_gold_yes']} / {r['lost_gold_no']} | {r['gained_gold_yes']} / {r['gained_gold_no']} |")
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return rows


if __name__ == "__main__":
    main()
