"""Which memory rows do the training questions read? The memory layer's lookup before and after standardising
its input, on learn's default (cloze) data for the plane's SQuAD passages. Forward passes only, no training.

For each training question, the rows read at its first answer position (the one that predicts the answer's
first token): how many distinct rows all questions read, how many questions read the most-read row, the mean
pairwise overlap (Jaccard) of their row sets, and, after the TF-IDF choice of trainable rows, the share of
general-text (replay) reads that land on a trainable row.

- centred: the old lookup (before commit 84d7419): queries centred on the mean query of the replay text.
- standardised: `MemoryLayer.prepare` as it is now (input centred and scaled per dimension on scored positions).

Run as:
    python benchmarks/memory_layer_reads.py            # writes benchmarks/results/memory_layer_reads.md
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--base", default=None, help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_layer_reads.md")
    args = parser.parse_args(argv)

    from inweights.config import SynthConfig, TrainConfig
    from inweights.corpus import chunk_documents, load_corpus
    from inweights.evaluate.questions import load_squad
    from inweights.guard import replay_targets, replay_texts
    from inweights.methods import METHODS
    from inweights.methods.memory_layer import _scored, _states, _wrapper
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.objectives import sft_rows
    from inweights.store import Workspace
    from inweights.synth import ExampleCache, synthesize

    documents, _ = load_squad(args.data / "squad" / "squad_dev.jsonl", args.passages)
    base = load_base(args.base or DEFAULT_BASE)
    workspace = Workspace()
    with tempfile.TemporaryDirectory() as folder:
        for doc_id, text in documents.items():
            (Path(folder) / f"{doc_id}.txt").write_text(text, encoding="utf-8")
        chunks = chunk_documents(load_corpus([folder]), base.tokenizer, SynthConfig.chunk_tokens)
    examples, _ = synthesize(chunks, None, SynthConfig(), ExampleCache(workspace.cache_dir("synth")), progress=False)
    items = sft_rows(base.tokenizer, examples, TrainConfig.max_seq_len, base.newline_id)
    train = TrainConfig(method="memory_layer")
    cache = workspace.cache_dir("replay")
    replay = replay_targets(base, replay_texts(base, train.replay_sequences, cache), cache, max_len=train.max_seq_len)

    method = METHODS["memory_layer"]
    model = method.attach(base.model, train)
    try:
        memory = _wrapper(model).memory
        first = [[int(i == s.index(1)) for i in range(len(s))] for s in map(_scored, items)]
        answer_states = torch.cat([x[m] for x, m in _states(model, [r[0] for r in items], 4096, first)])
        replay_states = [x[m] for x, m in _states(model, [r[0] for r in replay], 4096)]

        def measure() -> dict:
            sets = [set(r.tolist()) for r in memory.lookup(answer_states)[0]]
            pairs = list(itertools.combinations(sets, 2))
            trained = set(memory.row_index.tolist())
            reads = torch.cat([memory.lookup(x)[0].flatten() for x in replay_states]).tolist()
            hub = max(sum(row in s for s in sets) for row in set().union(*sets))
            return {"distinct": len(set().union(*sets)), "reads": sum(map(len, sets)), "hub": hub,
                    "jaccard": sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs),
                    "replay_on_trained": sum(r in trained for r in reads) / len(reads)}

        method.prepare(model, items, replay)  # standardised, and its trainable rows
        standardised = measure()
        raw = memory.raw_query.to(memory.query)
        memory.query.copy_(raw)  # the old lookup: the raw projection, centred on the replay text's mean query
        memory.center.copy_((torch.cat(replay_states).float() @ raw).mean(0))
        tf = method.read_counts(model, [r[0] for r in items], positions=[_scored(r) for r in items]).double()
        df = method.read_counts(model, [r[0] for r in replay], per_sequence=True).double()
        score = tf * torch.log((1.0 + len(replay)) / (1.0 + df))
        memory.select(torch.argsort(-score, stable=True)[: memory.rows.shape[0]].sort().values)
        centred = measure()
    finally:
        method.detach(model)

    lines = [f"# Memory-layer reads ({base.name}, learn's cloze data for SQuAD dev passages 1-{args.passages}: "
             f"{len(items)} training questions, {len(replay)} general-text samples)", "",
             "Command: `python benchmarks/memory_layer_reads.py`", "",
             "| lookup | distinct rows read at first-answer positions | questions reading the most-read row | "
             "mean pairwise Jaccard | general-text reads on trainable rows |", "|---|---|---|---|---|"]
    for name, r in (("centred on general text (before 84d7419)", centred), ("standardised (now)", standardised)):
        lines.append(f"| {name} | {r['distinct']:,} of {r['reads']:,} | {r['hub']} of {len(items)} | "
                     f"{r['jaccard']:.3f} | {100 * r['replay_on_trained']:.1f}% |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
