"""How long the forgetting guard's targets take: the base model's top-32 next tokens on its general-text rows.

Two ways to compute the same targets, timed in one process on the same rows, alternating:
- full head: the model's logits at every position of the padded batch, log-softmax over the 262k vocabulary,
  top k (how `guard.replay_targets` computed them until this benchmark was written);
- `guard.replay_targets` as it is now: the backbone once, the output head only at the positions that have a next
  token, top k of the logits minus their log-sum-exp (no full log-softmax tensor).
Both must give the same top-k ids and log-probabilities (checked). What a `learn` saves on top of this comes
from computing targets only for the rows its run draws (`train.replay_drawn`), recorded in each manifest as
`synthetic.replay_drawn`.

Run as:
    python benchmarks/guard_targets.py         # writes benchmarks/results/guard_targets.{md,json}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def full_head(base, rows: list[list[int]], top_k: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The baseline: log-softmax of the whole logits tensor, then top k, at every position of every row."""
    out, pad = [], base.tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(r) for r in batch)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
        logprobs = torch.log_softmax(base.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        values, indices = logprobs.topk(top_k, dim=-1)
        out.extend((indices[b, : len(r) - 1], values[b, : len(r) - 1]) for b, r in enumerate(batch))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="guard rows timed (of the default 1,024)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both ways")
    parser.add_argument("--base", default=None, help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guard_targets")
    args = parser.parse_args(argv)

    from inweights import guard
    from inweights.config import TrainConfig
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.store import Workspace

    base = load_base(args.base or DEFAULT_BASE)
    config = TrainConfig()
    texts = guard.replay_texts(base, config.replay_sequences, Workspace().cache_dir("replay"), seed=config.seed)
    texts = texts[: args.rows]
    rows = guard.replay_rows(base.tokenizer, texts, config.max_seq_len)
    positions = sum(len(r) - 1 for r in rows)
    times: dict[str, list[float]] = {"full head": [], "replay_targets": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        reference = full_head(base, rows, 32, 8)
        times["full head"].append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every row is computed
            t = time.perf_counter()
            now = guard.replay_targets(base, texts, Path(cache), max_len=config.max_seq_len)
            times["replay_targets"].append(time.perf_counter() - t)
    same_ids = sum(torch.equal(a[0], b[1]) for a, b in zip(reference, now))
    max_diff = max(float((a[1] - b[2]).abs().max()) for a, b in zip(reference, now))
    best = {name: min(ts) for name, ts in times.items()}
    result = {"base": base.name, "rows": len(rows), "positions": positions, "threads": torch.get_num_threads(),
              "seconds": times, "seconds_per_row": {k: v / len(rows) for k, v in best.items()},
              "speedup": best["full head"] / best["replay_targets"], "rows_with_identical_ids": same_ids,
              "max_logprob_difference": max_diff,
              "command": "python benchmarks/guard_targets.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guard_targets.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Guard targets: {len(rows)} rows ({positions:,} positions) of the default guard text, "
             f"{Path(base.name).name}, {torch.get_num_threads()} threads",
             "", "| way | best of {} rounds | s per row | vs full head |".format(args.rounds), "|---|---|---|---|"]
    for name, seconds in best.items():
        lines.append(f"| {name} | {seconds:.1f} s | {seconds / len(rows):.2f} | "
                     f"{best['full head'] / seconds:.2f}x |")
    lines += ["", f"Same top-32 ids on {same_ids} of {len(rows)} rows; largest log-prob difference {max_diff:.2e}.",
              f"Measured in one process, alternating. Command: `{result['command']}`"]
    (args.out / "guard_targets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
