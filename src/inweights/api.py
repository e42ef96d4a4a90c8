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
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from inweights import __version__, distributed
from inweights.anchor import Anchor
from inweights.config import LearnConfig, TrainConfig, resolve_train
from inweights.corpus import chunk_documents, load_corpus
from inweights.drift import load_probe, strength_within
from inweights.errors import InweightsError
from inweights.generate import generate
from inweights.guard import cached_rows, cached_texts, replay_rows, replay_targets, replay_texts
from inweights.methods import METHODS
from inweights.methods.lora import init_quiet
from inweights.models import Base, load_base, resolve_device, resolve_dtype
from inweights.store import MANIFEST, MemoryVersion, Workspace, validate_name, write_atomic
from inweights.prompt import answer_format, has_chat_template, qa_prompt, render
from inweights.synth import (ExampleCache, assert_no_leak, diversity, drop_eval_overlap, hold_out_wordings,
                              items_per_fact, strategy_versions, synthesize, token_counter, within_budget)
from inweights.synth.teacher import make_teacher
from inweights.objectives import distill_rows, sft_rows
from inweights.plan import CONFIRM_ABOVE_S, Plan, ReadOnlyCache, duration, llm_free, make_plan, sample_chunks
from inweights.train import TrainResult, replay_drawn, train
from inweights.update import (base_rows, can_update, chunk_records_of, contrast, delta, document_records,
                              parent_examples, unlikely_rows)
from inweights.warmup import warmup_examples

log = logging.getLogger("inweights")


def learn(paths: Sequence[str | Path], memory: str, config: LearnConfig | None = None, *,
          base: Base | None = None, workspace: Workspace | None = None, exclude_questions: Sequence[str] = (),
          progress: bool = True, yes: bool = False, show_plan: bool | None = None,
          update: bool = False) -> MemoryVersion:
    """Learn documents into a new version of the named memory and return it.

    `update`: train the newest version further on what changed since it (see update.py) instead of learning the
    whole corpus again; a full re-learn is still done, and said, when there is no version yet, or the base,
    the method or the objective changed. With nothing changed, the newest version is returned as it is.

    `exclude_questions`: evaluation questions that must not appear in the training data: examples that contain
    one are dropped (and counted in the manifest), then the training set is checked again. `base`: an already
    loaded base model to reuse (it must match `config.base`). Before synthesis the plan (documents, words,
    chunks, synthetic tokens, estimated time) is printed (when `show_plan`, by default with `progress`); a job
    estimated past an hour raises InweightsError unless `yes` (or a `budget` that brings it under).
    """
    validate_name(memory)
    config = config or LearnConfig()
    workspace = workspace or Workspace()
    distributed.setup()
    if distributed.active():
        if update:
            raise InweightsError("learn --update runs in one process; start it without a launcher")
        progress = progress and distributed.is_main()
        show_plan = show_plan and distributed.is_main()
    lock = workspace.lock(memory, "inweights learn --update" if update else "inweights learn") \
        if distributed.is_main() else nullcontext()  # under a launcher, the main process holds it for all
    with lock:
        return _learn(paths, memory, config, base, workspace, exclude_questions, progress, yes, show_plan, update)


def _learn(paths, memory: str, config: LearnConfig, base: Base | None, workspace: Workspace, exclude_questions,
           progress: bool, yes: bool, show_plan: bool | None, update: bool) -> MemoryVersion:
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    documents = load_corpus(paths)  # skips bad files with one warning; raises if nothing is readable
    shard = None  # the device the base's layers are sharded onto, under a launcher with --shard
    if (config.shard or distributed.fsdp_requested()) and distributed.active():
        if base is not None:
            raise InweightsError("--shard loads the base itself (into CPU memory, then shards it); pass no base")
        if config.train.method not in distributed.SHARDABLE:
            raise InweightsError(f"--shard splits the decoder layers across processes, and a {config.train.method} "
                                 f"memory does not live inside them; use --method "
                                 f"{' or '.join(distributed.SHARDABLE)}, or train without --shard")
        if config.train.max_drift:
            raise InweightsError("--max-drift scores the trained memory on one whole base, which --shard does not "
                                 "keep; pass --max-drift 0 (and --strength to scale it) or train without --shard")
        shard = resolve_device(config.device)
        base = load_base(config.base, dtype=resolve_dtype(config.dtype, shard), device="cpu")
    base = base or load_base(config.base, dtype=config.dtype, device=config.device)
    timings["load_base_s"] = time.perf_counter() - t_start
    chunks = chunk_documents(documents, base.tokenizer, max_tokens=config.synth.chunk_tokens)
    cache = ExampleCache(workspace.cache_dir("synth"))
    records = document_records(documents, chunks)
    versions = workspace.versions(memory)
    parent = versions[-1] if versions else None
    if update:
        why = full_relearn_reason(parent, config, base)
        if why is None:
            return _update(parent, records, chunks, memory, config, base, workspace, cache, exclude_questions,
                           progress, timings, t_start)
        _say(progress, f"learning {memory!r} from scratch: {why}")
    plan = _plan(documents, chunks, config, base, workspace, cache)
    _say(progress if show_plan is None else show_plan, plan.render())
    if plan.seconds > CONFIRM_ABOVE_S and not yes:
        fewer = (f"learn fewer synthetic tokens with --budget N (for example --budget {_budget_for_an_hour(plan)})"
                 if plan.fixed_seconds < 0.9 * CONFIRM_ABOVE_S else "learn fewer documents at a time")
        raise InweightsError(f"this would take about {duration(plan.seconds)} on this machine. To go "
                             f"ahead, run the same command with --yes; to make it shorter, {fewer}.")

    with distributed.main_first():  # under a launcher the others then find the data in the caches
        t = time.perf_counter()
        teacher = _teacher(config.synth, base, workspace)
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
        tokenizer = base.tokenizer
        if train_config.objective == "distill":
            items = distill_rows(base, examples, {c.sha256: c.text for c in chunks}, train_config.max_seq_len,
                                 base.newline_id, workspace.cache_dir("distill"), progress=progress)
        else:
            items = sft_rows(tokenizer, examples, train_config.max_seq_len, base.newline_id)
        validation = sft_rows(tokenizer, held_out, train_config.max_seq_len, base.newline_id) if held_out else []
        timings["targets_s"] = time.perf_counter() - t
        t = time.perf_counter()
        replay, warmup = _guard_rows(base, train_config, config.synth, workspace, cache, exclude_questions, items,
                                     len(examples), progress)
        quiet = _quiet_rows(base, train_config, config.synth, workspace, cache, exclude_questions, replay)
        timings["replay_s"] = time.perf_counter() - t

    resolved = replace(config, train=train_config)
    run_key = _digest([resolved.to_dict(), base.fingerprint, [(e.prompt, e.completion) for e in examples]])
    t = time.perf_counter()

    def describe(result) -> dict:
        return _manifest(memory, base, resolved, records, result, timings, t, t_start, _lineage(parent, records, "full"),
                         {"examples": len(examples), "pool": pool, "replay_sequences": len(replay),
                          "replay_drawn": sum(1 for row in replay if row[1] is not None),
                          "warmup_examples": len(warmup), "held_out_wordings": len(held_out),
                          "items_per_fact": per_fact, "tokens": sum(len(row[0]) for row in items),
                          "by_strategy": synth_stats, "strategy_versions": strategy_versions(config.synth),
                          "teacher": teacher.id if teacher else "none",
                          "teacher_usage": getattr(teacher, "usage", None),
                          "dropped_matching_eval_questions": decontaminated, "diversity": diversity(examples)})

    version, result = train_and_publish(base, train_config, items, len(examples), workspace, memory, run_key,
                                        describe, replay=replay, warmup=warmup, validation=validation,
                                        quiet=quiet, progress=progress, shard=shard)
    _say(progress, f"learned {memory!r} version {version.version} in {time.perf_counter() - t_start:.0f}s "
                   f"({len(examples)} examples, {result.steps} steps, final loss {result.final_loss:.3f})")
    return version


def train_and_publish(base: Base, train_config, items, n_examples: int, workspace: Workspace, memory: str,
                      run_key: str, describe, *, replay=(), warmup=(), validation=(), quiet=(),
                      progress: bool = True, resume_from: MemoryVersion | None = None, shard=None):
    """Attach a fresh memory of `train_config.method` to the base (or, with `resume_from`, that version's memory,
    trainable), train it on `items` (resuming a checkpoint of the same `run_key`), publish it as the next version
    of `memory` with the manifest `describe(result)`, and give the caller its plain base model back. Returns
    (version, training result). With `train_config.seeds` > 1 (LoRA, not with `resume_from`) it trains one memory
    per seed and publishes their mean (_train_seeds). With `shard` (a device; under a launcher) the base's layers
    are sharded across the processes onto it for training (train.train) and the base stays sharded: it is not used
    again. `quiet`: the token id lists a quiet LoRA start (`lora_init`) keeps out of the way of (_quiet_rows)."""
    method = METHODS[train_config.method]
    run_dir = workspace.run_dir(memory, run_key)
    averaged = train_config.seeds > 1 and resume_from is None
    if averaged:
        if shard is not None:
            raise InweightsError("seeds above 1 and --shard cannot be combined yet; train with one seed")
        model, result = _train_seeds(base, train_config, items, n_examples, run_dir, replay=replay, warmup=warmup,
                                     validation=validation, quiet=quiet, progress=progress)
    else:
        model, result = _train_one(method, base, train_config, items, n_examples, run_dir, resume_from=resume_from,
                                   replay=replay, warmup=warmup, validation=validation, quiet=quiet,
                                   progress=progress, shard=shard)
    try:
        strength, drift = train_config.strength, None
        if train_config.max_drift:
            choice = _strength_within(base, workspace, method, model, train_config, progress)
            strength, drift = choice.strength, choice.to_dict(train_config.max_drift)
        if strength != 1.0:
            method.scale(model, strength)

        def write(directory: Path) -> None:
            manifest = describe(result) | {"strength": strength} | ({"drift": drift} if drift else {})
            method.save(model, directory)
            (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))

        number = workspace.publish(memory, write).version if distributed.is_main() else None
        distributed.barrier()
        if averaged and distributed.is_main():
            for seed_dir in run_dir.glob("seed*"):  # the seeds' own memories: the published one is their mean
                shutil.rmtree(seed_dir, ignore_errors=True)
        return workspace.get(f"{memory}@{distributed.broadcast(number)}"), result
    finally:
        if shard is None:
            method.detach(model)


def _strength_within(base: Base, workspace: Workspace, method, model, train_config, progress: bool):
    """The strength (at most `train_config.strength`) at which the trained memory moves the drift probe's
    perplexity by at most `max_drift` percent (drift.choose_strength); the model is left at strength 1."""
    with method.disabled(model):  # the base's own NLL on the probe: the memory must not be in it
        probe = load_probe(base, workspace.cache_dir("replay"), progress=progress)
    return strength_within(model, probe, method.scale, train_config.max_drift, cap=train_config.strength,
                           say=lambda message: _say(progress, message))


def _train_one(method, base: Base, train_config, items, n_examples: int, run_dir: Path, *,
               resume_from: MemoryVersion | None, replay, warmup, validation, quiet=(), progress: bool, shard=None):
    """Attach a fresh memory to the base, seeded (or `resume_from`'s memory, trainable at its trained scale), and
    train it; returns (the model carrying it, the training result). On an error the memory is detached again
    (unless sharded: see train_and_publish)."""
    torch.manual_seed(train_config.seed if train_config.init_seed is None else train_config.init_seed)
    if resume_from is None:
        model = method.attach(base.model, train_config)
    else:
        model = method.resume(base.model, resume_from.path, train_config)
        saved_at = resume_from.manifest.get("strength", resume_from.manifest["config"]["train"].get("strength", 1.0))
        if saved_at != 1.0:  # train the update as it was trained, not as it was saved
            method.scale(model, 1.0 / saved_at)
    try:
        if hasattr(method, "prepare") and resume_from is None:
            method.prepare(model, items, replay)
        if train_config.lora_init != "random" and resume_from is None:
            init_quiet(model, quiet, base.tokenizer.pad_token_id)
        penalty = (Anchor(model, [row[0] for row in replay], train_config.anchor, base.tokenizer.pad_token_id)
                   if train_config.anchor > 0 else None)
        result = train(model, base.tokenizer, items, n_examples, train_config, run_dir, progress=progress,
                       replay=replay, warmup=warmup, validation=validation, compute_dtype=base.dtype, shard=shard,
                       penalty=penalty)
    except BaseException:
        if shard is None:
            method.detach(model)
        raise
    return model, result


def _train_seeds(base: Base, train_config, items, n_examples: int, run_dir: Path, *, replay, warmup, validation,
                 quiet, progress: bool):
    """`seeds` > 1: train one LoRA memory per seed on the same rows, each saved in the run's folder as it finishes
    (an interrupted learn keeps the seeds it finished and resumes the one it was in), then return the base with
    their mean update attached (lora.average) and the runs' results summed (steps, tokens, seconds; the final loss
    is their mean)."""
    from inweights.methods.lora import average

    method = METHODS[train_config.method]
    directories, results = [], []
    for i in range(train_config.seeds):
        config = replace(train_config, seed=train_config.seed + i, seeds=1, strength=1.0,
                         init_seed=None if train_config.init_seed is None else train_config.init_seed + i)
        seed_dir = run_dir / f"seed{config.seed}"
        done = seed_dir / "memory"
        if (done / "result.json").is_file():
            results.append(TrainResult(**json.loads((done / "result.json").read_text())))
        else:
            _say(progress, f"seed {i + 1} of {train_config.seeds}")
            model, result = _train_one(method, base, config, items, n_examples, seed_dir, resume_from=None,
                                       replay=replay, warmup=warmup, validation=validation, quiet=quiet,
                                       progress=progress)
            try:
                if distributed.is_main():
                    partial = seed_dir / "memory.partial"
                    method.save(model, partial)
                    (partial / "result.json").write_text(json.dumps(asdict(result)))
                    partial.replace(done)
                distributed.barrier()
                results.append(result)
            finally:
                method.detach(model)
        directories.append(done)
    model = average(base.model, directories)
    total = TrainResult(steps=sum(r.steps for r in results), tokens=sum(r.tokens for r in results),
                        loss_tokens=sum(r.loss_tokens for r in results), seconds=sum(r.seconds for r in results),
                        final_loss=sum(r.final_loss for r in results) / len(results),
                        resumed_from_step=max(r.resumed_from_step for r in results),
                        trainable_parameters=sum(r.trainable_parameters for r in results),
                        losses=[loss for r in results for loss in r.losses],
                        validation=[v for r in results for v in r.validation],
                        stopped_early=any(r.stopped_early for r in results),
                        averaged_steps=sum(r.averaged_steps for r in results))
    return model, total


def _manifest(memory: str, base: Base, config: LearnConfig, records: list[dict], result, timings: dict,
              t_train: float, t_start: float, lineage: dict, synthetic: dict) -> dict:
    timings["train_s"] = time.perf_counter() - t_train
    timings["total_s"] = time.perf_counter() - t_start
    return {
        "name": memory,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inweights_version": __version__,
        "base": {"name": base.name, "fingerprint": base.fingerprint, "dtype": str(base.dtype).removeprefix("torch."),
                 "device": str(base.device),
                 "prompt_format": "chat" if has_chat_template(base.tokenizer) else "plain"},
        "method": config.train.method,
        "config": config.to_dict(),
        "documents": records,
        **lineage,
        "synthetic": synthetic,
        "training": {k: v for k, v in asdict(result).items() if k != "losses"} |
                    {"tokens_per_s": result.tokens / max(result.seconds, 1e-9),
                     "loss_curve": result.losses[::max(1, len(result.losses) // 50)]},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }


def _lineage(parent: MemoryVersion | None, records: list[dict], mode: str) -> dict:
    """How a version came about: `mode` (full, update, forget, rollback), the newest version before it and the
    document delta from that version (when both record their chunks)."""
    if parent is None:
        return {"lineage": {"mode": mode, "parent": None}}
    out = {"mode": mode, "parent": parent.version}
    manifest = parent.manifest
    if can_update(manifest):  # `records` always do (document_records, or a manifest that can_update)
        out["delta"] = delta(manifest["documents"], records).summary()
    return {"lineage": out}


def _guard_rows(base: Base, train_config, synth_config, workspace: Workspace, cache: ExampleCache,
                exclude_questions, items, n_examples: int, progress: bool = True) -> tuple[list, list]:
    """The forgetting guard's replay rows and the QA warm-up rows, as the train config asks, for a `train` run
    on `items` (the first `n_examples` of them setting the epoch size). The base model's targets are computed
    only for the replay rows that run draws (the others carry None)."""
    replay_cache = workspace.cache_dir("replay")
    general = train_config.replay_fraction > 0 or train_config.warmup_fraction > 0
    texts = replay_texts(base, train_config.replay_sequences if general else 0, replay_cache, seed=train_config.seed,
                         progress=progress, top_k=train_config.replay_top_k)
    warmup = []
    if train_config.warmup_fraction > 0:
        warm = warmup_examples(texts, synth_config, cache, exclude_questions)
        warmup = sft_rows(base.tokenizer, warm, train_config.max_seq_len, base.newline_id)
    replay = []
    if train_config.replay_fraction > 0:
        rows = replay_rows(base.tokenizer, texts, train_config.max_seq_len)
        questions = _guard_questions(base, texts, len(rows), train_config, synth_config, cache, exclude_questions)
        question_rows = replay_rows(base.tokenizer, questions, train_config.max_seq_len)
        cut = train_config.replay_tokens or None
        needed = set().union(*(replay_drawn([len(row[0]) for row in items], n_examples,
                                            [len(r[:cut]) for r in rows + question_rows],
                                            [len(row[0]) for row in warmup], replace(train_config, seed=seed))
                               for seed in range(train_config.seed, train_config.seed + train_config.seeds)))
        # two target caches, so that the plain text's targets are shared with runs without questions
        replay = replay_targets(base, texts, replay_cache, max_len=train_config.max_seq_len, progress=progress,
                                needed={i for i in needed if i < len(rows)})
        replay += replay_targets(base, questions, replay_cache, max_len=train_config.max_seq_len, progress=progress,
                                 needed={i - len(rows) for i in needed if i >= len(rows)})
        if cut:  # a causal model's targets for a prefix are the prefix of the row's targets (one per next token)
            replay = [(ids[:cut], *(None if t is None else t[: cut - 1] for t in (top, logp)))
                      for ids, top, logp in replay]
    return replay, warmup


def _guard_questions(base: Base, texts, n_plain: int, train_config, synth_config, cache: ExampleCache,
                     exclude_questions) -> list[str]:
    """The guard's QA rows (`train_config.guard_questions` of its rows beside `n_plain` plain ones): questions about
    its general `texts` with their answers, as the base reads a QA training example (warmup.warmup_examples, a
    seeded sample; no evaluation question among them)."""
    share = train_config.guard_questions
    if share == 0:
        return []
    examples = warmup_examples(texts, synth_config, cache, exclude_questions)
    want = min(len(examples), round(n_plain * share / (1 - share)))
    picked = random.Random(train_config.seed).sample(examples, want)
    return ["".join(answer_format(base.tokenizer, e.prompt, e.completion, None)[:2]) for e in picked]


QUIET_ROWS = 64  # the guard's rows a quiet LoRA start takes its input moments over


def _quiet_rows(base: Base, train_config, synth_config, workspace: Workspace, cache: ExampleCache,
                exclude_questions, replay) -> list[list[int]]:
    """The token id lists a quiet LoRA start (`train_config.lora_init`) takes its quiet directions from: the first
    QUIET_ROWS of the guard's `replay` rows, and for quiet-qa as many tokens again of questions and answers about
    the same general text in the memory's QA format (warmup.warmup_examples; no evaluation question among them).
    Empty for a random start."""
    if train_config.lora_init == "random":
        return []
    plain = [row[0] for row in replay[:QUIET_ROWS]]
    if train_config.lora_init == "quiet":
        return plain
    texts = replay_texts(base, train_config.replay_sequences, workspace.cache_dir("replay"), seed=train_config.seed,
                         progress=False, top_k=train_config.replay_top_k)[:QUIET_ROWS]
    qa = [ids for ids, _ in sft_rows(base.tokenizer, warmup_examples(texts, synth_config, cache, exclude_questions),
                                     train_config.max_seq_len, base.newline_id)]
    budget, rows = sum(len(ids) for ids in plain), []
    for ids in random.Random(train_config.seed).sample(qa, len(qa)):
        if budget <= 0:
            break
        rows.append(ids)
        budget -= len(ids)
    return plain + rows


_SHAPE = ("method", "objective", "rank", "alpha", "target_modules", "tinylora_u", "prefix_tokens", "memory_slots",
          "memory_topk", "memory_trainable_rows", "memory_gate", "memory_gate_contrast", "strength", "max_drift")


def full_relearn_reason(parent: MemoryVersion | None, config: LearnConfig, base: Base) -> str | None:
    """Why `learn --update` must learn from scratch, or None when it can train `parent` further."""
    if parent is None:
        return "there is no version yet"
    manifest = parent.manifest
    old = manifest["config"]["train"]
    if manifest["base"]["fingerprint"] != base.fingerprint:
        return f"the base model changed ({manifest['base']['name']} -> {base.name})"
    if old["method"] != config.train.method:
        return f"the method changed ({old['method']} -> {config.train.method})"
    if not hasattr(METHODS[config.train.method], "resume"):
        return f"{config.train.method} memories cannot be trained further yet"
    if "distill" in (old["objective"], config.train.objective):
        return "the distill objective re-learns every chunk"
    if not can_update(manifest):
        return f"{parent.ref} does not record its chunks (learned by an older inweights)"
    return None


def _update_train_config(parent: MemoryVersion, train) -> TrainConfig:
    """The update's training settings: the memory's shape (method, rank, modules...) from the parent, which is
    trained further; epochs from the parent when not set, so a new fact is seen as often as in a full learn."""
    old = LearnConfig.from_dict(parent.manifest["config"]).train
    train = replace(train, **{name: getattr(old, name) for name in _SHAPE}, seeds=1)  # the memory, trained on once
    if train.epochs is None:
        train = replace(train, epochs=old.epochs)
    return resolve_train(train, 0)


def _update(parent: MemoryVersion, records: list[dict], chunks, memory: str, config: LearnConfig, base: Base,
            workspace: Workspace, cache: ExampleCache, exclude_questions, progress: bool, timings: dict,
            t_start: float) -> MemoryVersion:
    """`learn --update`: synthesize the corpus (unchanged chunks come from the cache), then train the parent's
    memory on the fresh chunks' examples, the changed and removed facts and a rehearsal sample."""
    change = delta(parent.manifest["documents"], records)
    if change.empty:
        _say(progress, f"nothing changed since {parent.ref}: it is up to date")
        return parent
    _say(progress, f"updating {parent.ref}: {change.describe()}")
    t = time.perf_counter()
    teacher = _teacher(config.synth, base, workspace)
    current, synth_stats = synthesize(chunks, teacher, config.synth, cache, progress=progress)
    current, decontaminated = drop_eval_overlap(current, exclude_questions)
    fresh = [e for e in current if e.chunk_sha256 in change.fresh_chunks]
    fresh = within_budget(fresh, config.synth.budget, token_counter(base.tokenizer), seed=config.train.seed)
    rehearsal_pool = [e for e in current if e.chunk_sha256 not in change.fresh_chunks]
    old, missing = parent_examples(parent, change.gone_chunks, cache)
    timings["synthesize_s"] = time.perf_counter() - t
    version, _ = _train_update(parent, records, memory, config, base, workspace, cache, fresh, rehearsal_pool,
                               current, old, missing, change, exclude_questions, progress, timings, t_start,
                               {"by_strategy": synth_stats, "strategy_versions": strategy_versions(config.synth),
                                "teacher": teacher.id if teacher else "none",
                                "teacher_usage": getattr(teacher, "usage", None),
                                "dropped_matching_eval_questions": decontaminated}, mode="update")
    return version


def _train_update(parent: MemoryVersion, records: list[dict], memory: str, config: LearnConfig, base: Base,
                  workspace: Workspace, cache: ExampleCache, fresh: list, rehearsal_pool: list, current: list,
                  old: list, missing_old_chunks: int, change, exclude_questions, progress: bool, timings: dict,
                  t_start: float, synthetic: dict, mode: str) -> tuple[MemoryVersion, list]:
    """Train `parent`'s memory further on `fresh` examples, the changed and removed facts found between the
    parent's `old` examples and the `current` ones, and a rehearsal sample of `rehearsal_pool`; publish it.
    Returns the new version and the removed facts' examples."""
    t = time.perf_counter()
    train_config = _update_train_config(parent, config.train)
    old, _ = drop_eval_overlap(old, exclude_questions)  # the cache holds them as made, before decontamination
    changed, removed = contrast(old, current)
    tokenizer, max_len, end = base.tokenizer, train_config.max_seq_len, base.newline_id
    unlikely = unlikely_rows(tokenizer, changed, max_len, end)
    forget_rows = base_rows(base, removed, max_len, end, workspace.cache_dir("distill"), progress=progress)
    n_rehearse = round(train_config.rehearsal * (len(fresh) + len(unlikely) + len(forget_rows)))
    rehearse = within_budget(rehearsal_pool, n_rehearse, lambda e: 1, seed=train_config.seed)
    assert_no_leak(fresh + rehearse + removed + [o for o, _ in changed], exclude_questions)
    items = sft_rows(tokenizer, fresh + rehearse, max_len, end) + unlikely + forget_rows
    if not items:
        raise InweightsError(f"nothing to train: the change since {parent.ref} left no question to learn or unlearn")
    _say(progress, f"update data: {len(fresh)} new examples, {len(changed)} changed facts ({len(unlikely)} old "
                   f"values made unlikely), {len(removed)} removed facts, {len(rehearse)} rehearsed"
                   + (f"; {missing_old_chunks} of the parent's chunks were no longer in the synthetic cache"
                      if missing_old_chunks else ""))
    if len(items) > len(current):
        _say(progress, f"note: this change reaches most of the memory, so the update trains more rows ({len(items)}) "
                       f"than learning from scratch would ({len(current)}); `learn` without --update may be faster")
    replay, warmup = _guard_rows(base, train_config, config.synth, workspace, cache, exclude_questions, items,
                                 len(items), progress)
    timings["targets_s"] = time.perf_counter() - t
    resolved = replace(config, train=train_config)
    run_key = _digest([mode, parent.ref, resolved.to_dict(), base.fingerprint, [len(row[0]) for row in items],
                       [(e.prompt, e.completion) for e in fresh + rehearse + [o for o, _ in changed] + removed]])
    t = time.perf_counter()

    def describe(result) -> dict:
        return _manifest(memory, base, resolved, records, result, timings, t, t_start, _lineage(parent, records, mode),
                         synthetic | {"examples": len(items), "fresh": len(fresh), "rehearsed": len(rehearse),
                                      "rehearsal_pool": len(rehearsal_pool), "changed_facts": len(changed),
                                      "unlikely_rows": len(unlikely), "removed_facts": len(removed),
                                      "parent_chunks_missing_from_cache": missing_old_chunks,
                                      "replay_sequences": len(replay), "warmup_examples": len(warmup),
                                      "replay_drawn": sum(1 for row in replay if row[1] is not None),
                                      "tokens": sum(len(row[0]) for row in items)})

    version, result = train_and_publish(base, train_config, items, len(items), workspace, memory, run_key, describe,
                                        replay=replay, warmup=warmup, progress=progress, resume_from=parent)
    _say(progress, f"{mode}: {memory!r} version {version.version} from {parent.ref} in {timings['total_s']:.0f}s "
                   f"({len(items)} rows, {result.steps} steps, final loss {result.final_loss:.3f})")
    return version, removed


def forget(memory: str, paths: Sequence[str], config: LearnConfig | None = None, *, base: Base | None = None,
           workspace: Workspace | None = None, progress: bool = True, check: int = 32,
           exclude_questions: Sequence[str] = (), device: str | None = None, dtype: str | None = None
           ) -> MemoryVersion:
    """A new version of `memory` without the knowledge of the documents at `paths` (as the manifest names them,
    or any path ending with that name), made from the newest version: their questions are trained toward the
    plain base model's answers, with a rehearsal sample of the other documents (no document needs to be on
    disk: the examples come from the synthetic cache). Then `check` of the forgotten questions are asked of the
    old and the new version; the manifest's `forget_check` says how many answers still give the old value.
    `exclude_questions`: evaluation questions that must not appear in its training rows, as in `learn`."""
    workspace = workspace or Workspace()
    with workspace.lock(memory, "inweights forget"):
        parent = workspace.get(memory)
        manifest = parent.manifest
        config = config or LearnConfig.from_dict(manifest["config"])
        config = replace(config, device=device or config.device, dtype=dtype or config.dtype)
        base = base or load_base(manifest["base"]["name"], dtype=config.dtype, device=config.device)
        why = full_relearn_reason(parent, replace(config, base=manifest["base"]["name"]), base)
        if why is not None:
            raise InweightsError(f"cannot forget from {parent.ref}: {why}; learn the documents you keep again "
                                 f"instead: inweights learn DOCS --memory {memory}")
        documents = manifest["documents"]
        gone = {_match_document(documents, p) for p in paths}
        kept = [d for d in documents if d["path"] not in gone]
        if not kept:
            raise InweightsError(f"forgetting every document of {memory!r} leaves nothing: remove the memory with "
                                 f"`inweights rm {memory}`")
        cache = ExampleCache(workspace.cache_dir("synth"))
        t_start = time.perf_counter()
        current, _ = parent_examples(parent, chunk_records_of(kept), cache)
        current, _ = drop_eval_overlap(current, exclude_questions)
        change = delta(documents, kept)
        old, missing = parent_examples(parent, change.gone_chunks, cache)
        if missing:
            raise InweightsError(f"the synthetic data of {missing} chunks of {', '.join(sorted(gone))} is no longer "
                                 f"in the cache, so what to forget is unknown; learn the documents you keep again "
                                 f"instead: inweights learn DOCS --memory {memory}")
        _say(progress, f"forgetting {', '.join(sorted(gone))} from {parent.ref}")
        timings = {"synthesize_s": time.perf_counter() - t_start}
        version, removed = _train_update(parent, kept, memory, config, base, workspace, cache, [], current, current,
                                         old, 0, change, exclude_questions, progress, timings, t_start,
                                         {"teacher": manifest["synthetic"].get("teacher", "none")}, mode="forget")
        result = forget_check(base, parent, version, removed[:check], workspace) if check and removed else None
        if result:
            _amend_manifest(version, {"forget_check": result})
            _say(progress, f"forget check: {result['answered_before']} of {result['asked']} forgotten questions "
                           f"were answered with the old value before, {result['answered_after']} after")
        return version


def forget_check(base: Base, before: MemoryVersion, after: MemoryVersion, examples, workspace: Workspace) -> dict:
    """Ask the questions of `examples` of both versions: how many answers contain the example's answer."""
    from inweights.evaluate.metrics import contains

    questions = [e.prompt.removeprefix("Question: ").split("\n")[0] for e in examples]
    counts = {}
    for label, version in (("answered_before", before), ("answered_after", after)):
        loaded = load_memory(version.ref, base=base, workspace=workspace)
        try:
            answers = loaded.answer(questions)
        finally:
            loaded.close()
        counts[label] = int(sum(contains(a, e.completion.strip()) for e, a in zip(examples, answers)))
    return {"asked": len(examples), **counts}


def _match_document(documents: list[dict], path: str) -> str:
    """The manifest path of the one document `path` names: the same path, or a path one of them ends with."""
    path = str(path).strip().removeprefix("./")
    exact = [d["path"] for d in documents if d["path"] == path]
    if exact:
        return exact[0]
    near = [d["path"] for d in documents if path.endswith("/" + d["path"]) or d["path"].endswith("/" + path)]
    if len(near) == 1:
        return near[0]
    names = ", ".join(d["path"] for d in documents[:20])
    raise InweightsError(f"{path!r} names {'several' if near else 'no'} document of this memory "
                         f"({', '.join(near) if near else 'documents: ' + names})")


def _amend_manifest(version: MemoryVersion, extra: dict) -> None:
    """Add facts measured after publishing (a check, an evaluation) to a version's manifest, atomically."""
    write_atomic(version.path / MANIFEST, json.dumps(version.manifest | extra, indent=2, ensure_ascii=False))


@dataclass
class LoadedMemory:
    """A base model with one memory attached, ready to answer. `base_answers` answers without the memory."""

    base: Base
    model: torch.nn.Module
    version: MemoryVersion | None

    def answer(self, questions: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
        prompts = [render(self.base.tokenizer, qa_prompt(q)) for q in questions]
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


def load_memory(ref: str | None, *, base: Base | None = None, workspace: Workspace | None = None,
                device: str = "auto", dtype: str = "auto") -> LoadedMemory:
    """Attach memory `ref` ('name' or 'name@N'; None for the plain base model) to its base model (loaded on
    `device` in `dtype` unless `base` is given)."""
    workspace = workspace or Workspace()
    if ref is None:
        base = base or load_base(dtype=dtype, device=device)
        return LoadedMemory(base, base.model, None)
    version = workspace.get(ref)
    manifest = version.manifest
    base = base or load_base(manifest["base"]["name"], dtype=dtype, device=device)
    if base.fingerprint != manifest["base"]["fingerprint"]:
        raise InweightsError(f"memory {version.ref} was trained on base {manifest['base']['fingerprint']}, but "
                             f"the loaded base is {base.fingerprint}; its memory would not fit")
    model = METHODS[manifest["method"]].load(base.model, version.path)
    return LoadedMemory(base, model, version)


def ask(ref: str | None, question: str, *, base: Base | None = None, workspace: Workspace | None = None,
        max_new_tokens: int = 32, device: str = "auto", dtype: str = "auto") -> str:
    """Answer one question from the memory's weights alone (no document in the prompt); None: base model."""
    loaded = load_memory(ref, base=base, workspace=workspace, device=device, dtype=dtype)
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
    train, replay_cache = config.train, workspace.cache_dir("replay")
    texts = cached_texts(base, train.replay_sequences, replay_cache, seed=train.seed, top_k=train.replay_top_k)
    guard = (texts is not None, cached_rows(base, texts, replay_cache, train.max_seq_len) if texts else 0)
    return make_plan(documents, chunks, config, base.tokenizer, base.fingerprint, workspace, sample, guard)


def _budget_for_an_hour(plan: Plan) -> int:
    """A --budget that brings the plan's training under the confirmation threshold (two significant digits)."""
    per_token = plan.train_seconds / max(plan.synthetic_tokens, 1)
    budget = max(1000, int((0.9 * CONFIRM_ABOVE_S - plan.fixed_seconds) / max(per_token, 1e-9)))
    magnitude = 10 ** max(len(str(budget)) - 2, 0)
    return budget // magnitude * magnitude


def _teacher(synth_config, base: Base, workspace: Workspace):
    """The teacher the strategies need (None when every strategy is LLM-free)."""
    if not any(_strategy(s).NEEDS_TEACHER for s in synth_config.strategies):
        return None
    return make_teacher(synth_config, base, workspace.cache_dir("teacher"))


def _strategy(name: str):
    from inweights.synth import STRATEGIES

    return STRATEGIES[name]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
