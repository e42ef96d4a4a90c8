"""Run by tests/test_distributed.py in one or more processes (under `accelerate launch`): train a LoRA memory on
the tiny model with `inweights.train.train` and save its weights; `--crash-after-checkpoint` stops the run (every
process) right after its first checkpoint is written, as a killed job would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def rows(tokenizer) -> list[tuple[list[int], list[int]]]:
    """QA rows of several lengths, so that batches hold several rows each."""
    from inweights.train import tokenize_example

    facts = [("When did the Oslo office open?", "March 2019"), ("How many people work in Oslo?", "forty"),
             ("What boils at one hundred degrees?", "Water"), ("Who jumps over the lazy dog?", "the quick brown fox"),
             ("Where is the office of Fjordlight?", "Oslo"), ("What opened in March 2019?", "the Oslo office")]
    out = []
    for i in range(3):
        for question, answer in facts:
            prompt = f"Question: {question}{' Please answer.' * i}\nAnswer:"
            out.append(tokenize_example(tokenizer, prompt, " " + answer, 128, None))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-after-checkpoint", action="store_true")
    parser.add_argument("--float64", action="store_true", help="base and memory in float64: rounding out of the way")
    parser.add_argument("--shard", action="store_true", help="FSDP: shard the decoder layers across the processes")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from inweights import distributed, train as training
    from inweights.config import TrainConfig
    from inweights.methods import METHODS
    from inweights.models import load_base

    distributed.setup()
    base = load_base(args.base, dtype=torch.float64 if args.float64 else args.dtype, device="cpu")
    config = TrainConfig(method=args.method, epochs=4, batch_tokens=256, checkpoint_every=3, replay_fraction=0.0, lr=1e-2)
    torch.manual_seed(config.seed)
    model = METHODS[args.method].attach(base.model, config)
    if args.float64:
        model.double()
    if args.crash_after_checkpoint:
        save = training._save_checkpoint

        def save_then_stop(*a, **k):
            save(*a, **k)
            sys.exit(3)

        training._save_checkpoint = save_then_stop
    data = rows(base.tokenizer)
    if hasattr(METHODS[args.method], "prepare"):
        METHODS[args.method].prepare(model, data, [])
    name, layer = next((n, p) for n, p in model.named_parameters() if "layers.0." in n and not p.requires_grad)
    whole = layer.numel()
    result = training.train(model, base.tokenizer, data, len(data), config, args.run_dir, progress=False,
                            compute_dtype=base.dtype, shard=torch.device("cpu") if args.shard else None)
    layer = dict(model.named_parameters())[name]  # a shard of it, under --shard
    held = layer.to_local().numel() if hasattr(layer, "to_local") else layer.numel()
    if distributed.is_main():
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, args.out)
        (args.out.with_suffix(".json")).write_text(
            f'{{"steps": {result.steps}, "resumed_from_step": {result.resumed_from_step}, '
            f'"world": {distributed.world_size()}, "final_loss": {result.final_loss}, '
            f'"layer_weight_held": {held}, "layer_weight_whole": {whole}}}')
    distributed.teardown()
    assert not torch.distributed.is_initialized(), "the process group outlived the job"
    return 0


if __name__ == "__main__":
    sys.exit(main())
