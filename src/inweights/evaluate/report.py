"""Write an evaluation report: every number as JSON, a markdown summary and two PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

REPORT_FILES = ("report.json", "report.md", "learning_forgetting.png", "accuracy_vs_ttft.png")


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write report.json, report.md, learning_forgetting.png and accuracy_vs_ttft.png; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out_dir / "report.md").write_text(markdown(report))
    _plot_learning_forgetting(report, out_dir / "learning_forgetting.png")
    _plot_accuracy_vs_ttft(report, out_dir / "accuracy_vs_ttft.png")
    return [out_dir / name for name in REPORT_FILES]


def markdown(report: dict) -> str:
    metric = report["headline_metric"]
    q = report["questions"]
    lines = [f"# Evaluation: {report['memory'] or report['base']['name']}", "",
             f"{q['n']} {q['kind'].replace('_', '-')} questions from {q['documents']} documents; "
             f"run: {_run_text(report['run'])}; base `{report['base']['name']}`; {report['created']}.", "",
             f"| condition | scores (%) | {metric} gain (pts) | general change (pts) | prompt tokens | TTFT x | "
             "decode x | KV cache | context tokens cut |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in report["conditions"].items():
        scores = ", ".join(f"{k} {100 * v:.1f}" for k, v in c["scores"].items() if k != "n")
        ratios = c.get("cost_ratios", {})
        cut = c["context_tokens_cut"]
        cut_text = f"{cut['tokens_cut_mean']:.0f} mean, {cut['questions_cut']} questions" if cut else "-"
        lines.append(f"| {name} | {scores} | {_num(c['gain_points'])} | {_num(c['general_change_points'])} | "
                     f"{c['cost']['prompt_tokens_mean']:.0f} | {_num(ratios.get('ttft'), '.2f')} | "
                     f"{_num(ratios.get('decode_tokens_per_s'), '.2f')} | "
                     f"{c['cost']['kv_cache_bytes_mean'] / 1024:.0f} KiB | "
                     f"{cut_text} |")
    lines += ["", "Gain: points over closed-book. General change: mean accuracy change (points) over the general "
              "tasks vs the base model (0 for conditions that leave the weights alone). TTFT x and decode x: time to "
              "first token and decode speed as ratios to closed-book (batch 1, first "
              f"{report['settings']['cost_questions']} questions; RAG includes retrieval)."]
    forms = sorted({form for c in report["conditions"].values() for form in c.get("by_form", {})})
    if forms:
        first = next(iter(report["conditions"].values()))["by_form"]
        lines += ["", f"## By question form ({metric}, %)", "",
                  "| condition | " + " | ".join(f"{f} (n={first[f]['n']})" if f in first else f for f in forms) + " |",
                  "|---|" + "---|" * len(forms)]
        for name, c in report["conditions"].items():
            cells = [f"{100 * c['by_form'][f][metric]:.1f}" if f in c.get("by_form", {}) else "-" for f in forms]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["forgetting"]:
        lines += ["", "## Forgetting (change vs base)", "", "| model | task | change |", "|---|---|---|"]
        for source, f in report["forgetting"].items():
            if source == "base":
                continue
            for task, deltas in f["deltas"].items():
                lines.append(f"| {source} | {task} | " + ", ".join(
                    f"{k} {v}" if isinstance(v, int) else f"{k} {v:+.2f}" for k, v in deltas.items()) + " |")
    if report["training"]:
        lines += ["", "## Training cost", "",
                  "| model | ref | train s | total s | synthetic examples | trained tokens |",
                  "|---|---|---|---|---|---|"]
        for source, t in report["training"].items():
            lines.append(f"| {source} | {t['ref']} | {t['train_s']:.1f} | {_num(t['total_s'], '.1f')} | "
                         f"{t['synthetic_examples']} | {t['trained_tokens']} |")
    return "\n".join(lines) + "\n"


def _run_text(run: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in run.items() if not isinstance(v, (dict, list))) or "-"


def _num(value, spec: str = "+.1f") -> str:
    return "-" if value is None else format(value, spec)


def _scatter(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str, path: Path,
             logx: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for name, x, y in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.axhline(0, color="grey", lw=0.6)
    if logx:
        ax.set_xscale("log")
    else:
        ax.axvline(0, color="grey", lw=0.6)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_learning_forgetting(report: dict, path: Path) -> None:
    metric = report["headline_metric"]
    points = [(name, c["general_change_points"] or 0.0, c["gain_points"] or 0.0)
              for name, c in report["conditions"].items()]
    _scatter(points, "general-task change (points, mean; right is better)", f"{metric} gain over closed-book (points)",
             "Learning vs forgetting", path)


def _plot_accuracy_vs_ttft(report: dict, path: Path) -> None:
    metric = report["headline_metric"]
    points = [(name, c.get("cost_ratios", {}).get("ttft", c["cost"]["ttft_s"]), 100 * c["headline"])
              for name, c in report["conditions"].items()]
    ratio = all("cost_ratios" in c for c in report["conditions"].values())
    _scatter(points, "time to first token (x closed-book)" if ratio else "time to first token (s)",
             f"{metric} (%)", f"{metric} vs time to first token", path, logx=True)
