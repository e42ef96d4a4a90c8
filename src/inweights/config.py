"""Typed configs: the one place for defaults. The CLI mirrors these fields; every memory records them.

`None` in a field means "derive it" (epochs from the corpus, the learning rate from the method);
`resolve_train()` fills those in and the manifest records the resolved values, so a memory always says
exactly what made it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

LORA_INITS = ("random", "quiet", "quiet-qa")  # TrainConfig.lora_init


@dataclass
class SynthConfig:
    """How synthetic training data is made from the chunks."""

    strategies: tuple[str, ...] = ("facts",)
    """Strategies to run, by name: facts, cloze and selfstudy (LLM-free; facts: natural questions from spaCy's
    parse, several wordings per fact; cloze: fill-in-the-blank and echo questions on regex spans; selfstudy:
    seed prompts of seven kinds per sentence and entity, sized by --budget), qa and rephrase (written by the
    teacher: the base model, or a remote one with --teacher), and entigraph, active_reading and implications
    (free text from a teacher, for a strong remote one: how entities relate; self-chosen study strategies;
    SEAL's implications and rewrites).
    The teacher strategies are off by default: with the embedded 270M model as teacher they cost minutes per
    chunk and few of their outputs survive the filters (see README)."""
    budget: int | None = None
    """Synthetic tokens (prompt + completion) to train on, taken evenly across chunks and seed types from
    what the strategies make; None: all of it. The selfstudy strategy makes far more than a small budget
    needs, so with it the training set grows with the budget."""
    chunk_tokens: int = 256
    """Maximum tokens in one chunk of a document."""
    statements: bool = False
    """The cloze strategy also trains on each sentence as plain text. Off by default: on the demo it
    lowered held-out accuracy (25% vs 37.5%) and doubled training time."""
    views: bool = False
    """The facts strategy also trains on each sentence as plain text (pronouns resolved), in other orders, and on
    each chunk's sentences shuffled: the same facts in more forms. Off by default: on SQuAD (tuning passages)
    it raised exact match from 23.8 to 32.5 but WikiText-2 perplexity from +46% to +120%."""
    facts_per_sentence: int = 4
    """Facts (answer spans) taken from each sentence: by cloze, dates, names and numbers; by facts, the clause's
    subject, objects, time and place first, then entities nested deeper."""
    questions_per_fact: int = 2
    """Questions the teacher writes for each fact (sampled, so they differ)."""
    rephrases_per_sentence: int = 2
    """Paraphrases the teacher writes for each sentence (implications: lists of implications and rewrites per
    chunk)."""
    entity_pairs: int = 8
    """entigraph: entity pairs per chunk whose relation the teacher writes (pairs sharing a sentence first)."""
    entity_triples: int = 2
    """entigraph: entity triples per chunk."""
    study_strategies: int = 3
    """active_reading: study strategies the teacher proposes for each chunk, then applies to it."""
    temperature: float = 0.8
    """Sampling temperature of the teacher."""
    teacher_batch_size: int = 16
    """Rows per generation batch."""
    teacher_seed: int = 0
    """Seed of the teacher's sampling."""
    teacher: str | None = None
    """OpenAI-compatible base URL of a remote teacher (vLLM, llama.cpp, Ollama, a hosted API, `inweights serve`),
    for example http://localhost:8000/v1; None: the base model itself, run locally. Its key is read from the
    environment variable named by teacher_key_env."""
    teacher_model: str | None = None
    """The model name the remote teacher serves."""
    teacher_concurrency: int = 4
    """Requests in flight at once to the remote teacher."""
    teacher_timeout: float = 120.0
    """Seconds one request to the remote teacher may take before it is retried."""
    teacher_deadline: float = 600.0
    """Seconds of retrying (429, 5xx, timeouts, broken replies) after which a request fails and learn stops."""
    teacher_key_env: str = "INWEIGHTS_TEACHER_API_KEY"
    """Environment variable holding the remote teacher's API key (never given on the command line)."""

    def __post_init__(self):
        from inweights.synth import STRATEGIES

        self.strategies = tuple(self.strategies)
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
        for name in ("chunk_tokens", "facts_per_sentence", "questions_per_fact", "teacher_batch_size", "study_strategies"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.budget is not None and self.budget < 1:
            raise ValueError("budget must be at least 1 token")
        if self.rephrases_per_sentence < 0:
            raise ValueError("rephrases_per_sentence must be >= 0")
        if self.teacher_concurrency < 1 or self.teacher_timeout <= 0 or self.teacher_deadline <= 0:
            raise ValueError("teacher_concurrency must be >= 1 and teacher_timeout, teacher_deadline > 0")
        if self.teacher and not self.teacher_model:
            raise ValueError("a remote teacher (--teacher URL) needs --teacher-model NAME")


@dataclass
class TrainConfig:
    """How the memory is trained on the synthetic examples."""

    method: str = "lora"
    """Parameterization of the memory: lora, tinylora, full (fine-tune every block weight), cartridge (a trained
    KV prefix) or memory_layer (a sparse key-value memory beside one MLP). Only lora memories can be served
    by `inweights serve` and vLLM."""
    objective: str = "sft"
    """sft: next-token loss on the completions. distill: context distillation, the student matches the base
    model that has the source chunk in its context (KL over its top-32 next tokens, computed once, cached)."""
    rank: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    dropout: float = 0.0
    """LoRA: dropout on each adapter's input while training (PEFT's lora_dropout); the memory served has none.
    0.1 on the SQuAD tuning passages stayed on (or below) the line `strength` gives (docs/benchmarks.md)."""
    target_modules: tuple[str, ...] = ()
    """Linear layers that get a LoRA (or TinyLoRA) update, as module-name suffixes (e.g. q_proj,v_proj); empty:
    found by architecture, every linear layer inside the decoder layers (attention and MLP, not the embedding or
    the output head) of whatever family the base is."""
    layers: tuple[int, ...] = ()
    """The decoder layers (0 = nearest the input) that get the memory. lora: any set, empty for every layer;
    memory_layer: one layer, empty for the middle one; not for the other methods."""
    lora_init: str = "random"
    """LoRA: how the A factors start. random: PEFT's (Kaiming-uniform). quiet: random mixes of the input
    directions the guard's general text uses least (the lower half of each layer's input second moment's
    eigenvectors, methods/lora.init_quiet), so that the update reads mostly what general text leaves quiet.
    quiet-qa: the same over that text and, as many tokens again, questions and answers about it in the memory's
    own QA format (the warm-up's, warmup.py), so that what is left quiet is quiet for questions too. Both need
    the guard (replay_fraction > 0). On the SQuAD passages quiet cost ARC-Easy and BoolQ 5 points or more, and
    quiet-qa lay 3.7 points of p(gold) above the random start's strength line on the tuning half but on it on the
    confirmation half (docs/benchmarks.md): not the default."""
    tinylora_u: int = 64
    """tinylora: trainable numbers per adapted layer."""
    prefix_tokens: int = 128
    """cartridge: number of trainable key/value positions per layer (initialised from the corpus's first tokens)."""
    memory_slots: int = 65536
    """memory_layer: key/value rows of the sparse memory added beside one mid-depth MLP."""
    memory_topk: int = 32
    """memory_layer: rows each token reads."""
    memory_trainable_rows: int = 2048
    """memory_layer: rows trained, those read most specifically by the new data (TF-IDF against general text)."""
    memory_gate: float = 0.0
    """memory_layer: a read of a trained row counts only where the query is at least as close to that row's
    training queries (their mean direction) as this quantile of the training's own reads; 0 (default) is off."""
    memory_gate_contrast: float = 0.0
    """memory_layer: also cut each trained row's reads where the guard's general text reads it (below that text's
    cosines to the row), so that at most this share of the training's reads is dropped; with memory_gate too, the
    higher cut counts. Needs the guard (replay_fraction > 0); 0 (default) is off."""
    lr: float | None = None
    """Peak learning rate (AdamW, linear warm-up then cosine decay); None: the method's own default (LoRA 5e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the memory's parameters. For LoRA, 4 on the SQuAD passages gave an update of 76% of
    the norm that was on the strength line on the tuning half and below it on the confirmation half
    (docs/benchmarks.md), so `strength` is the better way to trade learning for forgetting."""
    epochs: int | None = None
    """Passes over the synthetic examples; None derives it from the corpus size."""
    max_steps: int | None = None
    """Hard cap on optimizer steps (overrides epochs when smaller)."""
    batch_tokens: int = 1024
    """Token budget of one batch; examples of similar length are bucketed together to avoid padding."""
    max_seq_len: int = 256
    replay_fraction: float = 0.2
    """Forgetting guard: share of the training sequences that are general text sampled from the base model
    itself, trained toward the base model's own next-token distribution (KL over its top-k). 0 turns it off."""
    replay_sequences: int = 1024
    """General-text samples generated once per base model and cached (about 22 minutes on 2 CPU cores; the
    embedded model's ship with the package). 1,024 rather than 64 forgot less and learned as much or more on
    both SQuAD carry-over sets (WikiText-2 +35.7% vs +46.0% and +43.1% vs +57.7%; docs/benchmarks.md)."""
    guard_questions: float = 0.0
    """The share of the guard's rows that are questions about its general text with their answers, in the memory's
    QA format (the warm-up's, warmup.py), held to the base model's distribution like the plain text: so that a
    question about something the memory was not taught is answered as the base answered it. 0: plain text only.
    0.5 on the SQuAD tuning passages fell 2 points of p(gold) below the strength line, TriviaQA as low as without
    (docs/benchmarks.md)."""
    replay_top_k: int = 50
    """The guard's general-text samples are drawn from the base model's top this-many next tokens (0: from its
    whole distribution, which keeps the rarer tokens that real text has). The shipped samples are top 50; another
    value writes its own once. 0 did worse on the SQuAD tuning passages (51% of the gap at +11.2% WikiText-2
    against 60% at +10.0%): the untruncated samples are noisier text."""
    replay_tokens: int = 0
    """The guard's rows cut to their first this-many tokens (0: whole, about 65 tokens): a larger guard share at a
    lower cost per step. Targets are the same prefixes of the cached ones (causal), so no new ones are needed."""
    kl_tail: bool = True
    """Soft targets (the guard; context distillation): the KL divergence over the teacher's top-k tokens plus one
    bucket for the rest of the vocabulary (True), or over the top-k renormalised (False, the form before). The
    renormalised form is lowest when the student moves the tail's probability onto the teacher's top k, so it
    rewards the sharpening it should prevent; with the bucket the student must keep the teacher's tail mass
    too. On the SQuAD tuning passages: WikiText-2 +10.0% instead of +35.7%, the same EM (docs/benchmarks.md)."""
    anchor: float = 0.0
    """LoRA only: weight of the activation anchor, a penalty on the change each LoRA layer makes to its output on
    the guard's general text, relative to that output (anchor.py); it needs the guard's text (replay_fraction >
    0). 0 turns it off."""
    strength: float = 1.0
    """LoRA and memory_layer: the saved memory is its trained update times this (LoRA: its alpha times strength,
    so vLLM and `inweights serve` serve it as saved; memory_layer: its value rows). Below 1 it gives back part of
    what the memory learned for less change elsewhere, a smooth trade: on the SQuAD tuning passages 0.7 kept 42%
    of the closed-book -> in-context gap instead of 60% at +4.9% WikiText-2 perplexity instead of +10.0%; on
    passages 25-48, 61% instead of 94% at +6.4% instead of +13.4% (+4.7% instead of +10.2% over 16,384 tokens;
    a second seed: 67% instead of 61% at +5.6% instead of +12.2%; benchmarks/strength.py, docs/benchmarks.md)."""
    max_drift: float = 0.0
    """LoRA and memory_layer: after training, scale the update down (from `strength`) until the drift probe's
    perplexity rises by at most this many percent (drift.py: general text the base model wrote that no run trains
    on; about a minute a measurement, at most 4); an update keeps its parent's budget. 0: no budget, the memory is
    saved at `strength`. WikiText-2 moved about 3 times as much as the probe on one seed's SQuAD memories (2.3 to 4),
    less with `seeds` > 1; 1.6 kept three seeds on SQuAD passages 25-48 at +3.4% to +4.8% and 39% to 61% of the
    closed-book -> in-context gap (benchmarks/drift_probe.py, docs/benchmarks.md)."""
    seeds: int = 1
    """LoRA: train this many memories on the same data, with seeds seed, seed + 1, ..., and save the mean of their
    updates as one LoRA of their summed rank (a model soup; `learn` takes as many times as long). What the seeds
    learn in common stays and what is particular to one seed is halved. On the SQuAD passages 25-48 at strength
    1 / 0.85 / 0.7, seeds=2 kept 72% / 78% / 56% of the closed-book -> in-context gap at +8.8% / +6.2% / +4.1%
    WikiText-2 perplexity, against one seed's 94% / 83% / 61% at +10.2% / +7.1% / +4.7% (seed 0) and 61% / 72% /
    67% at +12.2% / +8.5% / +5.6% (seed 1): less forgetting at every strength, learning within the seeds' spread
    (docs/benchmarks.md)."""
    warmup_fraction: float = 0.0
    """QA warm-up: share of the training sequences that are questions and answers about other text (the facts
    strategy run over the guard's general-text samples of the base model, never an evaluation set), which
    trains the skill of answering from what is stored rather than the documents' facts. 0 turns it off."""
    checkpoint_every: int = 25
    """Steps between resumable checkpoints (and between measurements of the held-out loss)."""
    holdout: float = 0.0
    """Early stopping on held-out wordings: this share of the facts that are asked in two or more ways has one
    of its questions kept out of training; their loss is measured every checkpoint_every steps, training stops
    once it has not improved for `patience` measurements, and the best weights are kept. 0 turns it off."""
    patience: int = 2
    """Measurements of the held-out loss without improvement before training stops (with holdout)."""
    exposures: int | None = None
    """Target number of times each fact is trained on, over all its wordings and epochs: when set (and epochs is
    not), epochs = exposures / the items per fact the strategies made (at most 30)."""
    average_last: float = 0.0
    """Tail averaging: the saved weights are the mean of the trainable weights after each of the run's last
    `average_last` share of steps (0.5: the second half), not the last step's. Each factor is averaged on its
    own, so for LoRA the saved update is mean(B) mean(A), which differs from the mean of the steps' updates B A
    by how much the factors moved together over that stretch. Not with holdout (that keeps its best step's
    weights). 0 turns it off. On the SQuAD tuning passages the second half averaged stayed on the strength line
    (within one question at 1, 0.85 and 0.7; docs/benchmarks.md): the late steps do not wander enough."""
    rehearsal: float = 0.5
    """learn --update and forget: examples of unchanged chunks trained again per example of what changed (new
    chunks, changed and removed facts), a seeded sample spread over the chunks, so that the memory keeps what it
    knew while its weights move. 0 turns it off."""
    seed: int = 0
    """Seed of initialisation, batch order and replay choice: the same seed and data give the same memory."""
    init_seed: int | None = None
    """Seed of the memory's start alone (torch's generator when the memory is attached: LoRA's A factors and
    whatever else a method draws then) where it should differ from `seed`, which then sets only the data's order
    and the guard's draws; None: `seed`. With `seeds` > 1 each memory's start is init_seed + i. A benchmark knob.
    On the SQuAD tuning passages the start is what makes two seeds' updates unlike (cosine 0.09-0.15 from another
    start in the same order, 0.47-0.62 from the same start in another order), and it alone moved the gap by 29
    points (docs/benchmarks.md)."""

    def __post_init__(self):
        from inweights.methods import METHODS

        self.target_modules = tuple(self.target_modules)
        self.layers = tuple(int(i) for i in self.layers)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {sorted(METHODS)}")
        if self.objective not in ("sft", "distill"):
            raise ValueError(f"unknown objective {self.objective!r}; choose sft or distill")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError("replay_fraction must be in [0, 1)")
        if self.replay_tokens != 0 and self.replay_tokens < 2:
            raise ValueError("replay_tokens must be 0 (whole rows) or at least 2")
        if not 0.0 <= self.warmup_fraction < 1.0 or self.replay_fraction + self.warmup_fraction >= 0.9:
            raise ValueError("warmup_fraction must be in [0, 1) and leave at least 10% of the sequences to the "
                             "documents (replay_fraction + warmup_fraction < 0.9)")
        if min(self.prefix_tokens, self.memory_slots, self.memory_topk, self.memory_trainable_rows) < 1:
            raise ValueError("prefix_tokens and the memory_* sizes must be at least 1")
        if not 0.0 <= self.memory_gate < 1.0 or (self.memory_gate and self.method != "memory_layer"):
            raise ValueError("memory_gate must be in [0, 1), and 0 for methods other than memory_layer")
        if not 0.0 <= self.memory_gate_contrast < 1.0 or (self.memory_gate_contrast and (
                self.method != "memory_layer" or not self.replay_fraction)):
            raise ValueError("memory_gate_contrast must be in [0, 1), and 0 for methods other than memory_layer "
                             "and without the guard's general text (replay_fraction 0)")
        if not 0.0 <= self.holdout < 0.5 or self.patience < 1 or (self.exposures is not None and self.exposures < 1):
            raise ValueError("need 0 <= holdout < 0.5, patience >= 1 and exposures >= 1")
        if not 0.0 <= self.average_last < 1.0 or (self.average_last and self.holdout):
            raise ValueError("average_last must be in [0, 1), and 0 with holdout (which keeps its best step instead)")
        if self.replay_top_k < 0:
            raise ValueError("replay_top_k must be >= 0 (0: sample from the whole distribution)")
        if not 0.0 <= self.guard_questions < 1.0:
            raise ValueError("guard_questions must be in [0, 1)")
        if self.rehearsal < 0:
            raise ValueError("rehearsal must be >= 0")
        if self.lora_init not in LORA_INITS or (self.lora_init != "random" and (
                self.method != "lora" or self.replay_fraction == 0)):
            raise ValueError(f"lora_init must be one of {', '.join(LORA_INITS)}, and the quiet ones need the lora "
                             "method and the guard (replay_fraction > 0)")
        if self.anchor and self.method != "lora":
            raise ValueError("anchor applies to the lora method only")
        if not 0.0 < self.strength <= 2.0 or (self.strength != 1.0 and self.method not in ("lora", "memory_layer")):
            raise ValueError("strength must be in (0, 2], and other than 1 for the lora and memory_layer methods only")
        if self.max_drift < 0 or (self.max_drift and self.method not in ("lora", "memory_layer")):
            raise ValueError("max_drift must be >= 0, and 0 for methods other than lora and memory_layer")
        if self.layers and (self.method not in ("lora", "memory_layer") or
                            (self.method == "memory_layer" and len(self.layers) > 1)):
            raise ValueError("layers: any set for the lora method, one layer for memory_layer, none for the others")
        if self.anchor < 0 or any(i < 0 for i in self.layers):
            raise ValueError("anchor and the layer numbers must be >= 0")
        if self.anchor and self.replay_fraction == 0:
            raise ValueError("the anchor is measured on the guard's general text: it needs replay_fraction > 0")
        if self.seeds < 1 or (self.seeds > 1 and self.method != "lora"):
            raise ValueError("seeds must be >= 1, and above 1 for the lora method only")
        if not 0.0 <= self.dropout < 1.0 or (self.dropout and self.method != "lora"):
            raise ValueError("dropout must be in [0, 1), and 0 for methods other than lora")
        if self.rank < 1 or (self.lr is not None and self.lr <= 0) or self.batch_tokens < self.max_seq_len:
            raise ValueError("need rank >= 1, lr > 0 and batch_tokens >= max_seq_len")

    @property
    def peak_lr(self) -> float:
        """`lr`, or the method's own default when it is None."""
        from inweights.methods import METHODS

        return self.lr if self.lr is not None else METHODS[self.method].default_lr


@dataclass
class LearnConfig:
    """Everything `learn` needs besides the corpus and the memory name."""

    base: str = "gemma-3-270m"
    """Base model: the embedded default, a local Hugging Face directory, or a hub id."""
    device: str = "auto"
    """Where the base runs: auto (a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps."""
    dtype: str = "auto"
    """The base's weights: auto (bfloat16 on a GPU that has it, float32 on the CPU), float32, bfloat16 or float16.
    The memory's trainable parameters and their optimizer state stay float32 either way (see train.py)."""
    shard: bool = False
    """Under a launcher, split the base's decoder layers across the processes (FSDP, see distributed.py) instead
    of a whole copy in each. Also on under `accelerate launch --use_fsdp`. Ignored in one process."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LearnConfig":
        return cls(base=data["base"], device=data.get("device", "auto"), dtype=data.get("dtype", "auto"),
                   shard=data.get("shard", False),
                   synth=_build(SynthConfig, data["synth"]),
                   train=_build(TrainConfig, data["train"]))


MIN_EPOCHS = 3  # the size rule's floor: a larger corpus still gets 3 passes over each fact's questions


def resolve_train(train: TrainConfig, n_examples: int, items_per_fact: float | None = None) -> TrainConfig:
    """Fill in what was left to the defaults: the learning rate of the method, and the number of epochs from
    the data volume (small corpora need more passes to be remembered: 6 epochs at 20 examples, 4 at 200, never
    fewer than MIN_EPOCHS however large the corpus), or from `exposures` and the measured items per fact.

    The floor is measured: the rule used to fall to 2 epochs past about 1,120 examples, where a memory sees each
    fact about 6 times (3 questions a fact) instead of 9; on SQuAD passages 25-48, 2 epochs kept 56% of the
    closed-book -> in-context gap and 3 kept 94% (docs/benchmarks.md, "How many passes")."""
    if train.lr is None:
        train = replace(train, lr=train.peak_lr)
    if train.epochs is not None:
        return train
    if train.exposures is not None and items_per_fact:
        return replace(train, epochs=max(1, min(30, math.ceil(train.exposures / items_per_fact))))
    epochs = int(round(min(6, max(MIN_EPOCHS, 4 - 2 * math.log10(max(n_examples, 1) / 200)))))
    return replace(train, epochs=epochs)


def _build(cls, data: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
