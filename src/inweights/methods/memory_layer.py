"""Sparse memory layer (after Berges et al. 2024, "Memory layers at scale", and Lin et al. 2025, "Continual
learning via sparse memory finetuning"): a large key-value memory beside one mid-depth MLP, of which only the
rows the new data reads most specifically are trained.

The MLP of decoder layer `num_layers // 2` (or the one `TrainConfig.layers` names) returns `mlp(x) + memory(x)`. memory(x): a frozen random projection
of x to a query whose two halves are compared (cosine) with two sets of sqrt(slots) frozen random sub-keys;
the `topk` best sums give the rows read, mixed by a softmax of their scores (product keys: exact top-k over all
slots for 2 x sqrt(slots) comparisons, where a flat lookup over 65k keys costs ~10x the MLP; a prime number of
slots degrades to the flat lookup).

- Values start at zero: attached, the memory is exactly a no-op. No trained gate (on zero values it would get
  no gradient; the gate below is fixed by the data).
- Mid-layer states share a large common direction, and a few of their dimensions vary ten times more than the
  median one; a random projection of raw states sends every token to the same hub rows. So `prepare` first
  standardises the memory's input (each dimension centred and scaled by its mean and standard deviation over
  the positions the loss scores), folded into the query projection and centre. On gemma-3-270m and learn's
  cloze data for 8 SQuAD passages (146 questions), the answer positions read 1,793 distinct rows instead of 540
  when the queries were only centred on general text (one row was read by 137 of the 146 questions; now by
  56), and general-text reads landing on the trainable rows fell from 4.5% to 1.6%
  (`benchmarks/memory_layer_reads.py`).
- `prepare` then ranks rows by TF-IDF, once for the run (Lin et al. do it per batch): tf = reads at the
  positions the loss scores (reads at prompt positions are mostly the shared template; counting them trained
  rows that 19% instead of 6% of general-text reads land on), idf = ln((1+N)/(1+df)) over the N replay
  sequences (plain tf without replay). The top `memory_trainable_rows` are a small Parameter beside an index
  buffer; every other row is a constant zero that no optimizer state or weight decay touches, and the full
  slots x hidden table never exists. `prepare` is deterministic, so a resumed run trains the same rows.
- Saved: the non-zero trained rows, their slots and centroids (the gate's, below), the query projection, centre
  and sub-keys (exact whatever torch's generator does) and a small JSON config.
- Gate (`TrainConfig.memory_gate` and `memory_gate_contrast`, both off by default): the random keys cannot tell a
  state the memory was trained on from general text that lands on the same rows by chance. `prepare` also keeps, for
  each trained row, the mean direction of the training queries that read it (its centroid), and with the gate on a
  read of a trained row counts only where the query's cosine to that centroid is at least the `memory_gate` quantile
  of the training reads' own cosines (0.1: the tenth of the training's reads least like their row's centroid would
  be dropped). With the guard's general text (replay), `prepare` also records where that text reads trained rows
  (`fit_contrast`), so that a share of training reads can be dropped row by row instead, on the rows and below the
  cosines where general text reads most (`memory_gate_contrast`, `set_gate(model, q, contrast=share)`; the higher of
  the two cuts where both are on; `benchmarks/strength.py` profile `cgate=S`).
- Precision: the memory's rows, keys and projection are float32 whatever the base's dtype; it reads the MLP's
  input in float32 and its output is cast to the MLP's dtype where the two are summed.

Limits: in the papers the memory is pretrained with the model, so keys and queries are meaningful and the
untouched values useful; here it is added to a frozen model with random keys and zero values, and learns only
through its value rows. Gemma normalises the MLP output after the sum (post_feedforward_layernorm), so the
memory's push on the residual is bounded, and where it grows past mlp(x) it crowds out the MLP's own output.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from inweights.train import IGNORE

WEIGHTS, CONFIG = "memory_layer.safetensors", "memory_layer_config.json"
NO_CENTROIDS = "this memory has no centroids (learned before the gate existed): it cannot be gated"


class _Stop(Exception):
    """Raised by the memory while `prepare` records reads: nothing after the memory layer needs to run."""


class SparseMemory(nn.Module):
    def __init__(self, hidden: int, slots: int, topk: int, n_rows: int, seed: int = 0):
        super().__init__()
        if not 1 <= topk <= slots:
            raise ValueError(f"memory_topk ({topk}) must be between 1 and memory_slots ({slots})")
        self.hidden, self.slots, self.topk, self.seed = hidden, slots, topk, seed
        self.n_a = max(d for d in range(1, math.isqrt(slots) + 1) if slots % d == 0)  # slots = n_a x n_b
        self.n_b = slots // self.n_a
        half = max(1, hidden // 2)
        self.temperature = math.sqrt(half)  # cosines of random vectors spread ~1/sqrt(half): rescale to ~1
        g, fp32 = torch.Generator().manual_seed(seed), torch.float32  # float32 on any base (see the module's doc)
        self.register_buffer("query", torch.randn(hidden, 2 * half, generator=g, dtype=fp32) / math.sqrt(hidden))
        self.register_buffer("keys_a", F.normalize(torch.randn(self.n_a, half, generator=g, dtype=fp32), dim=-1))
        self.register_buffer("keys_b", F.normalize(torch.randn(self.n_b, half, generator=g, dtype=fp32), dim=-1))
        self.register_buffer("center", torch.zeros(2 * half, dtype=fp32))  # the mean query, set by `prepare`
        self.raw_query = self.query.clone()  # `standardise` rescales this, so that it can run again
        self.rows = nn.Parameter(torch.zeros(min(n_rows, slots), hidden, dtype=fp32))
        self.register_buffer("row_index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("slot_row", torch.zeros(0, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(0, 2 * half, dtype=fp32))  # set by `prepare` (the gate)
        self.gate_table: list[float] = []  # quantiles 0, 0.01, ..., 1 of the training reads' centroid cosines
        self.gate = 0.0  # the quantile of the training reads' cosines below which a read is dropped; 0: off
        self.gate_contrast = 0.0  # the share of training reads dropped row by row against general text; 0: off
        self.contrast: dict[str, torch.Tensor] = {}  # `fit_contrast`'s candidate cuts
        self.contrast_reads = 0  # the training reads `fit_contrast` counted (its `dropped` are out of these)
        self._cuts: tuple | None = None  # ((gate, contrast, rows), the cut of each row): `cuts` caches it
        self.select(torch.arange(self.rows.shape[0]))  # a placeholder until `prepare` chooses

    def select(self, row_index: torch.Tensor) -> None:
        """Make these slots the trainable rows (row i of `rows` is slot row_index[i])."""
        device = self.rows.device
        self.row_index = row_index.to(device=device, dtype=torch.long)
        self.slot_row = torch.full((self.slots,), len(row_index), dtype=torch.long, device=device)
        self.slot_row[self.row_index] = torch.arange(len(row_index), device=device)

    @torch.no_grad()
    def standardise(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Read (x - mean) / std instead of x: each input dimension centred and scaled before the projection."""
        std = floored_std(std)
        raw = self.raw_query.to(self.query)
        self.query.copy_(raw / std.to(raw)[:, None])
        self.center.copy_((mean.to(raw) / std.to(raw)) @ raw)

    def directions(self, x: torch.Tensor) -> torch.Tensor:
        """The query of each position of x (..., hidden) as its two unit halves, (..., 2, hidden // 2)."""
        return F.normalize((x.float() @ self.query - self.center).unflatten(-1, (2, -1)), dim=-1)

    def lookup(self, x: torch.Tensor, q: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots read by each position of x (..., hidden): indices and softmax weights, both (..., topk). `q`:
        the positions' `directions`, where already computed."""
        qa, qb = (self.directions(x) if q is None else q).unbind(-2)
        sa, ia = (qa @ self.keys_a.T).topk(min(self.topk, self.n_a), dim=-1)
        sb, ib = (qb @ self.keys_b.T).topk(min(self.topk, self.n_b), dim=-1)
        scores = (sa.unsqueeze(-1) + sb.unsqueeze(-2)).flatten(-2)
        slots = (ia.unsqueeze(-1) * self.n_b + ib.unsqueeze(-2)).flatten(-2)
        best, pick = scores.topk(self.topk, dim=-1)
        return slots.gather(-1, pick), torch.softmax(best * self.temperature, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.directions(x)
        slots, weights = self.lookup(x, q)
        table = torch.cat([self.rows, self.rows.new_zeros(1, self.hidden)])  # last row: every untrained slot
        rows, weights = self.slot_row[slots].flatten(0, -2), weights.flatten(0, -2)
        if self.gate > 0 or self.gate_contrast > 0:
            weights = weights * (self.trained_cosines(q.flatten(0, -3), rows) >= self.cuts()[rows])
        out = F.embedding_bag(rows, table, per_sample_weights=weights.to(table.dtype), mode="sum")
        return out.unflatten(0, x.shape[:-1]).to(x.dtype)

    def trained_cosines(self, q: torch.Tensor, rows: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """For reads `rows` (positions, topk; len(self.rows) where untrained) by positions with directions q
        (positions, 2, half): the cosine of each position's query to the read row's centroid; +inf where the row
        is untrained (nothing to gate: its value is zero)."""
        out = torch.full(rows.shape, math.inf, device=rows.device)
        flat = q.flatten(-2) / math.sqrt(2.0)  # both halves are unit vectors: the whole query has norm sqrt(2)
        pos, k = (rows < len(self.rows)).nonzero(as_tuple=True)
        for lo in range(0, len(pos), chunk):  # a batch reads many trained rows: bounded memory
            p, j = pos[lo : lo + chunk], k[lo : lo + chunk]
            out[p, j] = (flat[p] * self.centroids[rows[p, j]]).sum(-1)
        return out

    def threshold(self) -> float:
        """The cosine below which the gate drops a read: the `gate` quantile of the training reads' cosines."""
        if not self.gate_table:
            raise ValueError(NO_CENTROIDS)
        at = self.gate * (len(self.gate_table) - 1)
        lo = min(int(at), len(self.gate_table) - 2)
        return self.gate_table[lo] + (at - lo) * (self.gate_table[lo + 1] - self.gate_table[lo])

    def cuts(self) -> torch.Tensor:
        """The cosine below which the gate drops a read, per trained row (one more entry, -inf, for the untrained
        slots): the higher of the one cosine `gate` sets for every row and each row's own (`contrast_cuts`) where
        `gate_contrast` is on."""
        key = (self.gate, self.gate_contrast, len(self.rows))
        if self._cuts is None or self._cuts[0] != key:
            cut = torch.full((len(self.rows),), self.threshold() if self.gate > 0 else -math.inf)
            if self.gate_contrast > 0:
                cut = torch.maximum(cut, self.contrast_cuts(self.gate_contrast))
            self._cuts = key, torch.cat([cut, cut.new_full((1,), -math.inf)]).to(self.rows.device)
        return self._cuts[1]

    def contrast_cuts(self, share: float) -> torch.Tensor:
        """A cut for each trained row such that at most `share` of the training reads are dropped and as many of
        the general-text reads as possible are (`fit_contrast`): a row is cut where the general reads it blocks
        are worth more than lam times the training reads it drops, with the smallest lam (found by bisection)
        that drops no more than `share` of the training reads. -inf: the row is not cut."""
        if not self.contrast:
            raise ValueError("this memory has no contrast with general text (learned without the guard's text, "
                             "or before the contrast existed): it cannot be gated row by row")
        row, cut = self.contrast["row"], self.contrast["cut"]
        dropped, blocked = self.contrast["dropped"].double(), self.contrast["blocked"].double()
        budget = share * self.contrast_reads

        def choose(lam: float) -> tuple[torch.Tensor, float]:
            gain = blocked - lam * dropped
            best = torch.full((len(self.rows),), 0.0, dtype=torch.float64).scatter_reduce(
                0, row, gain, "amax", include_self=True)  # 0: no cut
            chosen = (gain > 0) & (gain == best[row])
            first = torch.full((len(self.rows),), len(row), dtype=torch.long).scatter_reduce(
                0, row[chosen], chosen.nonzero()[:, 0], "amin", include_self=True)  # one candidate per row
            picked = first[first < len(row)]
            return picked, float(dropped[picked].sum())

        lo, hi = 0.0, 1.0
        while choose(hi)[1] > budget and hi < 1e12:
            lo, hi = hi, hi * 2
        for _ in range(60):  # the smallest lam whose cuts stay inside the budget
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if choose(mid)[1] <= budget else (mid, hi)
        picked = choose(hi)[0]
        out = torch.full((len(self.rows),), -math.inf)
        out[row[picked]] = cut[picked]
        return out

    @torch.no_grad()
    def fit_contrast(self, train: torch.Tensor, general) -> None:
        """Candidate cuts for `contrast_cuts`: for each read of a trained row by general text (`general`: batches
        of states (n, hidden) of text the memory should leave alone), the cut just above its cosine to the row's
        centroid, with how many of the row's training reads (`train`: their keys, as `fit_centroids` returns
        them) and general reads it would drop."""

        def reads():
            for x in general:
                q = self.directions(x)
                rows = self.slot_row[self.lookup(x, q)[0]]
                yield rows, self.trained_cosines(q, rows)

        other = _read_keys(reads())
        row = (other // 4).long()
        # just above the read's cosine, as the float32 the gate compares (the key's float64 rounds far finer)
        cut = torch.nextafter((other - row * 4 - 1).float(), torch.tensor(math.inf))
        start, end = row.double() * 4, row.double() * 4 + 1 + cut.double()
        dropped = torch.searchsorted(train, end) - torch.searchsorted(train, start)
        blocked = torch.searchsorted(other, end) - torch.searchsorted(other, start)
        self.contrast = {"row": row, "cut": cut, "dropped": dropped, "blocked": blocked}
        self.contrast_reads, self._cuts = len(train), None

    @torch.no_grad()
    def fit_centroids(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Each trained row's centroid: the unit mean of the queries (unit length, weighted by their read weight)
        of the positions in `states` (each (n, hidden)) that read it; and the quantiles of those reads' cosines
        to their rows' centroids, which `gate` picks its threshold from. Returns those reads' keys (`_read_keys`),
        which `fit_contrast` counts."""
        total = torch.zeros(len(self.rows), self.query.shape[1], dtype=torch.float64, device=self.rows.device)
        reads = []  # (directions, rows read) per batch of states: the cosines below need the finished centroids
        for x in states:
            q = self.directions(x)
            slots, weights = self.lookup(x, q)
            rows, flat = self.slot_row[slots], q.flatten(-2) / math.sqrt(2.0)
            trained = rows < len(self.rows)
            pos = trained.nonzero(as_tuple=True)[0]
            total.index_add_(0, rows[trained], (weights[trained][:, None] * flat[pos]).double())
            reads.append((q, rows))
        self.centroids, self._cuts = F.normalize(total.float(), dim=-1), None
        pairs = [(rows, self.trained_cosines(q, rows)) for q, rows in reads]
        cosines = [c[c.isfinite()] for _, c in pairs]
        cosines = torch.cat(cosines) if cosines else torch.zeros(0)
        if len(cosines):
            self.gate_table = [round(float(v), 6) for v in torch.quantile(
                cosines[torch.randperm(len(cosines), generator=torch.Generator().manual_seed(0))[:1_000_000]]
                .double().cpu(), torch.linspace(0, 1, 101, dtype=torch.float64))]
        return _read_keys(pairs)


def _read_keys(pairs) -> torch.Tensor:
    """Reads of trained rows from (rows read, their cosines to the rows' centroids; inf where untrained) pairs, as
    sorted float64 keys row * 4 + 1 + cosine (cosine in [-1, 1]): a row's reads together, by cosine."""
    rows, cosines = [], []
    for read, c in pairs:
        kept = c.isfinite()
        rows.append(read[kept].cpu())
        cosines.append(c[kept].double().cpu())
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    return (torch.cat(rows).double() * 4 + torch.cat(cosines) + 1).sort().values


def floored_std(std: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviations floored at a hundredth of their median: a constant dimension must not
    blow up when the memory's input is divided by them."""
    return std.clamp_min(1e-2 * float(std.median()) + 1e-8)


class MemoryMLP(nn.Module):
    """`mlp(x) + memory(x)`; the wrapped MLP is untouched and goes back in place on detach."""

    def __init__(self, mlp: nn.Module, memory: SparseMemory, layer: int):
        super().__init__()
        self.mlp, self.memory, self.layer, self.enabled = mlp, memory, layer, True
        self.recording: list | None = None  # set by `_states`: keep the input and stop the forward here
        self.base_flags: list = []  # (parameter, requires_grad) of the base before attach, restored on detach

    def forward(self, x):
        if self.recording is not None:
            self.recording.append(x)
            raise _Stop
        out = self.mlp(x)
        return out + self.memory(x) if self.enabled else out


@torch.no_grad()
def _states(model, sequences, batch_tokens: int, positions=None):
    """Yield (inputs of the memory (batch, length, hidden), mask of the real tokens, or of the real tokens
    where `positions` (0/1 lists) has a 1) for batches of sequences, running the backbone up to the memory."""
    wrapper = _wrapper(model)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(causal_lm, causal_lm.base_model_prefix)
    device = wrapper.memory.rows.device
    batches = [[]]
    for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])):  # longest last: width = length
        if batches[-1] and len(sequences[i]) * (len(batches[-1]) + 1) > batch_tokens:
            batches.append([])
        batches[-1].append(i)
    was_training = model.training
    model.eval()
    try:
        for batch in filter(None, batches):
            width = max(len(sequences[i]) for i in batch)
            ids = torch.tensor([list(sequences[i]) + [0] * (width - len(sequences[i])) for i in batch])
            mask = torch.tensor([[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in batch])
            wrapper.recording = []
            with contextlib.suppress(_Stop):
                backbone(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            if positions is not None:
                mask = torch.tensor([list(positions[i]) + [0] * (width - len(positions[i])) for i in batch])
            yield wrapper.recording[0], mask.bool().to(device)
    finally:
        wrapper.recording = None
        model.train(was_training)


def _wrapper(model) -> MemoryMLP:
    found = [m for m in model.modules() if isinstance(m, MemoryMLP)]
    if len(found) != 1:
        raise ValueError(f"expected one memory layer on the model, found {len(found)}")
    return found[0]


def _scored(row) -> list[int]:
    """1 at the positions of a training row whose outputs the loss reads (they predict a labelled token or
    carry a soft target); all positions when it has none."""
    ids, labels = row[0], (row[1] if len(row) > 1 and row[1] is not None else [])
    mask = ([int(label != IGNORE) for label in labels[1 : len(ids)]] + [0] * len(ids))[: len(ids)]
    if len(row) > 2:
        start, top_ids = row[2][0], row[2][1]
        mask[start : start + len(top_ids)] = [1] * len(mask[start : start + len(top_ids)])
    return mask if any(mask) else [1] * len(ids)


class MemoryLayer:
    name = "memory_layer"
    default_lr = 1e-2  # values grow from zero; on gemma-3-270m 5e-4 barely moved the loss in 25 steps

    def attach(self, model, config):
        memory = SparseMemory(model.config.get_text_config().hidden_size, config.memory_slots, config.memory_topk,
                              config.memory_trainable_rows, config.seed)
        flags = [(p, p.requires_grad) for p in model.parameters()]
        count = len(model.get_decoder().layers)
        layer = config.layers[0] if config.layers else count // 2
        if layer >= count:
            raise ValueError(f"layer {layer} does not exist: the model has {count} decoder layers")
        _install(model, layer, memory).base_flags = flags
        model.requires_grad_(False)
        memory.rows.requires_grad_(True)
        memory.gate = config.memory_gate  # both apply once `prepare` has fitted the centroids (and the contrast)
        memory.gate_contrast = config.memory_gate_contrast
        return model

    @torch.no_grad()
    def prepare(self, model, items, replay, batch_tokens: int = 4096) -> None:
        """Standardise the memory's input on the states the loss scores, then make trainable the rows that
        training tokens read most, discounted by how often general-text tokens read them (TF-IDF)."""
        memory = _wrapper(model).memory
        train_ids, replay_ids = [row[0] for row in items], [row[0] for row in replay]
        # The states at scored positions, kept (one backbone pass): their spread sets the standardisation, then
        # their reads are the tf.
        states = [x[mask] for x, mask in _states(model, train_ids, batch_tokens, [_scored(row) for row in items])]
        total = torch.zeros(2, memory.hidden, dtype=torch.float64)
        for x in states:
            total += torch.stack([x.double().sum(0), x.double().square().sum(0)]).cpu()
        n = max(sum(len(x) for x in states), 1)
        mean = total[0] / n
        memory.standardise(mean, (total[1] / n - mean * mean).clamp_min(0).sqrt())
        score = torch.zeros(memory.slots, dtype=torch.float64)
        for x in states:
            score += torch.bincount(memory.lookup(x)[0].flatten(), minlength=memory.slots).cpu()
        if replay_ids:  # idf over replay sequences as documents: rows every general text reads score 0
            df = self.read_counts(model, replay_ids, batch_tokens, per_sequence=True).double()
            score = score * torch.log((1.0 + len(replay_ids)) / (1.0 + df))
        order = torch.argsort(-score, stable=True)  # ties go to the lower slot: the same data, the same rows
        memory.select(order[: memory.rows.shape[0]].sort().values)
        train = memory.fit_centroids(states)
        if replay_ids:
            memory.fit_contrast(train, (x[mask] for x, mask in _states(model, replay_ids, batch_tokens)))

    @torch.no_grad()
    def read_counts(self, model, sequences, batch_tokens: int = 4096, per_sequence: bool = False,
                    positions=None) -> torch.Tensor:
        """How many positions (those marked in `positions`, else all; or, per_sequence, how many of the
        sequences) of these token sequences read each slot."""
        memory = _wrapper(model).memory
        counts = torch.zeros(memory.slots, dtype=torch.long)
        for x, mask in _states(model, sequences, batch_tokens, positions):
            slots = memory.lookup(x)[0]
            for row in ([slots[b][mask[b]].unique() for b in range(len(slots))] if per_sequence else [slots[mask]]):
                counts += torch.bincount(row.flatten(), minlength=memory.slots).cpu()
        return counts

    @staticmethod
    def set_gate(model, quantile: float, contrast: float | None = None) -> None:
        """Gate the attached memory's reads below this quantile of its training reads' centroid cosines (0: off),
        and, with `contrast` > 0, row by row where general text reads it, dropping that share of the training
        reads (`SparseMemory.contrast_cuts`; None: as it was)."""
        memory = _wrapper(model).memory
        contrast = memory.gate_contrast if contrast is None else contrast
        if (quantile or contrast) and not memory.gate_table:
            raise ValueError(NO_CENTROIDS)
        if not 0 <= quantile < 1 or not 0 <= contrast < 1:
            raise ValueError("the gate's quantile and the contrast's share must be in [0, 1)")
        memory.gate, memory.gate_contrast = quantile, contrast
        if quantile or contrast:
            memory.cuts()  # a memory without the contrast fails here, not at the first read

    @torch.no_grad()
    def scale(self, model, factor: float) -> None:
        """Multiply the update by `factor`, in place: the values start at zero, so the trained rows are the
        whole update (`TrainConfig.strength`)."""
        _wrapper(model).memory.rows.mul_(factor)

    def save(self, model, directory: Path) -> None:
        wrapper = _wrapper(model)
        memory = wrapper.memory
        keep = memory.rows.detach().abs().amax(-1) > 0  # rows the data never reached are still zero: not stored
        tensors = {"rows": memory.rows.detach()[keep].float(), "row_index": memory.row_index[keep]}
        tensors |= {name: getattr(memory, name) for name in ("query", "center", "keys_a", "keys_b")}
        if len(memory.centroids):
            tensors["centroids"] = memory.centroids[keep]
        if memory.contrast:  # the candidates of kept rows, renumbered as the stored rows are
            number = keep.long().cumsum(0).cpu() - 1
            on = keep.cpu()[memory.contrast["row"]]
            tensors |= {f"contrast_{k}": v[on] for k, v in memory.contrast.items() if k != "row"}
            tensors["contrast_row"] = number[memory.contrast["row"][on]]
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(Path(directory) / WEIGHTS))
        config = {"layer": wrapper.layer, "slots": memory.slots, "topk": memory.topk, "hidden": memory.hidden,
                  "seed": memory.seed, "trainable_rows": memory.rows.shape[0], "stored_rows": int(keep.sum()),
                  "gate": memory.gate, "gate_table": memory.gate_table, "gate_contrast": memory.gate_contrast,
                  "contrast_reads": memory.contrast_reads}
        (Path(directory) / CONFIG).write_text(json.dumps(config, indent=2))

    def load(self, model, directory: Path):
        config = json.loads((Path(directory) / CONFIG).read_text())
        tensors = load_file(str(Path(directory) / WEIGHTS))
        memory = SparseMemory(config["hidden"], config["slots"], config["topk"], len(tensors["row_index"]),
                              config["seed"])
        for name in ("query", "center", "keys_a", "keys_b", "rows"):  # saved, not regenerated: exact on any torch
            getattr(memory, name).data.copy_(tensors[name])
        if "centroids" in tensors:  # memories saved before the gate have none
            memory.centroids = tensors["centroids"]
        memory.gate_table, memory.gate = config.get("gate_table", []), config.get("gate", 0.0)
        memory.contrast = {k[len("contrast_"):]: v for k, v in tensors.items() if k.startswith("contrast_")}
        memory.gate_contrast = config.get("gate_contrast", 0.0)
        memory.contrast_reads = config.get("contrast_reads", 0)
        memory.select(tensors["row_index"])
        memory.rows.requires_grad_(False)
        _install(model, config["layer"], memory)
        model.eval()
        return model

    @contextlib.contextmanager
    def disabled(self, model):
        wrapper = _wrapper(model)
        wrapper.enabled = False
        try:
            yield model
        finally:
            wrapper.enabled = True

    def detach(self, model):
        wrapper = _wrapper(model)
        model.get_decoder().layers[wrapper.layer].mlp = wrapper.mlp
        for p, flag in wrapper.base_flags:
            p.requires_grad_(flag)
        return model


def _install(model, layer: int, memory: SparseMemory) -> MemoryMLP:
    if any(isinstance(m, MemoryMLP) for m in model.modules()):
        raise ValueError("the model already carries a memory; attach it to a plain base model")
    layers = model.get_decoder().layers
    wrapper = MemoryMLP(layers[layer].mlp, memory.to(next(layers[layer].mlp.parameters()).device), layer)
    layers[layer].mlp = wrapper
    return wrapper
