"""Knowledge benchmark: learn SQuAD passages or QuALITY stories into a memory, then compare it with closed-book,
in-context, RAG and a naive fine-tune on the same questions, with forgetting and cost for each.

- SQuAD (SEAL's knowledge-incorporation setting): short answers scored by exact match, token F1 and contains.
- QuALITY (EntiGraph's task): 4-way multiple choice by option log-likelihood; closed-book questions name the
  story (`In the story "TITLE", ...`).

The first N passages/stories are used (`--limit`), with all their questions; N is recorded in the report. The
evaluation questions are checked against the synthetic training data (a leak fails the run). Results go to
`benchmarks/results/knowledge_<task>/` (report.json, report.md and two plots).

Run as:
    python benchmarks/knowledge.py --task squad --limit 8                 # embedded gemma-3-270m
    python benchmarks/knowledge.py --task quality --budget 12000 \
        --conditions closed_book,in_context,rag,memory,memory_rag --general-limit 50
    python benchmarks/knowledge.py --task squad --limit 2 --base DIR --general-limit 4 --strategies cloze --epochs 1
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from inweights.api import learn
from inweights.config import LearnConfig, SynthConfig, TrainConfig
from inweights.evaluate.general import GeneralLimits
from inweights.evaluate.harness import CONDITIONS, EvalSettings, evaluate, train_naive
from inweights.evaluate.questions import load_quality, load_squad
from inweights.evaluate.report import write_report
from inweights.models import DEFAULT_BASE, load_base
from inweights.store import Workspace

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"squad": ("squad/squad_dev.jsonl", load_squad, "passages"),
         "quality": ("quality/quality_dev.jsonl", load_quality, "stories")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N passages (squad) or stories (quality)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated; default: all")
    parser.add_argument("--general-limit", type=int, default=200,
                        help="items of each general task for forgetting (0 skips the suite)")
    parser.add_argument("--base", default=DEFAULT_BASE, help="base model (a local HF directory for smoke tests)")
    parser.add_argument("--memory", default=None, help="memory name (default bench-<task>)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="benchmark data folder")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/knowledge_<task>")
    parser.add_argument("--context-tokens", type=int, default=None, help="prompt budget for contexts "
                        "(default: the model's window)")
    parser.add_argument("--cost-questions", type=int, default=5, help="questions timed at batch size 1")
    parser.add_argument("--strategies", default=None, help="synthetic-data strategies (default: learn's)")
    parser.add_argument("--budget", type=int, default=None, help="synthetic-token budget of the memory (default: "
                        "all the strategies make; QuALITY's 38.7k words make ~40x SQuAD's 8 passages)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: derived by learn)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); on a "
                        "busy machine 1 thread gives steadier timings than oversubscribed cores")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    memory = args.memory or f"bench-{args.task}"
    out = args.out or ROOT / "benchmarks" / "results" / f"knowledge_{args.task}"
    progress = not args.no_progress
    if args.threads:
        torch.set_num_threads(args.threads)

    data_file, loader, unit = TASKS[args.task]
    documents, questions = loader(args.data / data_file, args.limit)
    print(f"{args.task}: {len(documents)} {unit}, {len(questions)} questions", flush=True)
    base = load_base(args.base)
    workspace = Workspace()
    exclude = [q.question for q in questions]
    synth = SynthConfig(budget=args.budget)
    if args.strategies:
        synth = replace(synth, strategies=tuple(args.strategies.split(",")))
    config = LearnConfig(base=args.base, synth=synth, train=TrainConfig(epochs=args.epochs))

    memory_ref = naive_ref = None
    if any(CONDITIONS[c][0] == "memory" for c in conditions if c in CONDITIONS):
        with tempfile.TemporaryDirectory() as folder:  # learn reads files: one per passage/story, named by id
            for doc_id, text in documents.items():
                (Path(folder) / f"{doc_id}.txt").write_text(text, encoding="utf-8")
            memory_ref = learn([folder], memory, config, base=base, workspace=workspace, exclude_questions=exclude,
                               progress=progress, yes=True).ref
    if "naive" in conditions:
        # The naive fine-tune gets the memory's resolved training settings (same LoRA, epochs, seed) when there is one.
        train_config = (LearnConfig.from_dict(workspace.get(memory_ref).manifest["config"]).train if memory_ref
                        else config.train)
        naive_ref = train_naive(base, documents, train_config, workspace, f"{memory}-naive", exclude, progress).ref

    n = args.general_limit
    limits = GeneralLimits(arc_easy=n, piqa=n, boolq=n, triviaqa=n, wikitext_tokens=1024) if n else None
    settings = EvalSettings(context_tokens=args.context_tokens, cost_questions=args.cost_questions)
    report = evaluate(base, questions, documents, conditions, memory_ref=memory_ref, naive_ref=naive_ref,
                      workspace=workspace, general_limits=limits, data_dir=args.data / "general", settings=settings,
                      progress=progress,
                      run={"task": args.task, "data_file": data_file, "limit": args.limit, "limit_applies_to": unit,
                           "documents": len(documents), "learn_config": config.to_dict()})
    write_report(report, out)
    print((out / "report.md").read_text())
    print(f"report written to {out}")
    return report


if __name__ == "__main__":
    main()
