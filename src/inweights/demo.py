"""The main job: learn a shipped fictional corpus, then ask held-out questions with and without the memory, and
measure perplexity on general text to show what the memory cost.

Two corpora ship with the package (`data/demo/README.md`):
- `handbook`: a company handbook whose questions are paraphrases of its sentences;
- `wiki`: three wiki-style pages (pronouns, long sentences, facts that are not names or numbers) whose questions
  are labelled by form: copied, paraphrased, reversed (the other side of a relation) and two-hop. The demo
  reports accuracy for each form, so what carries over from the text to new wordings shows.

Run as:
    inweights demo
    inweights demo --corpus wiki
"""

from __future__ import annotations

import json
import time
from importlib.resources import files
from pathlib import Path

from inweights.api import learn, load_memory
from inweights.config import LearnConfig
from inweights.evaluate.metrics import contains, exact_match, perplexity
from inweights.models import load_base


def demo_dir() -> Path:
    return Path(str(files("inweights").joinpath("data", "demo")))


def load_questions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CORPORA = {"handbook": ("handbook", "questions.jsonl"), "wiki": ("wiki", "wiki_questions.jsonl")}
"""Demo corpus name -> (folder of documents, question file), both under data/demo/."""


def run_demo(memory: str | None = None, config: LearnConfig | None = None, progress: bool = True,
             corpus: str = "handbook") -> dict:
    t0 = time.perf_counter()
    config = config or LearnConfig()
    folder, question_file = CORPORA[corpus]
    memory = memory or f"demo-{corpus}"
    questions = load_questions(demo_dir() / question_file)
    general_text = (demo_dir().parent / "general_text.txt").read_text(encoding="utf-8")
    base = load_base(config.base)

    version = learn([demo_dir() / folder], memory, config, base=base,
                    exclude_questions=[q["question"] for q in questions], progress=progress)
    loaded = load_memory(version.ref, base=base)
    try:
        asked = [q["question"] for q in questions]
        with_memory = loaded.answer(asked)
        without = loaded.base_answers(asked)
        ppl_memory = perplexity(loaded.model, base.tokenizer, general_text)
        from inweights.methods import METHODS

        with METHODS[version.manifest["method"]].disabled(loaded.model):
            ppl_base = perplexity(loaded.model, base.tokenizer, general_text)
    finally:
        loaded.close()

    rows = []
    for q, mem, plain in zip(questions, with_memory, without):
        golds = [q["answer"], *q.get("aliases", [])]
        rows.append({"question": q["question"], "answer": q["answer"], "form": q.get("form"), "base": plain,
                     "memory": mem,
                     "base_correct": contains(plain, golds), "memory_correct": contains(mem, golds),
                     "base_em": exact_match(plain, golds), "memory_em": exact_match(mem, golds)})
    n = len(rows)
    manifest = version.manifest
    forms = sorted({r["form"] for r in rows if r["form"]})
    by_form = {form: {"n": len(mine), "base": sum(r["base_correct"] for r in mine) / len(mine),
                      "memory": sum(r["memory_correct"] for r in mine) / len(mine)}
               for form in forms for mine in [[r for r in rows if r["form"] == form]]}
    result = {
        "corpus": corpus,
        "memory": version.ref,
        "base_model": base.name,
        "questions": n,
        "accuracy": {"base": sum(r["base_correct"] for r in rows) / n,
                     "memory": sum(r["memory_correct"] for r in rows) / n},
        "exact_match": {"base": sum(r["base_em"] for r in rows) / n, "memory": sum(r["memory_em"] for r in rows) / n},
        "accuracy_by_form": by_form,
        "general_text_perplexity": {"base": ppl_base, "memory": ppl_memory,
                                    "change_pct": 100 * (ppl_memory / ppl_base - 1)},
        "forgetting_guard": {"replay_fraction": manifest["config"]["train"]["replay_fraction"]},
        "synthetic_examples": manifest["synthetic"]["examples"],
        "training": manifest["training"],
        "timings": manifest["timings"] | {"demo_total_s": round(time.perf_counter() - t0, 1)},
        "rows": rows,
    }
    _print_report(result)
    return result


def _print_report(result: dict) -> None:
    print()
    print(f"{'question':60}  {'gold':18}  {'base model':22}  {'with memory':22}")
    for r in result["rows"]:
        mark = lambda ok: "+" if ok else " "  # noqa: E731
        print(f"{r['question'][:60]:60}  {r['answer'][:18]:18}  {mark(r['base_correct'])}{r['base'][:21]:21}  "
              f"{mark(r['memory_correct'])}{r['memory'][:21]:21}")
    acc, ppl = result["accuracy"], result["general_text_perplexity"]
    print()
    print(f"held-out questions: {result['questions']}  (+ = gold answer in the reply)")
    print(f"accuracy   base model {100 * acc['base']:.1f}%   with memory {100 * acc['memory']:.1f}%")
    print(f"exact match base model {100 * result['exact_match']['base']:.1f}%   with memory "
          f"{100 * result['exact_match']['memory']:.1f}%")
    for form, f in result["accuracy_by_form"].items():
        print(f"  {form:12} ({f['n']:2} questions)  base model {100 * f['base']:.1f}%   with memory "
              f"{100 * f['memory']:.1f}%")
    print(f"general-text perplexity   base {ppl['base']:.2f}   with memory {ppl['memory']:.2f}  "
          f"({ppl['change_pct']:+.1f}%; forgetting guard: replay fraction "
          f"{result['forgetting_guard']['replay_fraction']})")
    print(f"total time {result['timings']['demo_total_s']:.0f}s")
