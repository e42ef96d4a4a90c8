"""What `learn` is about to do, said before it does it: documents, words, chunks, the synthetic tokens it will
make and how long training will take on this machine. A job estimated past an hour stops and asks for
`--budget` (fewer synthetic tokens) or `--yes` (go ahead), so a 33 MB file never trains for days unannounced.

Estimates come from measurements, not guesses:
- synthetic tokens: the LLM-free strategies run on an even sample of chunks, and their tokens per source word
  are scaled to the whole corpus; teacher strategies use
  their module's `TOKENS_PER_WORD`, measured on the demo and SQuAD;
- training speed: the tokens/s of the newest memory trained here on the same base with the same method (every
  manifest records it), else the method's rate measured on gemma-3-270m on the 2-core CPU of this project;
- the forgetting guard's one-time work (its general text unless written or shipped, and the base model's targets
  for the rows the run is expected to draw that no earlier run cached): its per-sample and per-row seconds on
  that CPU (guard.py), scaled by how much faster than there training runs here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from inweights.config import LearnConfig, resolve_train

CONFIRM_ABOVE_S = 3600.0
"""Estimated seconds of synthesis + training above which `learn` stops and asks for --budget or --yes."""
SAMPLE_CHUNKS = 8
"""Chunks synthesized ahead of time to measure the LLM-free strategies' tokens per word."""
DEFAULT_TOKENS_PER_S = {"lora": 105.0, "tinylora": 100.0, "full": 90.0, "cartridge": 110.0, "memory_layer": 150.0}
"""Training tokens/s of each method on gemma-3-270m, fp32, 2 CPU cores (the demo and the plane's learn runs)."""
SYNTH_WORDS_PER_S = 800.0
"""Source words per second an LLM-free strategy gets through (facts: about 900 on SQuAD with spaCy, 2 cores)."""
DRIFT_SECONDS = 60.0
"""Seconds to score the drift probe once (drift.py) with the embedded model on 2 CPU cores (51-58 measured)."""
TEACHER_WORDS_PER_S = 2.0
"""Source words per second when the local 270M base writes qa/rephrase data (README: ~9 minutes for 1.1k words)."""


@dataclass(frozen=True)
class Plan:
    documents: int
    words: int
    chunks: int
    synthetic_tokens: int
    examples: int
    epochs: int
    train_tokens: int
    tokens_per_s: float
    speed_source: str
    synth_seconds: float
    train_seconds: float
    guard_seconds: float = 0.0
    """Writing the forgetting guard's general text and its targets for the rows the run draws, where not cached."""
    seeds: int = 1
    """Memories trained on the same data and averaged (TrainConfig.seeds)."""
    drift_seconds: float = 0.0
    """Choosing the strength within the drift budget (TrainConfig.max_drift): up to 4 scorings of the probe."""

    @property
    def seconds(self) -> float:
        return self.fixed_seconds + self.train_seconds

    @property
    def fixed_seconds(self) -> float:
        """What --budget does not shorten: synthesis, the guard's one-time work and the strength's choice."""
        return self.synth_seconds + self.guard_seconds + self.drift_seconds

    def render(self) -> str:
        return (f"plan: {self.documents:,} documents, {self.words:,} words, {self.chunks:,} chunks -> about "
                f"{self.synthetic_tokens:,} synthetic tokens ({self.examples:,} examples), {self.epochs} epochs"
                f"{f' x {self.seeds} seeds' if self.seeds > 1 else ''} = "
                f"{self.train_tokens:,} training tokens\n"
                f"      estimated time: synthesis {duration(self.synth_seconds)}, training "
                f"{duration(self.train_seconds)} at {self.tokens_per_s:.0f} tokens/s ({self.speed_source})"
                + (f", forgetting guard {duration(self.guard_seconds)} (once per base model)"
                   if self.guard_seconds >= 1 else "")
                + (f", strength within the drift budget up to {duration(self.drift_seconds)}"
                   if self.drift_seconds >= 1 else ""))


def make_plan(documents: Sequence, chunks: Sequence, config: LearnConfig, tokenizer, fingerprint: str,
              workspace, sample: Sequence | None = None, guard_cache: tuple[bool, int] = (True, 0)) -> Plan:
    """The plan for learning `chunks` with `config`. `sample`: (examples, chunks) already synthesized by the
    LLM-free strategies on a sample of the chunks (see `sample_chunks`). `guard_cache`: whether the forgetting guard's
    general text is already written (cached or shipped) and how many of its rows have cached targets."""
    from inweights.synth import STRATEGIES, items_per_fact, token_counter

    words = sum(len(d.text.split()) for d in documents)
    tokens = 0.0
    examples = 0.0
    synth_seconds = 0.0
    count_tokens = token_counter(tokenizer)
    sample_examples, sampled = sample if sample is not None else ((), ())
    sample_words = sum(len(c.text.split()) for c in sampled) or 1
    for name in config.synth.strategies:
        strategy = STRATEGIES[name]
        if strategy.NEEDS_TEACHER:
            tokens += strategy.TOKENS_PER_WORD * words
            examples += strategy.TOKENS_PER_WORD * words / 40  # teacher items are ~40 tokens each
            synth_seconds += words / TEACHER_WORDS_PER_S
        else:
            mine = [e for e in sample_examples if e.strategy.split(":")[0] == name]
            made = sum(map(count_tokens, mine))
            tokens += made / sample_words * words
            examples += len(mine) / sample_words * words
            synth_seconds += words / SYNTH_WORDS_PER_S
    if config.synth.budget is not None and tokens > config.synth.budget:
        examples *= config.synth.budget / tokens
        tokens = float(config.synth.budget)
    per_fact = items_per_fact(list(sample_examples)) if sample_examples else None
    train = resolve_train(config.train, max(int(examples), 1), per_fact)
    guard = 1.0 / (1.0 - train.replay_fraction - train.warmup_fraction)
    train_tokens = int(tokens * train.epochs * guard * train.seeds)
    speed, source = _measured_speed(workspace, fingerprint, train.method)
    faster = DEFAULT_TOKENS_PER_S.get(train.method, 100.0) / speed  # as much faster as training is here
    return Plan(documents=len(documents), words=words, chunks=len(chunks), synthetic_tokens=int(tokens),
                examples=int(examples), epochs=train.epochs, seeds=train.seeds, train_tokens=train_tokens,
                tokens_per_s=speed, speed_source=source, synth_seconds=synth_seconds, train_seconds=train_tokens / speed,
                guard_seconds=guard_seconds(train, examples, *guard_cache) * faster,
                drift_seconds=(4 * DRIFT_SECONDS if train.max_drift else 0.0) * faster)


def guard_seconds(train, examples: float, texts_written: bool, rows_cached: int) -> float:
    """The forgetting guard's one-time work for a run of `examples` examples: its general text unless written,
    and targets for the rows the run is expected to draw (draws with replacement) that are not cached yet."""
    from inweights.guard import TARGET_SECONDS, TEXT_SECONDS

    n = train.replay_sequences
    if n <= 0 or (train.replay_fraction <= 0 and train.warmup_fraction <= 0):
        return 0.0
    seconds = 0.0 if texts_written else n * TEXT_SECONDS
    if train.replay_fraction > 0:
        shares = 1.0 - train.replay_fraction - train.warmup_fraction
        draws = round(examples * train.replay_fraction / shares) * train.epochs * train.seeds
        distinct = n * (1.0 - (1.0 - 1.0 / n) ** draws)
        seconds += distinct * (1.0 - min(rows_cached, n) / n) * TARGET_SECONDS
    return seconds


class ReadOnlyCache:
    """A synthesis cache that reads what earlier runs left and keeps nothing new."""

    def __init__(self, cache):
        self.cache = cache

    def key(self, *args) -> str:
        return self.cache.key(*args)

    def get(self, key: str):
        return self.cache.get(key)

    def put(self, key: str, examples, stats) -> None:
        pass


def sample_chunks(chunks: Sequence, n: int = SAMPLE_CHUNKS, seed: int = 0) -> list:
    """An even, seeded sample of the chunks (all of them when there are few)."""
    if len(chunks) <= n:
        return list(chunks)
    return sorted(random.Random(seed).sample(list(chunks), n), key=lambda c: (c.doc_path, c.index))


def llm_free(config: LearnConfig):
    """The SynthConfig with only its LLM-free strategies (what the plan samples); None when it has none."""
    from inweights.synth import STRATEGIES

    names = tuple(s for s in config.synth.strategies if not STRATEGIES[s].NEEDS_TEACHER)
    return replace(config.synth, strategies=names) if names else None


def _measured_speed(workspace, fingerprint: str, method: str) -> tuple[float, str]:
    newest = None
    for name in workspace.memories():
        for version in workspace.versions(name):
            try:
                manifest = version.manifest
            except (OSError, ValueError):
                continue
            if manifest.get("base", {}).get("fingerprint") != fingerprint or manifest.get("method") != method:
                continue
            speed = manifest.get("training", {}).get("tokens_per_s")
            if speed and (newest is None or manifest.get("created", "") > newest[2]):
                newest = (float(speed), version.ref, manifest.get("created", ""))
    if newest:
        return newest[0], f"measured when {newest[1]} was trained"
    return DEFAULT_TOKENS_PER_S.get(method, 100.0), f"{method} on gemma-3-270m, 2 CPU cores"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
