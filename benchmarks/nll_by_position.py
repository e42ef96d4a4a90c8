"""Where along a window a memory's forgetting sits: WikiText-2 next-token NLL of the base model and of a memory
(the same base, the memory attached) by position in windows of 512 tokens, over the text's first --tokens tokens.

    python benchmarks/nll_by_position.py plane-lora-sft-guard-facts-all-strength-p1-8 \
        > benchmarks/results/nll_by_position/default_p1-8.json

The memory is any name in the workspace (benchmarks/strength.py --keep leaves its memory there). Prints one JSON
object: the mean NLL of base and memory and their difference for each range of positions, and the perplexity
change over all of them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lora_ablation import WINDOW, nll_by_position

from inweights.api import load_memory
from inweights.evaluate.general import load_wikitext
from inweights.evaluate.metrics import _leading_token_ids
from inweights.models import DEFAULT_BASE, load_base

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RANGES = [(0, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, WINDOW - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("memory", help="a memory in the workspace ('name' or 'name@N')")
    parser.add_argument("--tokens", type=int, default=8 * (WINDOW - 1), help="WikiText-2 tokens (whole windows)")
    args = parser.parse_args()
    base = load_base(DEFAULT_BASE)
    ids = _leading_token_ids(base.tokenizer, load_wikitext(DATA / "general" / "wikitext2_test.raw"), args.tokens)
    bos = base.tokenizer.bos_token_id
    before = nll_by_position(base.model, bos, ids)
    loaded = load_memory(args.memory, base=base)
    try:
        after = nll_by_position(loaded.model, bos, ids)
    finally:
        loaded.close()
    rows = [{"positions": [lo, hi], "base_nll": before[lo:hi].mean().item(), "memory_nll": after[lo:hi].mean().item(),
             "change_nats": (after[lo:hi].mean() - before[lo:hi].mean()).item()} for lo, hi in RANGES]
    change = (after.mean() - before.mean()).item()
    print(json.dumps({"memory": args.memory, "tokens": len(ids) // (WINDOW - 1) * (WINDOW - 1), "window": WINDOW,
                      "by_position": rows, "change_nats": change, "ppl_pct": 100 * (math.exp(change) - 1)}, indent=1))


if __name__ == "__main__":
    main()
