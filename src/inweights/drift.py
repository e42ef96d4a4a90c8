"""How far a memory moved the base model on general text it never trained on: the drift probe.

The probe is general text the base model wrote itself with a seed no training run's guard uses (the guard samples
with the run's seed, 0, 1, 2, ...), scored against the base by the rise in its mean per-token NLL, as a perplexity
change (and, for benchmarks/drift_probe.py, by the guard's KL: base top-k plus the rest of the vocabulary,
`train.soft_kl`). `learn --max-drift` uses it to pick the memory's strength: the update is scaled down until the
probe's perplexity change is within the budget (`choose_strength`); benchmarks/drift_probe.py measured how the
probe tracks WikiText-2 perplexity (about 3 times the probe's change, docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from inweights.guard import replay_rows, replay_targets, replay_texts
from inweights.store import write_atomic
from inweights.train import IGNORE, pad_rows, completion_terms, validation_loss

PROBE_TEXTS = 128
"""General-text samples in the probe (8,064 tokens with the embedded model)."""
PROBE_SEED = 2**31 - 1
"""The probe's sampling seed: the guard's texts use the training seed, so the probe is text no memory trained on."""


@dataclass(frozen=True)
class Probe:
    """The probe's rows (token ids, BOS first), the base model's NLL on them, and (when asked for) its top-k
    targets on them, for the KL."""

    rows: list[list[int]]
    base_nll: float
    targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def load_probe(base, cache_dir: Path, n: int | None = None, progress: bool = False, targets: bool = False) -> Probe:
    """The probe for `base` (n texts, default PROBE_TEXTS), scored by `base.model`, which must carry no memory
    (detach it, or score inside its method's `disabled`). Its texts and the base's NLL on them are cached like
    the guard's, once per base (about n x 1 s on 2 CPU cores with the embedded model, whose texts are shipped);
    with `targets`, the base's top-k targets too (guard.replay_targets), for `score`'s KL."""
    n = PROBE_TEXTS if n is None else n
    texts = replay_texts(base, n, cache_dir, seed=PROBE_SEED, progress=progress)
    rows = replay_rows(base.tokenizer, texts)
    key = json.dumps([base.fingerprint, str(base.dtype), rows])  # bfloat16 reads another NLL than float32
    path = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()}.probe.json"
    try:
        base_nll = json.loads(path.read_text())["base_nll"]
    except (OSError, ValueError, KeyError):
        base_nll, _ = score(base.model, rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"base": base.fingerprint, "dtype": str(base.dtype), "base_nll": base_nll}))
    found = [(ids, logprobs) for _, ids, logprobs in replay_targets(base, texts, cache_dir, progress=progress)] \
        if targets else None
    return Probe(rows, base_nll, found)


@torch.no_grad()
def score(model, rows: list[list[int]], targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
          batch_tokens: int = 512) -> tuple[float, float | None]:
    """(mean NLL of each row's own next tokens, mean KL from the base's `targets` or None without them) per
    position, over `rows`: train.validation_loss and train.completion_terms, as training scores its rows."""
    nll = validation_loss(model, [(row, row) for row in rows], 0, batch_tokens)
    if targets is None:
        return nll, None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kl, count = 0.0, 0
    per_batch = max(1, batch_tokens // max(len(row) for row in rows))
    for start in range(0, len(rows), per_batch):
        batch = [(row, [IGNORE] * len(row)) for row in rows[start : start + per_batch]]
        input_ids, labels, mask = (t.to(device) for t in pad_rows(batch, 0))
        soft = [(i, 0, ids.to(device), logprobs.to(device))
                for i, (ids, logprobs) in enumerate(targets[start : start + per_batch])]
        total, scored = completion_terms(model, input_ids, mask, labels, soft, tail=True)
        kl += float(total)
        count += scored
    if was_training:
        model.train()
    return nll, kl / max(count, 1)


def drift_pct(probe: Probe, model) -> float:
    """The probe's perplexity change under `model` against the base, in percent."""
    nll, _ = score(model, probe.rows)
    return 100.0 * (math.exp(nll - probe.base_nll) - 1.0)


@dataclass(frozen=True)
class StrengthChoice:
    """What `choose_strength` settled on: the strength, and each (strength, probe change in %) it measured."""

    strength: float
    measured: list[tuple[float, float]]

    def to_dict(self, budget: float) -> dict:
        return {"budget_pct": budget, "strength": round(self.strength, 4),
                "measured": [[round(s, 4), round(d, 4)] for s, d in self.measured]}


def choose_strength(measure, budget: float, cap: float = 1.0, tries: int = 4, tolerance: float = 0.1
                    ) -> StrengthChoice:
    """The largest strength s <= `cap` whose drift `measure(s)` (the probe's change in %, rising with s) is
    within `budget`, found in at most `tries` measurements: `cap` first, then steps along a power law fitted to
    the last two points (drift grows about as s^2 on the memories measured), stopping at the first one in
    [budget x (1 - tolerance), budget]. When no measured strength is within budget, the last step's estimate
    (unmeasured) is taken."""
    measured = [(cap, measure(cap))]
    if measured[0][1] <= budget:
        return StrengthChoice(cap, measured)
    exponent = 2.0
    for _ in range(tries - 1):
        s, d = measured[-1]
        guess = s * (budget / d) ** (1.0 / exponent) if d > 0 else s
        measured.append((guess, measure(guess)))
        (s0, d0), (s1, d1) = measured[-2], measured[-1]
        if d1 > 0 and d0 > 0 and abs(s1 - s0) > 1e-6 and d1 != d0:
            exponent = min(max(math.log(d0 / d1) / math.log(s0 / s1), 0.5), 4.0)
        if budget * (1.0 - tolerance) <= d1 <= budget:
            break
    within = [s for s, d in measured if d <= budget]
    if within:
        return StrengthChoice(max(within), measured)
    s, d = measured[-1]
    return StrengthChoice(s * (budget / d) ** (1.0 / exponent), measured)


def strength_within(model, probe: Probe, scale, budget: float, cap: float = 1.0, say=None) -> StrengthChoice:
    """`choose_strength` on a model that carries a memory at strength 1, each strength measured by scaling the
    memory in place with `scale(model, factor)` (a method's `scale`); `say(message)` hears each measurement. The
    model is left at strength 1."""
    current = [1.0]

    def measure(s: float) -> float:
        scale(model, s / current[0])
        current[0] = s
        pct = drift_pct(probe, model)
        if say is not None:
            say(f"strength {s:.3f}: the drift probe's perplexity {pct:+.2f}% (budget {budget:g}%)")
        return pct

    try:
        return choose_strength(measure, budget, cap=cap)
    finally:
        scale(model, 1.0 / current[0])
