"""The evaluation protocol: the same questions under every condition, plus forgetting and cost.

Conditions (model, what goes in the prompt before the question):

    closed_book   base model, nothing             the floor
    in_context    base model, the source document  the ceiling a memory tries to reach without the prompt
    rag           base model, top-k chunks         retrieval with the bundled MiniLM and FAISS
    naive         naive fine-tune, nothing         the same LoRA trained on the raw text (next-token loss)
    memory        the memory, nothing              what `inweights learn` made
    memory_rag    the memory, top-k chunks         both together

Run as (the CLI wires `eval_memory`):
    inweights eval acme questions.jsonl --docs ./docs
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from inweights import __version__
from inweights.api import load_memory, train_and_publish
from inweights.config import LearnConfig, TrainConfig, resolve_train
from inweights.corpus import load_corpus
from inweights.errors import InweightsError
from inweights.evaluate.conditions import answer_logliks, answer_mc, answer_short, fit_context, gold_summary, \
    measure_cost, model_window, question_prompts, score, score_by_form
from inweights.evaluate.general import GeneralLimits, compare, general_suite
from inweights.evaluate.questions import MultipleChoice, Question, load_questions
from inweights.evaluate.rag import EMBEDDER, RagIndex
from inweights.models import Base, load_base
from inweights.store import MemoryVersion, Workspace
from inweights.synth import Example, assert_no_leak
from inweights.train import tokenize_replay

CONDITIONS = {  # name -> (which model answers, what context goes before the question)
    "closed_book": ("base", None),
    "in_context": ("base", "document"),
    "rag": ("base", "retrieved"),
    "naive": ("naive", None),
    "memory": ("memory", None),
    "memory_rag": ("memory", "retrieved"),
}
GENERAL_ACCURACY_KEYS = ("acc_points", "match_points")  # what "mean general-task change" averages


@dataclass
class EvalSettings:
    """How each condition is run. Defaults suit a 2-core CPU."""

    rag_k: int = 4
    """Chunks retrieved per question."""
    chunk_tokens: int = 128
    """Largest retrieval chunk, in base-model tokens."""
    context_tokens: int | None = None
    """Prompt budget for document and retrieved contexts; None uses the model's window. A context's tail is
    cut to fit and the tokens cut are reported."""
    max_new_tokens: int = 24
    """Longest short answer."""
    batch_size: int = 8
    """Rows per batch when answering."""
    cost_questions: int = 5
    """First N questions timed one at a time for time to first token and decode speed."""
    decode_tokens: int = 16
    """Tokens decoded per timed question to measure decode speed."""

    def __post_init__(self):
        for name in ("rag_k", "chunk_tokens", "max_new_tokens", "batch_size", "cost_questions", "decode_tokens"):
            if getattr(self, name) < 1:
                raise InweightsError(f"eval setting {name} must be at least 1")


def eval_memory(memory_ref: str, questions_path: Path, docs: Sequence[Path] | None, conditions: Sequence[str],
                limit: int | None, general_limits: GeneralLimits | None, data_dir: Path | None, out_dir: Path,
                settings: EvalSettings | None = None, workspace: Workspace | None = None,
                progress: bool = True, device: str = "auto", dtype: str = "auto") -> dict:
    """`inweights eval`: evaluate an existing memory on a question file, write the report to `out_dir`.

    `docs` (the documents the memory learned) is needed by in_context, rag, memory_rag and naive; naive trains
    a fresh fine-tune on them with the memory's own training settings. `data_dir`: the general-ability data
    (../shared/data/general); `general_limits` None skips the forgetting suite. `device`, `dtype`: where and in
    what the base runs (see models.load_base).
    """
    from inweights.evaluate.report import write_report

    check_conditions(conditions)
    workspace = workspace or Workspace()
    version = workspace.get(memory_ref)
    questions = load_questions(questions_path, limit)
    documents = {d.path: d.text for d in load_corpus(docs)} if docs else None
    base = load_base(version.manifest["base"]["name"], dtype=dtype, device=device)
    naive_ref = None
    if "naive" in conditions:
        if not documents:
            raise InweightsError("the naive condition trains on the documents: pass them with --docs")
        train_config = LearnConfig.from_dict(version.manifest["config"]).train
        naive_ref = train_naive(base, documents, train_config, workspace, f"{version.name[:57]}-naive",
                                exclude_questions=[q.question for q in questions], progress=progress).ref
    report = evaluate(base, questions, documents, conditions, memory_ref=version.ref, naive_ref=naive_ref,
                      workspace=workspace, general_limits=general_limits, data_dir=data_dir, settings=settings,
                      progress=progress,
                      run={"questions_file": str(questions_path), "limit": limit, "limit_applies_to": "questions"})
    write_report(report, out_dir)
    from inweights.versions import record_evaluation

    record_evaluation(version, report)
    return report


def train_naive(base: Base, documents: dict[str, str], train_config: TrainConfig, workspace: Workspace,
                memory: str, exclude_questions: Sequence[str] = (), progress: bool = True) -> MemoryVersion:
    """The naive baseline: the same method trained on the documents' raw text with next-token loss, no synthetic
    data and no replay. Published as a version of `memory`, like any memory; an identical earlier run is reused."""
    texts = list(documents.values())
    assert_no_leak([Example("", t, "raw_text", "", name, "", "none") for name, t in documents.items()],
                   exclude_questions)
    items = tokenize_replay(base.tokenizer, texts, train_config.max_seq_len)
    config = resolve_train(replace(train_config, replay_fraction=0.0, lora_init="random"), len(items))
    key = hashlib.sha256(json.dumps([asdict(config), base.fingerprint, texts], default=str).encode()).hexdigest()[:16]
    for version in reversed(workspace.versions(memory)):  # the same run already published: reuse it
        if version.manifest.get("run_key") == key:
            return version

    def describe(result) -> dict:
        return {
            "name": memory, "kind": "naive_finetune", "run_key": key,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inweights_version": __version__,
            "base": {"name": base.name, "fingerprint": base.fingerprint},
            "method": config.method,
            "config": LearnConfig(base=base.name, train=config).to_dict(),
            "documents": [{"path": name, "sha256": hashlib.sha256(t.encode()).hexdigest()}
                          for name, t in documents.items()],
            "synthetic": {"examples": 0, "raw_text_items": len(items),
                          "completion_tokens": sum(len(ids) - 1 for ids, _ in items), "teacher": "none"},
            "training": {k: v for k, v in asdict(result).items() if k != "losses"},
            "timings": {"train_s": round(result.seconds, 2), "total_s": round(result.seconds, 2)},
        }

    return train_and_publish(base, config, items, len(items), workspace, memory, key, describe,
                             progress=progress)[0]


def evaluate(base: Base, questions: Sequence[Question], documents: dict[str, str] | None,
             conditions: Sequence[str], *, memory_ref: str | None = None, naive_ref: str | None = None,
             workspace: Workspace | None = None, general_limits: GeneralLimits | None = None,
             data_dir: Path | None = None, settings: EvalSettings | None = None, progress: bool = True,
             run: dict | None = None) -> dict:
    """Run the conditions on the questions and return the report (see docs/eval.md for its keys).

    `documents`: {name: text}; a question's `doc` names one of them (by name, file name or file stem).
    `run`: what to record about how the questions were chosen (file, limit, task).
    """
    settings = settings or EvalSettings()
    check_conditions(conditions)
    if not questions:
        raise InweightsError("no questions to evaluate")
    refs = {"base": None, "naive": naive_ref, "memory": memory_ref}
    for c in conditions:
        if CONDITIONS[c][0] != "base" and refs[CONDITIONS[c][0]] is None:
            raise InweightsError(f"condition {c} needs a trained model to load: pass {CONDITIONS[c][0]}_ref")
    if general_limits is not None and data_dir is None:
        raise InweightsError("the forgetting suite needs the general-ability data directory (../shared/data/general)")
    t_start = time.perf_counter()
    tokenizer = base.tokenizer
    window = settings.context_tokens or model_window(base.model)
    contexts: dict[str, tuple] = {}  # context kind -> (texts per question, what was cut to fit)
    retrieval_s = 0.0
    if any(CONDITIONS[c][1] == "document" for c in conditions):
        contexts["document"] = _fit_all(tokenizer, questions, [_source(q, documents) for q in questions], window,
                                         settings.max_new_tokens)
    if any(CONDITIONS[c][1] == "retrieved" for c in conditions):
        if not documents:
            raise InweightsError("retrieval conditions need the documents to index: pass them with --docs")
        index = RagIndex.from_documents(documents, tokenizer, settings.chunk_tokens)
        found = ["\n\n".join(index.search(q.question, settings.rag_k)) for q in questions]
        retrieval_s = index.search_seconds / index.searches
        contexts["retrieved"] = _fit_all(tokenizer, questions, found, window, settings.max_new_tokens)

    results: dict[str, dict] = {}
    general: dict[str, dict] = {}
    training: dict[str, dict] = {}
    for source, ref in refs.items():
        names = [c for c in conditions if CONDITIONS[c][0] == source]
        wants_general = general_limits is not None and (names or source == "base")
        if not names and not wants_general:
            continue
        loaded = load_memory(ref, base=base, workspace=workspace)
        try:
            if loaded.version is not None:
                training[source] = _training_cost(loaded.version)
            for name in names:
                kind = CONDITIONS[name][1]
                texts, cut = contexts[kind] if kind else ([None] * len(questions), None)
                results[name] = _run_condition(loaded.model, base, questions, texts, settings,
                                               retrieval_s if kind == "retrieved" else 0.0)
                results[name] |= {"model": source, "context": kind, "context_tokens_cut": cut}
                _say(progress, f"{name}: {_headline_text(results[name]['scores'])}")
            if wants_general:
                general[source] = general_suite(loaded.model, tokenizer, data_dir, general_limits,
                                                base.stop_token_ids, settings.batch_size, progress)
        finally:
            loaded.close()
    return _assemble(base, questions, results, general, training, settings, general_limits, run, memory_ref,
                     naive_ref, window, time.perf_counter() - t_start)


def mean_change_points(deltas: dict) -> float:
    """Mean change over the general tasks' accuracies (points), from `general.compare`'s deltas; 0 if none."""
    points = [v for task in deltas.values() for k, v in task.items() if k in GENERAL_ACCURACY_KEYS]
    return sum(points) / len(points) if points else 0.0


def check_conditions(conditions: Sequence[str]) -> None:
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise InweightsError(f"unknown conditions {unknown}; choose from {', '.join(CONDITIONS)}")


def _source(question: Question, documents: dict[str, str] | None) -> str:
    if not documents:
        raise InweightsError("in_context needs the documents: pass them with --docs")
    if question.doc is None:
        raise InweightsError(f"question {question.question[:60]!r} has no \"doc\"; in_context needs each "
                             "question's source document")
    for name, text in documents.items():
        if question.doc in (name, Path(name).name, Path(name).stem):
            return text
    raise InweightsError(f"question {question.question[:60]!r} names doc {question.doc!r}, which is not among "
                         f"the documents ({', '.join(list(documents)[:5])}...)")


def _fit_all(tokenizer, questions, texts, window, max_new_tokens) -> tuple[list[str | None], dict]:
    fitted = [fit_context(tokenizer, t, q, window, max_new_tokens) for q, t in zip(questions, texts)]
    cuts = [c for _, c in fitted]
    return [t for t, _ in fitted], {"window": window, "questions_cut": sum(c > 0 for c in cuts),
                                    "tokens_cut_total": sum(cuts), "tokens_cut_mean": sum(cuts) / len(cuts)}


def _run_condition(model, base: Base, questions, contexts, settings: EvalSettings, retrieval_s: float) -> dict:
    result = {}
    if isinstance(questions[0], MultipleChoice):
        predictions = answer_mc(model, base.tokenizer, questions, contexts, settings.batch_size)
        scores = score(questions, predictions)
    else:
        predictions = answer_short(model, base.tokenizer, base.stop_token_ids, questions, contexts,
                                   settings.max_new_tokens, settings.batch_size)
        logliks = answer_logliks(model, base.tokenizer, questions, contexts, settings.batch_size)
        scores = score(questions, predictions) | {"p_gold": gold_summary(logliks)["p_gold"]}
        result["gold_logprobs"] = [round(lp, 4) for lp, _ in logliks]  # per question, its likeliest gold's log p
    prompts = question_prompts(base.tokenizer, questions, contexts)
    cost = measure_cost(model, base.tokenizer, prompts, settings.cost_questions, settings.decode_tokens,
                        extra_seconds=retrieval_s)
    return result | {"scores": scores, "by_form": score_by_form(questions, predictions), "cost": cost,
                     "predictions": predictions}


def _training_cost(version: MemoryVersion) -> dict:
    m = version.manifest
    return {"ref": version.ref, "kind": m.get("kind", "memory"), "train_s": m["training"]["seconds"],
            "total_s": m["timings"].get("total_s"), "synthesize_s": m["timings"].get("synthesize_s", 0.0),
            "synthetic_examples": m["synthetic"]["examples"], "trained_tokens": m["training"]["tokens"],
            "completion_tokens": m["synthetic"].get("completion_tokens"), "seed": m["config"]["train"]["seed"],
            "epochs": m["config"]["train"]["epochs"]}


def _assemble(base, questions, results, general, training, settings, general_limits, run, memory_ref, naive_ref,
              window, seconds) -> dict:
    """Gains over closed-book, cost ratios to closed-book, forgetting deltas: every number in one dict."""
    headline = "accuracy" if isinstance(questions[0], MultipleChoice) else "em"
    floor = results.get("closed_book")
    forgetting = {}
    if "base" in general:
        for source, report in general.items():
            deltas = compare(general["base"], report)
            forgetting[source] = {"scores": report, "deltas": deltas,
                                  "mean_change_points": mean_change_points(deltas)}
    for name, result in results.items():
        result["headline"] = result["scores"][headline]
        result["gain_points"] = 100 * (result["headline"] - floor["headline"]) if floor else None
        result["general_change_points"] = forgetting.get(result["model"], {}).get("mean_change_points")
        if floor:
            a, b = floor["cost"], result["cost"]
            result["cost_ratios"] = {"ttft": b["ttft_s"] / a["ttft_s"],
                                     "decode_tokens_per_s": b["decode_tokens_per_s"] / a["decode_tokens_per_s"],
                                     "prompt_tokens": b["prompt_tokens_mean"] / a["prompt_tokens_mean"],
                                     "kv_cache_bytes": b["kv_cache_bytes_mean"] / a["kv_cache_bytes_mean"]}
        if result["model"] in training:
            result["training"] = training[result["model"]]
    import faiss
    import sentence_transformers
    import transformers

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": run or {},
        "base": {"name": base.name, "fingerprint": base.fingerprint, "window": model_window(base.model)},
        "memory": memory_ref, "naive": naive_ref,
        "questions": {"kind": "multiple_choice" if headline == "accuracy" else "short_answer", "n": len(questions),
                      "documents": len({q.doc for q in questions})},
        "headline_metric": headline,
        "conditions": results,
        "forgetting": forgetting,
        "training": training,
        "settings": asdict(settings) | {"context_window_used": window, "decoding": "greedy",
                                        "retriever": EMBEDDER, "index": "faiss.IndexFlatIP (cosine)"},
        "general_limits": asdict(general_limits) if general_limits else None,
        "seeds": {source: t["seed"] for source, t in training.items()},
        "versions": {"inweights": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "faiss": faiss.__version__,
                     "sentence_transformers": sentence_transformers.__version__},
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform()},
        "eval_seconds": round(seconds, 1),
    }


def _headline_text(scores: dict) -> str:
    return "  ".join(f"{k} {100 * v:.1f}" for k, v in scores.items() if k != "n") + f"  (n={scores['n']})"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
