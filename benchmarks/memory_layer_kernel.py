"""Can a lookup on one layer's states carry a trained question over to a real one? Forward passes only.

The memory layer answers a question from the rows its state at the question's last token reads; training writes
the answer into the rows the *synthetic* question reads. It can carry over only if a real question reads the rows
its synthetic twin wrote. This measures that for each decoder layer, before any training:

- the real questions: SQuAD dev questions of the chosen passages, prompted as the closed-book evaluation does;
- their twins: learn's default synthetic questions (the `facts` strategy) for the same passages whose answer is
  the real question's gold answer (SQuAD-normalised); a real question without a twin cannot be answered by any
  memory trained on this data, and the share that has one (coverage) bounds every method;
- retrieval@1: for the real questions with a twin, how often the synthetic question the lookup finds most similar
  is a twin (similarity: cosine of the standardised states for `cosine`, a smooth lookup on that layer's states;
  for the memory layer's product-key lookup at each size, the cosine of the two read-weight vectors over the rows);
- twin overlap: the mean, over those questions, of that similarity to the best twin (for the lookups 1 = the
  same rows at the same weights, 0 = no row in common).

Run as:
    python benchmarks/memory_layer_kernel.py --out benchmarks/results/memory_layer_kernel/tune.md
    python benchmarks/memory_layer_kernel.py --skip-passages 8 --out benchmarks/results/memory_layer_kernel/check.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plane  # noqa: E402  (the same passages and questions)

ROOT = Path(__file__).resolve().parents[1]
LOOKUPS = ((65536, 32), (65536, 128), (16384, 32), (4096, 32), (4096, 128), (1024, 32))  # (slots, topk)


@torch.no_grad()
def last_states(model, sequences: list[list[int]], positions: list[int], layers: list[int], batch: int = 16):
    """The input of each chosen decoder layer's MLP at one position of each sequence: {layer: (n, hidden)}."""
    decoder = model.get_decoder().layers
    found: dict[int, list] = {layer: [] for layer in layers}
    where: list[int] = []

    def hook(layer):
        def record(module, args):
            x = args[0]
            found[layer].append(x[torch.arange(len(where)), torch.tensor(where)].float().cpu())
        return record

    handles = [decoder[layer].mlp.register_forward_pre_hook(hook(layer)) for layer in layers]
    try:
        for start in range(0, len(sequences), batch):
            chunk = sequences[start : start + batch]
            where[:] = positions[start : start + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(states) for layer, states in found.items()}


def read_weights(memory, states: torch.Tensor) -> torch.Tensor:
    """Dense (n, slots) read weights of the memory's lookup, each row scaled to unit length (so that a dot
    product is 1 for the same reads and 0 for no row in common)."""
    slots, weights = memory.lookup(states)
    return F.normalize(torch.zeros(len(states), memory.slots).scatter_(1, slots, weights), dim=-1)


def scores(similarity: torch.Tensor, twins: torch.Tensor) -> tuple[float, float]:
    """(retrieval@1, mean best-twin similarity) for real-by-synthetic similarities and a same-answer mask."""
    hit = twins[torch.arange(len(twins)), similarity.argmax(1)].float().mean().item()
    best = similarity.masked_fill(~twins, float("-inf")).amax(1).mean().item()
    return hit, best


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--skip-passages", type=int, default=0)
    parser.add_argument("--layers", default="2,5,9,12,15")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_layer_kernel" / "tune.md")
    args = parser.parse_args(argv)

    from inweights.config import SynthConfig, TrainConfig
    from inweights.evaluate.metrics import normalize_answer
    from inweights.methods.memory_layer import SparseMemory, floored_std
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.prompt import qa_prompt, render
    from inweights.synth import strategy_versions
    from inweights.train import tokenize_example

    documents, questions = plane.squad_passages(args.data, args.skip_passages, args.passages)
    base = load_base(DEFAULT_BASE)
    tokenizer, model = base.tokenizer, base.model
    examples = plane.synthetic_questions(documents, tokenizer, SynthConfig())
    max_len = TrainConfig.max_seq_len
    synth_ids, synth_at = [], []
    for e in examples:
        ids, labels = tokenize_example(tokenizer, e.prompt, e.completion, max_len, base.newline_id)
        synth_ids.append(ids)
        synth_at.append(next(i for i, label in enumerate(labels) if label >= 0) - 1)  # predicts the first answer token
    real_ids = [tokenizer(render(tokenizer, qa_prompt(q.question)))["input_ids"] for q in questions]
    real_at = [len(ids) - 1 for ids in real_ids]
    answers = [normalize_answer(e.completion) for e in examples]
    twins = torch.tensor([[a == normalize_answer(q.answers[0]) for a in answers] for q in questions])
    covered = twins.any(1)
    twins = twins[covered]

    layers = [int(x) for x in args.layers.split(",")]
    synth = last_states(model, synth_ids, synth_at, layers)
    real = last_states(model, real_ids, real_at, layers)
    rows = []
    for layer in layers:
        s, r = synth[layer], real[layer][covered]
        mean, std = s.mean(0), s.std(0)
        floor = floored_std(std)  # the lookup's own standardisation, for the states' cosine too
        cos = F.normalize((r - mean) / floor, dim=-1) @ F.normalize((s - mean) / floor, dim=-1).T
        row = {"layer": layer, "cosine": scores(cos, twins)}
        for slots, topk in LOOKUPS:
            memory = SparseMemory(s.shape[1], slots, topk, 1)
            memory.standardise(mean, std)
            row[(slots, topk)] = scores(read_weights(memory, r) @ read_weights(memory, s).T, twins)
        rows.append(row)
        print(layer, row, flush=True)

    first, last = args.skip_passages + 1, args.skip_passages + args.passages
    head = "| layer | cosine | " + " | ".join(f"{s:,} rows, top {k}" for s, k in LOOKUPS) + " |"
    lines = [f"# Memory-layer lookup: real questions against their synthetic twins ({base.name}; SQuAD dev "
             f"passages {first}-{last})", "",
             f"Command: `python benchmarks/memory_layer_kernel.py --skip-passages {args.skip_passages} --passages "
             f"{args.passages}`", "",
             f"{len(questions)} real questions, {len(examples)} synthetic questions (learn's default data, strategies "
             f"{strategy_versions(SynthConfig())}). "
             f"{int(covered.sum())} real questions ({100 * covered.float().mean():.0f}%) have a twin (a synthetic "
             "question with the same normalised answer); the tables are over those.", "",
             "Retrieval@1 (the most similar synthetic question is a twin):", "", head,
             "|---" * (2 + len(LOOKUPS)) + "|"]
    for row in rows:
        lines.append(f"| {row['layer']} | {100 * row['cosine'][0]:.0f}% | "
                     + " | ".join(f"{100 * row[key][0]:.0f}%" for key in LOOKUPS) + " |")
    lines += ["", "Mean similarity to the best twin (cosine of the states; for the lookups, of the read weights):", "",
              head, "|---" * (2 + len(LOOKUPS)) + "|"]
    for row in rows:
        lines.append(f"| {row['layer']} | {row['cosine'][1]:.2f} | "
                     + " | ".join(f"{row[key][1]:.3f}" for key in LOOKUPS) + " |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
