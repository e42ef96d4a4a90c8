"""Where a LoRA memory's forgetting lives: one memory learned from SQuAD dev passages 1-8 (the tuning passages),
then, with parts of it switched off or scaled at evaluation time, closed-book exact match on those passages'
126 questions and WikiText-2 NLL over its first 2,048 tokens (4 windows of 512), by position in the window.

    python benchmarks/lora_ablation.py > benchmarks/results/lora_ablation/results.jsonl
    python benchmarks/lora_ablation.py --memory other-name --train '{"rank": 4}'   # another memory

The memory is learned once with the default settings (or `--train`'s TrainConfig fields) under the name
`--memory` in the workspace and reused on the next run. Each output line is one condition: scale0 (the base),
scale1 (the memory as trained), scale S (every LoRA update times S), mlp_only / attn_only (the other updates
off), first_half / second_half (of the decoder layers), no_last3. The updates were trained together, so
switching some off shows where the effect sits, not what a memory trained on those layers alone would do.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer

from inweights.api import learn, load_memory
from inweights.config import LearnConfig, SynthConfig, TrainConfig
from inweights.errors import InweightsError
from inweights.evaluate.conditions import answer_short, score
from inweights.evaluate.general import load_wikitext
from inweights.evaluate.metrics import _leading_token_ids
from inweights.evaluate.questions import load_squad
from inweights.models import DEFAULT_BASE, load_base
from inweights.store import Workspace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MLP = ("gate_proj", "up_proj", "down_proj")
WINDOW = 512
BUCKETS = [(0, 64), (64, 128), (128, 256), (256, WINDOW - 1)]


def memory_version(name: str, train_fields: dict, base, workspace: Workspace, documents: dict, questions: list):
    try:
        return workspace.get(name)
    except InweightsError:
        pass
    config = LearnConfig(base=DEFAULT_BASE, synth=SynthConfig(), train=TrainConfig(**train_fields))
    with tempfile.TemporaryDirectory() as folder:
        for doc, text in documents.items():
            (Path(folder) / f"{doc}.txt").write_text(text, encoding="utf-8")
        start = time.perf_counter()
        version = learn([folder], name, config, base=base, workspace=workspace,
                        exclude_questions=[q.question for q in questions], progress=False, yes=True)
    print(f"learned {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return version


@torch.no_grad()
def nll_by_position(model, bos: int, ids: list[int]) -> torch.Tensor:
    """Mean next-token NLL at each position of the full windows of WINDOW tokens (BOS first)."""
    total, windows = torch.zeros(WINDOW - 1), 0
    for start in range(0, len(ids) - (WINDOW - 1) + 1, WINDOW - 1):
        x = torch.tensor([[bos] + ids[start : start + WINDOW - 1]])
        total += F.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:], reduction="none")
        windows += 1
    return total / windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", default="diag-default", help="memory name (learned if missing)")
    parser.add_argument("--train", default="{}", help="TrainConfig fields as JSON, for a memory learned here")
    parser.add_argument("--tokens", type=int, default=2048, help="WikiText-2 tokens")
    args = parser.parse_args()

    documents, questions = load_squad(DATA / "squad" / "squad_dev.jsonl", 8)
    base = load_base(DEFAULT_BASE)
    workspace = Workspace()
    version = memory_version(args.memory, json.loads(args.train), base, workspace, documents, questions)
    model, tok = load_memory(version.ref, base=base, workspace=workspace).model, base.tokenizer
    ids = _leading_token_ids(tok, load_wikitext(DATA / "general" / "wikitext2_test.raw"), args.tokens)

    lora = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    if not lora:
        parser.error(f"{args.memory} is not a LoRA memory")
    trained = {name: dict(module.scaling) for name, module in lora}
    layer = lambda name: int(name.split("layers.")[1].split(".")[0])  # noqa: E731
    n_layers = max(layer(name) for name, _ in lora) + 1

    def run(label: str, factor) -> None:
        for name, module in lora:
            for key in module.scaling:
                module.scaling[key] = trained[name][key] * factor(name)
        start = time.perf_counter()
        answers = answer_short(model, tok, base.stop_token_ids, questions, [None] * len(questions))
        nll = nll_by_position(model, tok.bos_token_id, ids)
        print(json.dumps({"label": label, "em": round(100 * score(questions, answers)["em"], 1),
                          "ppl": round(math.exp(float(nll.mean())), 3),
                          "nll_by_pos": {str(b): round(float(nll[a:b].mean()), 3) for a, b in BUCKETS},
                          "s": round(time.perf_counter() - start)}), flush=True)

    run("scale0", lambda name: 0.0)
    run("scale1", lambda name: 1.0)
    for s in (0.5, 0.75):
        run(f"scale{s}", lambda name, s=s: s)
    run("mlp_only", lambda name: float(any(p in name for p in MLP)))
    run("attn_only", lambda name: float(not any(p in name for p in MLP)))
    run("first_half", lambda name: float(layer(name) < n_layers // 2))
    run("second_half", lambda name: float(layer(name) >= n_layers // 2))
    run("no_last3", lambda name: float(layer(name) < n_layers - 3))


if __name__ == "__main__":
    main()
