"""The Python API: `learn`, `ask` and `load_memory`. The CLI is a thin layer over these.

    from inweights import learn, ask, load_memory
    version = learn(["./docs"], memory="acme")
    print(ask("acme", "When was the Oslo office opened?"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from inweights import __version__
from inweights.config import LearnConfig, resolve_train
from inweights.corpus import chunk_documents, load_corpus
from inweights.errors import InweightsError
from inweights.generate import generate
from inweights.guard import replay_targets, replay_texts
from inweights.methods import METHODS
from inweights.models import Base, load_base
from inweights.store import MemoryVersion, Workspace, validate_name
from inweights.prompt import qa_prompt
from inweights.synth import (ExampleCache, assert_no_leak, diversity, drop_eval_overlap, hold_out_wordings,
                              items_per_fact, synthesize, token_counter, within_budget)
from inweights.synth.teacher import LocalTeacher
from inweights.objectives import distill_rows, sft_rows
from inweights.plan import CONFIRM_ABOVE_S, Plan, ReadOnlyCache, duration, llm_free, make_plan, sample_chunks
from inweights.train import train
from inweights.warmup import warmup_examples

log = logging.getLogger("inweights")


def learn(paths: Sequence[str | Path], memory: str, config: LearnConfig | None = None, *,
          base: Base | None = None, workspace: Workspace | None = None, exclude_questions: Sequence[str] = (),
          progress: bool = True, yes: bool = False, show_plan: bool | None = None) -> MemoryVersion:
    """Learn documents into a new version of the named memory and return it.

    `exclude_questions`: evaluation questions that must not appear in the training data: examples that contain
    one are dropped (and counted in the manifest), then the training set is checked again. `base`: an already
    loaded base model to reuse (it must match `config.base`). Before synthesis the plan (documents, words,
    chunks, synthetic tokens, estimated time) is printed (when `show_plan`, by default with `progress`); a job
    estimated past an hour raises InweightsError unless `yes` (or a `budget` that brings it under).
    """
    validate_name(memory)
    config = config or LearnConfig()
    workspace = workspace or Workspace()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    documents = load_corpus(paths)  # skips bad files with one warning; raises if nothing is readable
    base = base or load_base(config.base)
    timings["load_base_s"] = time.perf_counter() - t_start
    chunks = chunk_documents(documents, base.tokenizer, max_tokens=config.synth.chunk_tokens)
    cache = ExampleCache(workspace.cache_dir("synth"))
    plan = _plan(documents, chunks, config, base, workspace, cache)
    _say(progress if show_plan is None else show_plan, plan.render())
    if plan.seconds > CONFIRM_ABOVE_S and not yes:
        fewer = (f"learn fewer synthetic tokens with --budget N (for example --budget {_budget_for_an_hour(plan)})"
                 if plan.synth_seconds < 0.9 * CONFIRM_ABOVE_S else "learn fewer documents at a time")
        raise InweightsError(f"this would take about {duration(plan.seconds)} on this machine. To go "
                             f"ahead, run the same command with --yes; to make it shorter, {fewer}.")

    t = time.perf_counter()
    needs_teacher = any(_strategy(s).NEEDS_TEACHER for s in config.synth.strategies)
    teacher = LocalTeacher(base, batch_size=config.synth.teacher_batch_size) if needs_teacher else None
    examples, synth_stats = synthesize(chunks, teacher, config.synth, cache, progress=progress)
    examples, decontaminated = drop_eval_overlap(examples, exclude_questions)
    pool = len(examples)
    examples = within_budget(examples, config.synth.budget, token_counter(base.tokenizer),
                             seed=config.train.seed)
    if not examples:
        raise InweightsError("no training examples could be made from these documents")
    assert_no_leak(examples, exclude_questions)
    timings["synthesize_s"] = time.perf_counter() - t

    t = time.perf_counter()
    held_out: list = []
    if config.train.holdout > 0:
        examples, held_out = hold_out_wordings(examples, config.train.holdout, seed=config.train.seed)
    per_fact = items_per_fact(examples)
    train_config = resolve_train(config.train, len(examples), per_fact)
    replay_cache = workspace.cache_dir("replay")
    general = train_config.replay_fraction > 0 or train_config.warmup_fraction > 0
    texts = replay_texts(base, train_config.replay_sequences if general else 0, replay_cache, seed=train_config.seed)
    replay = (replay_targets(base, texts, replay_cache, max_len=train_config.max_seq_len)
              if train_config.replay_fraction > 0 else [])
    warmup = []
    if train_config.warmup_fraction > 0:
        warm = warmup_examples(texts, config.synth, cache, exclude_questions)
        warmup = sft_rows(base.tokenizer, warm, train_config.max_seq_len, base.newline_id)
    timings["replay_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tokenizer = base.tokenizer
    if train_config.objective == "distill":
        items = distill_rows(base, examples, {c.sha256: c.text for c in chunks}, train_config.max_seq_len,
                             base.newline_id, workspace.cache_dir("distill"), progress=progress)
    else:
        items = sft_rows(tokenizer, examples, train_config.max_seq_len, base.newline_id)
    validation = sft_rows(tokenizer, held_out, train_config.max_seq_len, base.newline_id) if held_out else []
    timings["targets_s"] = time.perf_counter() - t

    resolved = replace(config, train=train_config)
    run_key = _digest([resolved.to_dict(), base.fingerprint, [(e.prompt, e.completion) for e in examples]])
    t = time.perf_counter()

    def describe(result) -> dict:
        timings["train_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        return {
            "name": memory,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inweights_version": __version__,
            "base": {"name": base.name, "fingerprint": base.fingerprint},
            "method": train_config.method,
            "config": resolved.to_dict(),
            "documents": [{"path": d.path, "sha256": d.sha256, "kind": d.kind,
                           "chunks": sum(1 for c in chunks if c.doc_sha256 == d.sha256)} for d in documents],
            "synthetic": {"examples": len(examples), "pool": pool, "replay_sequences": len(replay),
                          "warmup_examples": len(warmup), "held_out_wordings": len(held_out),
                          "items_per_fact": per_fact,
                          "tokens": sum(len(row[0]) for row in items),
                          "by_strategy": synth_stats, "teacher": teacher.id if teacher else "none",
                          "dropped_matching_eval_questions": decontaminated, "diversity": diversity(examples)},
            "training": {k: v for k, v in asdict(result).items() if k != "losses"} |
                        {"tokens_per_s": result.tokens / max(result.seconds, 1e-9),
                         "loss_curve": result.losses[::max(1, len(result.losses) // 50)]},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        }

    version, result = train_and_publish(base, train_config, items, len(examples), workspace, memory, run_key,
                                        describe, replay=replay, warmup=warmup, validation=validation,
                                        progress=progress)
    _say(progress, f"learned {memory!r} version {version.version} in {timings['total_s']:.0f}s "
                   f"({len(examples)} examples, {result.steps} steps, final loss {result.final_loss:.3f})")
    return version


def train_and_publish(base: Base, train_config, items, n_examples: int, workspace: Workspace, memory: str,
                      run_key: str, describe, *, replay=(), warmup=(), validation=(), progress: bool = True):
    """Attach a fresh memory of `train_config.method` to the base, train it on `items` (resuming a checkpoint of
    the same `run_key`), publish it as the next version of `memory` with the manifest `describe(result)`, and
    give the caller its plain base model back. Returns (version, training result)."""
    method = METHODS[train_config.method]
    torch.manual_seed(train_config.seed)
    model = method.attach(base.model, train_config)
    try:
        if hasattr(method, "prepare"):
            method.prepare(model, items, replay)
        result = train(model, base.tokenizer, items, n_examples, train_config, workspace.run_dir(memory, run_key),
                       progress=progress, replay=replay, warmup=warmup, validation=validation)

        def write(directory: Path) -> None:
            manifest = describe(result)
            method.save(model, directory)
            (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))

        return workspace.publish(memory, write), result
    finally:
        method.detach(model)


@dataclass
class LoadedMemory:
    """A base model with one memory attached, ready to answer. `base_answers` answers without the memory."""

    base: Base
    model: torch.nn.Module
    version: MemoryVersion | None

    def answer(self, questions: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
        prompts = [qa_prompt(q) for q in questions]
        return generate(self.model, self.base.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        stop_token_ids=self.base.stop_token_ids, batch_size=batch_size)

    def base_answers(self, questions: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
        if self.version is None:
            return self.answer(questions, max_new_tokens, batch_size)
        with METHODS[self.version.manifest["method"]].disabled(self.model):
            return self.answer(questions, max_new_tokens, batch_size)

    def close(self) -> None:
        """Detach the memory, leaving the base model as it was loaded."""
        if self.version is not None:
            METHODS[self.version.manifest["method"]].detach(self.model)


def load_memory(ref: str | None, *, base: Base | None = None, workspace: Workspace | None = None) -> LoadedMemory:
    """Attach memory `ref` ('name' or 'name@N'; None for the plain base model) to its base model."""
    workspace = workspace or Workspace()
    if ref is None:
        base = base or load_base()
        return LoadedMemory(base, base.model, None)
    version = workspace.get(ref)
    manifest = version.manifest
    base = base or load_base(manifest["base"]["name"])
    if base.fingerprint != manifest["base"]["fingerprint"]:
        raise InweightsError(f"memory {version.ref} was trained on base {manifest['base']['fingerprint']}, but "
                             f"the loaded base is {base.fingerprint}; its memory would not fit")
    model = METHODS[manifest["method"]].load(base.model, version.path)
    return LoadedMemory(base, model, version)


def ask(ref: str | None, question: str, *, base: Base | None = None, workspace: Workspace | None = None,
        max_new_tokens: int = 32) -> str:
    """Answer one question from the memory's weights alone (no document in the prompt); None: base model."""
    loaded = load_memory(ref, base=base, workspace=workspace)
    try:
        return loaded.answer([question], max_new_tokens=max_new_tokens)[0]
    finally:
        loaded.close()


def _plan(documents, chunks, config: LearnConfig, base: Base, workspace: Workspace, cache: ExampleCache) -> Plan:
    """The plan, after synthesizing a sample of chunks with the LLM-free strategies. The sample is not cached, so
    the run's statistics (chunks from the cache) say what earlier runs left, not what the plan made."""
    probe = llm_free(config)
    sample = None
    if probe is not None:
        sampled = sample_chunks(chunks, seed=config.train.seed)
        sample = (synthesize(sampled, None, probe, ReadOnlyCache(cache), progress=False)[0], sampled)
    return make_plan(documents, chunks, config, base.tokenizer, base.fingerprint, workspace, sample)


def _budget_for_an_hour(plan: Plan) -> int:
    """A --budget that brings the plan's training under the confirmation threshold (two significant digits)."""
    per_token = plan.train_seconds / max(plan.synthetic_tokens, 1)
    budget = max(1000, int(0.9 * (CONFIRM_ABOVE_S - plan.synth_seconds) / max(per_token, 1e-9)))
    magnitude = 10 ** max(len(str(budget)) - 2, 0)
    return budget // magnitude * magnitude


def _strategy(name: str):
    from inweights.synth import STRATEGIES

    return STRATEGIES[name]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
