"""Memories against a strength line: each row of strength.py's results compared with a reference memory's rows
at the same WikiText-2 perplexity, in two scores of learning: the exact-match gap recovered and the gold answers'
mean probability (p(gold), a continuous score; strength.py).

Scaling one memory down traces a line of learning against forgetting; an edit (another setting, averaging,
a profile) is worth something only where it lands above that line. Each row's reference value is interpolated
linearly in perplexity between the two nearest plain scales of the reference memory (rows outside its range
have none); with several reference memories (seeds of one setting), the mean of their lines where all are
defined, so each seed's own distance from it shows the spread between seeds. The second table reads every
memory's own plain scales at fixed perplexities, which shows how far apart memories of the same setting (seeds)
land on each score.

Run as (from the repository root, on results strength.py wrote):
    python benchmarks/strength_lines.py --line strength_tune24_wt16k,strength_sd1_tune24_wt16k,\\
strength_sd2_tune24_wt16k --rows strength_mean3_tune24_wt16k,strength_dp01_tune24_wt16k --at 6,7.5
Prints a Markdown report; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load_rows(folder: Path) -> tuple[str, list[dict]]:
    """(a label, one dict per scored scale: scale, ppl %, EM gap in %, p(gold) in % or None) from a
    strength.json; its rows in the order of their perplexity."""
    data = json.loads((folder / "strength.json").read_text())
    base = data["base"]
    settings = data["settings"]
    label = settings["point"] + "".join(f" + {p}" for p in settings.get("average_with", []))
    rows = []
    for scale, row in data["scales"].items():
        rows.append({"scale": scale, "plain": _is_number(scale), "ppl": row["wikitext_ppl_pct"],
                     "em_gap": 100 * row["gap_recovered"],
                     "gold": 100 * row["gold"]["p_gold"] if "gold" in row else None})
    return label, sorted(rows, key=lambda r: r["ppl"])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def at_ppl(rows: list[dict], ppl: float, key: str) -> float | None:
    """`key` of the plain rows interpolated linearly at perplexity `ppl`; None outside their range or where a
    row lacks it."""
    points = [(r["ppl"], r[key]) for r in rows if r["plain"]]
    for (p0, v0), (p1, v1) in zip(points, points[1:]):
        if p0 <= ppl <= p1:
            if v0 is None or v1 is None:
                return None
            return v0 if p1 == p0 else v0 + (v1 - v0) * (ppl - p0) / (p1 - p0)
    return None


def mean_at_ppl(lines: list[list[dict]], ppl: float, key: str) -> float | None:
    """The mean of several memories' `at_ppl`, or None where one of them has no value."""
    values = [at_ppl(rows, ppl, key) for rows in lines]
    return None if any(v is None for v in values) else sum(values) / len(values)


def report(line: list[Path], others: list[Path], at: list[float]) -> str:
    loaded = {folder: load_rows(folder) for folder in [*line, *others]}
    line_rows = [loaded[folder][1] for folder in line]
    names = ", ".join(f"{folder.name} ({loaded[folder][0]})" for folder in line)
    out = [f"# Against the strength line of {names}" if len(line) == 1 else
           f"# Against the mean strength line of {names}", "",
           "EM gap in % of the closed-book -> in-context gap, p(gold) in %; `line` is the reference memory's plain "
           "scales interpolated at the row's perplexity, `diff` the row minus the line (points).", "",
           "| results | scale | WikiText-2 ppl | EM gap | line | diff | p(gold) | line | diff |",
           "|" + "---|" * 9]
    for folder, (_, rows) in loaded.items():
        for r in rows:
            cells = []
            for key in ("em_gap", "gold"):
                ref = mean_at_ppl(line_rows, r["ppl"], key)
                value = r[key]
                digits = 1 if key == "gold" else 0
                cells += [_cell(value, digits=digits), _cell(ref, digits=digits),
                          _cell(value - ref, True, digits) if value is not None and ref is not None else "-"]
            out.append(f"| {folder.name} | {r['scale']} | {r['ppl']:+.1f}% | " + " | ".join(cells) + " |")
    out += ["", "Each memory's own plain scales, read at fixed perplexities (EM gap / p(gold)):", "",
            "| results | memory | " + " | ".join(f"at +{p:g}%" for p in at) + " |", "|" + "---|" * (2 + len(at))]
    for folder, (label, rows) in loaded.items():
        cells = [f"{_cell(at_ppl(rows, p, 'em_gap'))} / {_cell(at_ppl(rows, p, 'gold'), digits=1)}" for p in at]
        out.append(f"| {folder.name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _cell(value: float | None, signed: bool = False, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}%"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", required=True,
                        help="the reference memory's results folder (under --results), or several, comma-separated, "
                             "whose lines are averaged")
    parser.add_argument("--rows", default="", help="comma-separated results folders compared with it")
    parser.add_argument("--at", default="5,7.5", help="comma-separated perplexity changes (%%) to read lines at")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    others = [args.results / name for name in args.rows.split(",") if name]
    line = [args.results / name for name in args.line.split(",") if name]
    return show(report(line, others, [float(p) for p in args.at.split(",") if p]), args.out)


def show(text: str, out: Path | None) -> str:
    """Print a report, and write it to `out` too when one is given."""
    print(text, end="")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


if __name__ == "__main__":
    main()
