"""One training loop for every memory method.

- Loss only on completion tokens, and the LM head applied only at the positions that carry loss: with a
  262k vocabulary the head is about half of the compute of the embedded model, and most positions of a
  QA example are prompt.
- Length bucketing instead of padding: examples of similar length share a batch under a token budget.
- The whole batch plan is fixed by the seed before the first step, so a run killed at any point and resumed
  from its last checkpoint takes exactly the same batches and reaches the same memory.
- Checkpoints (trainable weights, AdamW state, step) are safetensors + JSON, written atomically.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from inweights import distributed
from inweights.models import HALF_DTYPES
from inweights.prompt import answer_format

IGNORE = -100
UNLIKELY = "unlikely"  # the third element of a row whose labels are tokens to make unlikely (see completion_loss)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    loss_tokens: int
    seconds: float
    final_loss: float
    resumed_from_step: int = 0
    trainable_parameters: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, loss on held-out wordings)
    best_step: int | None = None  # the step whose weights were kept, when a validation set was given
    stopped_early: bool = False
    averaged_steps: int = 0  # with average_last: the last steps whose weights were averaged into the kept ones


def tokenize_example(tokenizer, prompt: str, completion: str, max_len: int, end_id: int | None
                     ) -> tuple[list[int], list[int]]:
    """Prompt and completion are tokenized separately so the boundary matches generation (which starts right
    after the prompt's last token). `end_id` (a newline) teaches the model to stop after the completion. A QA
    example is first put in the form the base reads (`prompt.answer_format`: its chat template, when it has one,
    with the end-of-turn token in place of `end_id`)."""
    prompt, completion, end_id = answer_format(tokenizer, prompt, completion, end_id)
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if end_id is not None:
        completion_ids = completion_ids + [end_id]
    ids = (prompt_ids + completion_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_len]
    return ids, labels


def tokenize_replay(tokenizer, texts: Sequence[str], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Plain text with next-token loss on every token after BOS, cut into windows of at most max_len tokens
    (the naive fine-tune on raw documents)."""
    items = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        step = max_len - len(bos)
        for start in range(0, len(ids), step):
            window = bos + ids[start : start + step]
            if len(window) > len(bos) + 8:
                items.append((window, [IGNORE] * len(bos) + window[len(bos):]))
    return items


def plan_batches(lengths: Sequence[int], n_examples: int, n_replay: int, replay_fraction: float, epochs: int,
                 batch_tokens: int, seed: int, n_warmup: int = 0, warmup_fraction: float = 0.0) -> list[list[int]]:
    """Batches of item indices for the whole run. Items 0..n_examples-1 are examples, the next n_replay replay,
    the last n_warmup warm-up rows.

    Each epoch shuffles the examples, adds replay items so they make up `replay_fraction` of the sequences
    (and warm-up rows, `warmup_fraction`),
    sorts windows of 64 items by length (bucketing) and cuts them into batches under the token budget
    (rows x longest row). Batch order is shuffled again so lengths do not trend through an epoch.
    """
    rng = random.Random(seed)
    plan: list[list[int]] = []
    for _ in range(epochs):
        items = list(range(n_examples))
        shares = 1 - (replay_fraction if n_replay else 0.0) - (warmup_fraction if n_warmup else 0.0)
        if n_replay and replay_fraction > 0:
            want = round(n_examples * replay_fraction / shares)
            items += [n_examples + rng.randrange(n_replay) for _ in range(want)]
        if n_warmup and warmup_fraction > 0:
            want = round(n_examples * warmup_fraction / shares)
            items += [n_examples + n_replay + rng.randrange(n_warmup) for _ in range(want)]
        rng.shuffle(items)
        epoch_batches = []
        for start in range(0, len(items), 64):
            window = sorted(items[start : start + 64], key=lambda i: lengths[i])
            batch: list[int] = []
            for i in window:
                longest = max([lengths[j] for j in batch] + [lengths[i]])
                if batch and longest * (len(batch) + 1) > batch_tokens:
                    epoch_batches.append(batch)
                    batch = []
                batch.append(i)
            if batch:
                epoch_batches.append(batch)
        rng.shuffle(epoch_batches)
        plan.extend(epoch_batches)
    return plan


def run_plan(lengths: Sequence[int], n_examples: int, n_replay: int, n_warmup: int, config) -> list[list[int]]:
    """The batches `train` runs for items of these lengths (examples and extra rows, then `n_replay` replay rows,
    then `n_warmup` warm-up rows), cut at `config.max_steps`."""
    plan = plan_batches(lengths, n_examples, n_replay, config.replay_fraction, config.epochs, config.batch_tokens,
                        config.seed, n_warmup=n_warmup, warmup_fraction=config.warmup_fraction)
    return plan[: config.max_steps] if config.max_steps else plan


def replay_drawn(item_lengths: Sequence[int], n_examples: int, replay_lengths: Sequence[int],
                 warmup_lengths: Sequence[int], config) -> set[int]:
    """Which replay rows (indices into the replay list) a `train` run with rows of these lengths draws: the
    forgetting guard needs the base model's targets for those rows only."""
    lengths = [*item_lengths, *replay_lengths, *warmup_lengths]
    first = len(item_lengths)
    plan = run_plan(lengths, n_examples, first - n_examples + len(replay_lengths), len(warmup_lengths), config)
    return {i - first for batch in plan for i in batch if first <= i < first + len(replay_lengths)}


def lm_parts(model):
    """(the backbone, which gives the last hidden states, and `logits_at(hidden)`, the output head in float32 with
    the model's final logit soft-capping): logits computed only where they are needed, for training and scoring."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(causal_lm, causal_lm.base_model_prefix)
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)

    def logits_at(h):
        logits = head(h).float()
        return torch.tanh(logits / softcap) * softcap if softcap else logits

    return backbone, logits_at


def completion_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                    soft: Sequence[tuple[int, int, torch.Tensor, torch.Tensor]] = (),
                    unlikely: Sequence[int] = (), tail: bool = False) -> torch.Tensor:
    """Mean loss per scored position (see completion_terms)."""
    total, count = completion_terms(model, input_ids, attention_mask, labels, soft, unlikely, tail)
    return total / max(count, 1)


def completion_terms(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     soft: Sequence[tuple[int, int, torch.Tensor, torch.Tensor]] = (),
                     unlikely: Sequence[int] = (), tail: bool = False) -> tuple[torch.Tensor, int]:
    """(summed loss, scored positions), with the LM head applied only at scored positions.

    Rows with hard labels get next-token cross-entropy on their labelled positions, except the rows listed in
    `unlikely`, whose labelled tokens get the unlikelihood loss -log(1 - p(token)) (Welleck et al. 2019): a
    fact's old value, made unlikely where its new value is trained. Each `soft` entry
    (row, top-k ids, top-k log-probs) gives a row the KL divergence from a teacher distribution over its top-k
    tokens at every position (the forgetting guard; context distillation uses the same form): with `tail`, over
    the top-k tokens and one more outcome, the rest of the vocabulary (the teacher's log-probs must then be
    normalised over the whole vocabulary, as `guard.replay_targets` and `objectives` make them); without it,
    over the top k renormalised.
    """
    backbone, logits_at = lm_parts(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    negative = torch.zeros_like(keep)
    if unlikely:
        negative[list(unlikely)] = keep[list(unlikely)]
        keep = keep & ~negative
    total = hidden.new_zeros((), dtype=torch.float32)
    count = int(keep.sum()) + int(negative.sum())
    if keep.any():
        total = total + F.cross_entropy(logits_at(hidden[:, :-1][keep]), targets[keep], reduction="sum")
    if negative.any():
        logp = torch.log_softmax(logits_at(hidden[:, :-1][negative]), dim=-1).gather(-1, targets[negative][:, None])
        total = total - torch.log1p(-logp.exp().clamp(max=1 - 1e-6)).sum()
    for row, start, top_ids, top_logprobs in soft:
        positions = hidden[row, start : start + top_ids.shape[0]]
        student = torch.log_softmax(logits_at(positions), dim=-1).gather(-1, top_ids)
        total = total + soft_kl(student, top_logprobs, tail)
        count += top_ids.shape[0]
    return total, count


def soft_kl(student: torch.Tensor, top_logprobs: torch.Tensor, tail: bool) -> torch.Tensor:
    """KL(teacher || student) summed over positions, from the student's log-probs (over the whole vocabulary) of the
    teacher's top-k tokens. With `tail`: over those k tokens and one more outcome, the rest of the vocabulary
    (`top_logprobs` normalised over the whole vocabulary); zero exactly when the student gives the top-k tokens
    the teacher's probabilities, and it rises when the student moves the rest's mass onto them. Without: over
    the top k renormalised, which falls below zero when the student does that."""
    if not tail:
        teacher = torch.softmax(top_logprobs, dim=-1)
        return (teacher * (teacher.clamp_min(1e-12).log() - student)).sum()
    teacher = top_logprobs.exp()
    rest = (1.0 - teacher.sum(-1)).clamp_min(1e-6)
    # log(1 - the student's top-k mass) as log(-expm1(log of that mass)): accurate, and with a gradient, until the
    # rest holds less than 1e-12 (1 - exp() in float32 rounds to 0 below about 6e-8)
    student_rest = torch.log((-torch.expm1(student.logsumexp(-1))).clamp_min(1e-12))
    return (teacher * (top_logprobs - student)).sum() + (rest * (rest.log() - student_rest)).sum()


class _Terms(torch.nn.Module):
    """completion_terms as a module's forward, so that DistributedDataParallel sees the forward it wraps."""

    def __init__(self, model, touch_all: bool = False, tail: bool = False):
        super().__init__()
        self.model = model
        self.touch_all = touch_all
        self.tail = tail

    def forward(self, input_ids, attention_mask, labels, soft, unlikely):
        total = completion_terms(self.model, input_ids, attention_mask, labels, soft, unlikely, self.tail)[0]
        if self.touch_all:  # under DDP every trainable parameter must take part, even for a row with no loss
            total = total + 0.0 * sum(p.sum() for p in self.model.parameters() if p.requires_grad)
        return total


def scored_positions(batch: Sequence[tuple]) -> int:
    """Positions a batch's rows score: labelled next tokens, plus the positions of each soft target."""
    hard = sum(sum(1 for t in row[1][1:] if t != IGNORE) for row in batch)
    return hard + sum(row[2][1].shape[0] for row in batch if len(row) > 2 and not isinstance(row[2], str))


def train(model, tokenizer, items: Sequence[tuple], n_examples: int, config,
          run_dir: Path, progress: bool = True,
          replay: Sequence[tuple[list[int], torch.Tensor, torch.Tensor]] = (),
          warmup: Sequence[tuple[list[int], list[int]]] = (),
          validation: Sequence[tuple[list[int], list[int]]] = (),
          compute_dtype: torch.dtype | None = None, shard: torch.device | None = None,
          penalty=None) -> TrainResult:
    """Train the model's trainable parameters on `items`, rows of (ids, labels) with hard-label loss or
    (ids, labels, (start, top-k ids, top-k log-probs)) with soft targets (see objectives.py), mixed with the
    `replay` rows (ids, top-k ids, top-k log-probs of the base model) under the KL guard, and the `warmup` rows
    (ids, labels: questions and answers about other text) at `config.warmup_fraction` of the sequences.

    With `validation` rows (held-out wordings of trained facts), their loss is measured every
    `config.checkpoint_every` steps; training stops once it has not improved for `config.patience` measurements,
    and the weights of the best measurement are kept. (A resumed run starts the best-so-far afresh.) With
    `config.average_last` f > 0 the weights kept are instead the mean over the last f of the steps (checkpoints
    carry the running mean, so a resumed run averages the same steps).

    The first `n_examples` items are the examples that set the epoch size; any further items are extra
    hard-label rows mixed in like replay. Resumes from `run_dir/checkpoint` when it holds one for this run
    (whatever number of processes made it). `penalty`: a function of no arguments whose value (a scalar of the
    trainable weights, e.g. anchor.Anchor) is added to every step's loss.

    Precision: with `compute_dtype` bfloat16 or float16 (a base loaded in half precision) the forward runs under
    autocast in that dtype, but the memory's trainable parameters, their gradients and the AdamW moments stay
    float32: an update of lr x gradient is often below bfloat16's resolution (8 bits of mantissa) next to the
    weight it changes, and Adam's second moment underflows in float16. (`full` keeps a float32 copy of the base
    for the same reason.) float16 also scales the loss (torch.amp.GradScaler) so small gradients do not flush
    to zero.

    Under a launcher (distributed.py), each process trains on rows rank::N of every batch with
    DistributedDataParallel, and only the main process writes checkpoints. With `shard` (a device), the decoder
    layers are instead sharded across the processes onto that device (FSDP, distributed.shard); checkpoints then
    gather the whole tensors first, and at the end each trainable parameter is whole again in every process.
    """
    items = list(items) + [(ids, [IGNORE] * len(ids), (0, top_ids, top_logprobs))
                           for ids, top_ids, top_logprobs in replay]
    n_replay = len(items) - n_examples
    items += list(warmup)
    torch.manual_seed(config.seed)
    lengths = [len(item[0]) for item in items]
    plan = run_plan(lengths, n_examples, n_replay, len(warmup), config)
    total = len(plan)
    missing = sorted({i for batch in plan for i in batch
                      if len(items[i]) > 2 and isinstance(items[i][2], tuple) and items[i][2][1] is None})
    if missing:
        raise ValueError(f"{len(missing)} replay rows that this run draws have no targets (items {missing[:5]}...); "
                         "compute them with guard.replay_targets(..., needed=train.replay_drawn(...))")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters; attach a memory first")
    with torch.no_grad():
        for p in params.values():
            if p.dtype in HALF_DTYPES:  # see the docstring: float32 weights and optimizer state
                p.data = p.data.float()
    world, rank = distributed.world_size(), distributed.rank()
    sharded = shard is not None and world > 1
    if sharded:  # the layers' parameters become shards: collect them again
        distributed.shard(model, shard)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lr = config.peak_lr
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=config.weight_decay)
    checkpoint = run_dir / "checkpoint"
    average_from = total - round(config.average_last * total)
    # mean: the running mean of the weights after steps average_from, ... (empty until then, or without averaging)
    start, mean = _load_checkpoint(checkpoint, params, optimizer, total, average_from)
    result = TrainResult(steps=total, tokens=0, loss_tokens=0, seconds=0.0, final_loss=float("nan"),
                         resumed_from_step=start, trainable_parameters=sum(p.numel() for p in params.values()))
    model.train()
    device = next(iter(params.values())).device
    half = compute_dtype in HALF_DTYPES
    scaler = torch.amp.GradScaler(device.type, enabled=compute_dtype == torch.float16)
    terms = (distributed.prepare(_Terms(model, touch_all=True, tail=config.kl_tail)) if world > 1 and not sharded
             else _Terms(model, tail=config.kl_tail))
    main = rank == 0
    pad = tokenizer.pad_token_id
    bar = tqdm(range(start, total), desc="train", unit="step", disable=not progress or not main, initial=start,
               total=total)
    t0 = time.perf_counter()
    best: tuple[float, int, dict] | None = None  # (loss, step, weights)
    waited = 0
    for step in bar:
        batch = [items[i] for i in plan[step]]
        scored = scored_positions(batch)
        # Each process takes rows rank::world; one left without rows runs the first row with weight 0, because
        # every process must run the forward and backward for the gradients to be averaged.
        mine = batch[rank::world] or batch[:1]
        share = 1.0 if batch[rank::world] else 0.0
        input_ids, labels, mask = (t.to(device) for t in pad_rows(mine, pad))
        soft = [(row, item[2][0], item[2][1].to(device), item[2][2].to(device)) for row, item in enumerate(mine)
                if len(item) > 2 and not isinstance(item[2], str)]
        unlikely = [row for row, item in enumerate(mine) if len(item) > 2 and item[2] == UNLIKELY]
        for group in optimizer.param_groups:  # the schedule is a function of the step: nothing to restore
            group["lr"] = lr * _lr_factor(step, total)
        with torch.autocast(device.type, dtype=compute_dtype, enabled=half):
            summed = terms(input_ids, mask, labels, soft, unlikely)
        if scored:  # a batch with nothing to score (every completion cut off) is skipped, by every process alike
            # DDP averages the processes' gradients, hence the factor `world`: their mean is the gradient of the
            # whole batch's sum over the whole batch's scored positions.
            objective = summed / scored * (world * share)
            if penalty is not None:  # the same in every process: DDP's mean leaves it as it is
                objective = objective + penalty()
            scaler.scale(objective).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if step >= average_from:
            _add_to_mean(mean, params, step + 1 - average_from)
        loss = distributed.sum_across(summed.item() * share) / max(scored, 1)
        result.tokens += sum(len(row[0]) for row in batch)
        result.loss_tokens += scored
        result.losses.append(round(loss, 4))
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{result.tokens / max(elapsed, 1e-9):.0f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < total and (main or sharded):
            _save_checkpoint(checkpoint, params, optimizer, step + 1, total, average_from, mean)
        if validation and ((step + 1) % config.checkpoint_every == 0 or step + 1 == total):
            held_out = validation_loss(model, validation, pad, config.batch_tokens)
            result.validation.append((step + 1, round(held_out, 4)))
            bar.set_postfix(loss=f"{loss:.3f}", held_out=f"{held_out:.3f}")
            if best is None or held_out < best[0]:
                best, waited = (held_out, step + 1, {n: p.detach().clone() for n, p in params.items()}), 0
            else:
                waited += 1
                if waited >= config.patience:
                    result.stopped_early = step + 1 < total
                    break
    if best is not None:
        result.best_step = best[1]
    elif mean:
        result.averaged_steps = total - average_from
    kept = best[2] if best is not None else mean  # none of either: the last step's weights, already in place
    with torch.no_grad():
        for name, value in kept.items():
            params[name].copy_(value)
    if sharded:
        distributed.gather_trainable(model)
    model.eval()
    result.seconds = time.perf_counter() - t0
    result.final_loss = sum(result.losses[-10:]) / max(len(result.losses[-10:]), 1) if result.losses else float("nan")
    distributed.barrier()  # every process has finished with the checkpoint before it goes
    if main:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return result


@torch.no_grad()
def validation_loss(model, rows: Sequence[tuple[list[int], list[int]]], pad: int, batch_tokens: int) -> float:
    """Mean completion loss per scored token over `rows` (ids, labels), in batches under the token budget."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    total, count = 0.0, 0
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(rows[order[end]][0]) * (end - start + 1) <= batch_tokens:
            end += 1
        device = next(model.parameters()).device
        input_ids, labels, mask = (t.to(device) for t in pad_rows([rows[i] for i in order[start:end]], pad))
        scored = int((labels[:, 1:] != IGNORE).sum())
        total += completion_loss(model, input_ids, mask, labels).item() * scored
        count += scored
        start = end
    if was_training:
        model.train()
    return total / max(count, 1)


def pad_rows(batch: Sequence[tuple], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of (ids, labels, ...) padded on the right to the longest: input ids, labels, attention mask."""
    width = max(len(row[0]) for row in batch)
    input_ids = torch.tensor([row[0] + [pad] * (width - len(row[0])) for row in batch])
    labels = torch.tensor([row[1] + [IGNORE] * (width - len(row[1])) for row in batch])
    mask = torch.tensor([[1] * len(row[0]) + [0] * (width - len(row[0])) for row in batch])
    return input_ids, labels, mask


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _add_to_mean(mean: dict[str, torch.Tensor], params: dict, count: int) -> None:
    """Fold the weights into `mean`, the mean of `count` - 1 earlier weights (empty when count is 1)."""
    with torch.no_grad():
        for name, p in params.items():
            if count == 1:
                mean[name] = p.detach().clone()
            else:
                mean[name].add_(p.detach() - mean[name], alpha=1.0 / count)


def _save_checkpoint(directory: Path, params: dict, optimizer, step: int, total: int, average_from: int,
                     mean: dict[str, torch.Tensor]) -> None:
    """Write whole tensors (sharded ones are gathered first: then every process calls this, the main one writes)."""
    tensors = {f"param.{n}": distributed.full(p.detach()).contiguous() for n, p in params.items()}
    tensors.update({f"mean.{n}": distributed.full(m).contiguous() for n, m in mean.items()})
    state = optimizer.state_dict()["state"]
    for index, name in enumerate(params):
        for key, value in state.get(index, {}).items():
            if torch.is_tensor(value):
                value = distributed.full(value.detach())
                tensors[f"adam.{key}.{name}"] = value.reshape(-1).contiguous() if value.dim() == 0 \
                    else value.contiguous()
    if not distributed.is_main():
        return
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "total": total, "average_from": average_from}))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _load_checkpoint(directory: Path, params: dict, optimizer, total: int, average_from: int
                     ) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore weights and optimizer state; returns the step to continue from (0 when nothing to resume) and the
    running mean of the weights the checkpoint carries (empty when it has none)."""
    mean: dict[str, torch.Tensor] = {}
    meta = directory / "progress.json"
    if not meta.is_file():
        return 0, mean
    progress = json.loads(meta.read_text())
    if progress["total"] != total or progress.get("average_from", total) != average_from:
        return 0, mean  # a checkpoint of a different plan: start over rather than resume into the wrong run
    tensors = load_file(directory / "state.safetensors")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(distributed.like(tensors[f"param.{name}"], p))
            if f"mean.{name}" in tensors:
                mean[name] = distributed.like(tensors[f"mean.{name}"], p).clone()
    state = {}
    for index, (name, p) in enumerate(params.items()):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            value = tensors.get(f"adam.{key}.{name}")
            if value is not None:
                entry[key] = value.reshape(()) if key == "step" else distributed.like(value, p)
        if entry:
            state[index] = entry
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)
    return progress["step"], mean
