"""Synthetic training data: strategies turn a chunk into (prompt, completion) examples; results are cached.

A strategy is a module with `NAME`, `VERSION`, `NEEDS_TEACHER` and `make(chunk, teacher, config, stats)`; one
with settings of its own lists them in `SETTINGS` (they join its cache key).
Adding one means writing that module and adding it to `STRATEGIES` below.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from inweights.prompt import qa_prompt
from inweights.store import write_atomic


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    strategy: str
    chunk_sha256: str
    doc_path: str
    doc_sha256: str
    teacher: str  # "none" for LLM-free strategies


def passing(items, reason, key, stats) -> list:
    """The items that `reason(item)` lets through (None) and whose `key(item)` was not kept already; each drop is
    counted in `stats` as dropped_<reason> (dropped_duplicate for a repeat). The filter every strategy uses."""
    kept, seen = [], set()
    for item in items:
        why = reason(item)
        if why is None and key(item) in seen:
            why = "duplicate"
        if why:
            stats[f"dropped_{why}"] += 1
            continue
        seen.add(key(item))
        kept.append(item)
    return kept


def qa_example(question: str, answer: str, chunk, strategy: str, teacher: str) -> Example:
    return Example(qa_prompt(question), " " + answer.strip(), strategy,
                   chunk.sha256, chunk.doc_path, chunk.doc_sha256, teacher)


def _strategies():
    from inweights.synth import active_reading, cloze, entigraph, facts, implications, qa, rephrase, selfstudy

    return {m.NAME: m for m in (cloze, facts, qa, rephrase, selfstudy, entigraph, active_reading, implications)}


class _Registry(dict):
    """Lazy so that `config` can validate names without importing every strategy at import time."""

    def _fill(self):
        if not super().__len__():
            self.update(_strategies())

    def __contains__(self, key):
        self._fill()
        return super().__contains__(key)

    def __getitem__(self, key):
        self._fill()
        return super().__getitem__(key)

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __len__(self):
        self._fill()
        return super().__len__()


STRATEGIES = _Registry()


def strategy_versions(config) -> dict[str, int]:
    """The version of each strategy a SynthConfig runs: what its examples were made by (manifests record it)."""
    return {name: STRATEGIES[name].VERSION for name in config.strategies}


# Settings that do not change what a strategy makes (the teacher's URL and model are in its id).
_NOT_IN_KEY = ("strategies", "teacher_batch_size", "budget", "teacher", "teacher_model", "teacher_concurrency",
               "teacher_timeout", "teacher_deadline", "teacher_key_env")


# Settings of one strategy each, in its key only (so adding one keeps every other strategy's cache).
_STRATEGY_ONLY = ("entity_pairs", "entity_triples", "study_strategies")


class ExampleCache:
    """Examples keyed by (strategy, its version, chunk hash, teacher, settings): a rerun or a resumed run
    regenerates only what is missing. One JSONL file per key, written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def key(self, strategy, chunk, teacher_id: str, config) -> str:
        own = getattr(strategy, "SETTINGS", ())
        settings = {k: v for k, v in asdict(config).items()
                    if k not in _NOT_IN_KEY and (k not in _STRATEGY_ONLY or k in own)}
        raw = json.dumps([strategy.NAME, strategy.VERSION, chunk.sha256, chunk.doc_path, chunk.doc_sha256,
                          teacher_id if strategy.NEEDS_TEACHER else "none", settings], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.jsonl"

    def get(self, key: str) -> tuple[list[Example], dict] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            stats = json.loads(lines[0])["stats"]
            return [Example(**json.loads(line)) for line in lines[1:]], stats
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # a damaged entry is simply regenerated

    def put(self, key: str, examples: list[Example], stats: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"stats": stats})] + [json.dumps(asdict(e), ensure_ascii=False) for e in examples]
        write_atomic(path, "\n".join(lines) + "\n")


def synthesize(chunks: Sequence, teacher, config, cache: ExampleCache, progress: bool = True
               ) -> tuple[list[Example], dict]:
    """Run every configured strategy on every chunk (from the cache where possible).

    Returns the examples (de-duplicated across strategies and chunks) and statistics: per strategy, how many
    were made, kept and dropped for each reason, and how many chunks came from the cache.
    """
    examples: list[Example] = []
    stats: dict[str, Counter] = {}
    teacher_id = teacher.id if teacher is not None else "none"
    jobs = [(STRATEGIES[name], chunk) for name in config.strategies for chunk in chunks]
    bar = tqdm(jobs, desc="synthesize", unit="chunk", disable=not progress)
    for strategy, chunk in bar:
        bar.set_postfix_str(strategy.NAME)
        counter = stats.setdefault(strategy.NAME, Counter())
        key = cache.key(strategy, chunk, teacher_id, config)
        cached = cache.get(key)
        if cached is None:
            if strategy.NEEDS_TEACHER and teacher is None:
                raise ValueError(f"strategy {strategy.NAME!r} needs a teacher")
            made_stats: Counter = Counter()
            made = strategy.make(chunk, teacher, config, made_stats)
            cache.put(key, made, dict(made_stats))
            cached = (made, dict(made_stats))
        else:
            counter["chunks_from_cache"] += 1
        counter.update(cached[1])
        examples.extend(cached[0])
    unique, seen = [], set()
    for example in examples:
        ident = (example.prompt, example.completion)
        if ident in seen:
            stats[example.strategy.split(":")[0]]["dropped_duplicate_across_chunks"] += 1
            continue
        seen.add(ident)
        unique.append(example)
    for name, counter in stats.items():
        counter["examples"] = sum(1 for e in unique if e.strategy.split(":")[0] == name)
    return unique, {name: dict(c) for name, c in stats.items()}


def diversity(examples: Sequence[Example], orders: Sequence[int] = (1, 2, 3)) -> dict:
    """How varied the training text is: for n in `orders`, distinct n-grams over all n-grams (lowercased words of
    prompt and completion; 1.0 means no n-gram repeats), and the examples of each kind (strategy tag)."""
    out: dict = {}
    words = [(e.prompt + " " + e.completion).lower().split() for e in examples]
    for n in orders:
        grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
        out[f"distinct_{n}"] = round(len(set(grams)) / len(grams), 4) if grams else 0.0
    out["by_kind"] = dict(sorted(Counter(e.strategy for e in examples).items()))
    return out


def _facts_of(examples: Sequence[Example]) -> dict[tuple[str, str], list[int]]:
    """Question examples grouped by fact: the same answer from the same chunk, however it is asked."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(examples):
        if example.prompt.startswith("Question:"):
            groups.setdefault((example.chunk_sha256, example.completion.strip()), []).append(i)
    return groups


def items_per_fact(examples: Sequence[Example]) -> float | None:
    """How many question examples each fact has on average (None when there are none)."""
    groups = _facts_of(examples)
    return sum(map(len, groups.values())) / len(groups) if groups else None


def hold_out_wordings(examples: Sequence[Example], share: float, seed: int = 0
                      ) -> tuple[list[Example], list[Example]]:
    """(kept, held out): for a seeded `share` of the facts asked in two or more ways, one of their questions
    leaves the training set. Its loss tells whether the memory answers a wording it never saw."""
    rng = random.Random(seed)
    held: set[int] = set()
    for _, members in sorted(_facts_of(examples).items()):
        if len(members) >= 2 and rng.random() < share:
            held.add(rng.choice(members))
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def token_counter(tokenizer):
    """A function giving an example's token count (prompt + completion, no special tokens)."""
    def count(example: Example) -> int:
        return len(tokenizer(example.prompt + example.completion, add_special_tokens=False)["input_ids"])

    return count


def within_budget(examples: Sequence[Example], budget: int | None, count_tokens, seed: int = 0) -> list[Example]:
    """At most `budget` tokens (prompt + completion, by `count_tokens(example)`) of examples, taken in a seeded
    round-robin over (chunk, kind) groups so that every chunk and every seed type is represented before any
    gets a second helping. None: all of them."""
    if budget is None:
        return list(examples)
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[Example]] = {}
    for example in examples:
        groups.setdefault((example.chunk_sha256, example.strategy), []).append(example)
    queues = [rng.sample(group, len(group)) for _, group in sorted(groups.items())]
    rng.shuffle(queues)
    chosen, spent = [], 0
    while queues and spent < budget:
        for queue in list(queues):
            example = queue.pop()
            chosen.append(example)
            spent += count_tokens(example)
            if not queue:
                queues.remove(queue)
            if spent >= budget:
                break
    return chosen


def _leaks(example: Example, needles: dict[str, str]) -> str | None:
    from inweights.synth.text import normalize

    haystack = normalize(example.prompt + " " + example.completion)
    return next((question for needle, question in needles.items() if needle in haystack), None)


def _needles(questions: Sequence[str]) -> dict[str, str]:
    from inweights.synth.text import normalize

    return {normalize(q): q for q in questions if len(normalize(q).split()) >= 3}


def drop_eval_overlap(examples: Sequence[Example], questions: Sequence[str]) -> tuple[list[Example], int]:
    """Decontamination: remove examples whose text contains an evaluation question.

    An LLM-free echo question made from a sentence can coincide with a benchmark question that was written
    from the same sentence (SQuAD's often are); training on it would score a question seen in training.
    """
    needles = _needles(questions)
    kept = [e for e in examples if _leaks(e, needles) is None]
    return kept, len(examples) - len(kept)


def assert_no_leak(examples: Sequence[Example], questions: Sequence[str]) -> None:
    """Fail loudly if any evaluation question text appears in the training data (prompt or completion)."""
    needles = _needles(questions)
    for example in examples:
        question = _leaks(example, needles)
        if question is not None:
            raise AssertionError(f"evaluation question leaked into training data: {question!r}")
