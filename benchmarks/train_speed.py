"""Training throughput of inweights' loop against a plain Hugging Face `Trainer` + PEFT run, in one process, and
of our loop in 1 and N data-parallel processes (distributed.py) on the same machine.

Same model, same data (batches of 4 x 256 tokens with the loss on the last 128 tokens of each row, like a
completion after a prompt), same LoRA (r=16, alpha=32, all attention and MLP projections), same optimizer and
step count. The Trainer computes logits at every position, as any plain causal-LM fine-tune does; our loop
applies the LM head only where there is loss. With `--processes 1,2` our loop also runs as separate jobs under
torchrun, each process with cores/N threads (on GPUs: one GPU each), so every row uses the whole machine.
Results go to benchmarks/results/train_speed.{json,md}, with the device named.

Run as:
    python benchmarks/train_speed.py                          # embedded gemma-3-270m, CPU, 1 vs 2 processes
    python benchmarks/train_speed.py --device cuda --dtype bfloat16 --processes 1 --out /tmp/gpu_speed
    python benchmarks/train_speed.py --base DIR --steps 4 --out /tmp/speed   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from inweights import distributed
from inweights.config import TrainConfig
from inweights.demo import demo_dir
from inweights.methods import METHODS
from inweights.methods.lora import target_modules
from inweights.models import load_base
from inweights.train import IGNORE, train

RESULTS = Path(__file__).parent / "results"


def make_rows(tokenizer, n_rows: int, seq_len: int, loss_len: int) -> list[tuple[list[int], list[int]]]:
    text = " ".join(p.read_text() for p in sorted((demo_dir() / "handbook").glob("*.md")))
    text += " " + (demo_dir().parent / "general_text.txt").read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    for i in range(n_rows):
        start = (i * 97) % (len(ids) - seq_len)
        row = [tokenizer.bos_token_id] + ids[start : start + seq_len - 1]
        rows.append((row, [IGNORE] * (seq_len - loss_len) + row[seq_len - loss_len :]))
    return rows


def time_ours(base, rows, config: TrainConfig, warmup: int, tmp: Path) -> dict:
    model = METHODS["lora"].attach(base.model, config)
    try:
        # Warm-up steps first (allocator, threads), then the timed steps, each as one run of the loop.
        train(model, base.tokenizer, rows[: 4 * warmup], 4 * warmup, replace(config, max_steps=warmup), tmp / "w",
              progress=False, compute_dtype=base.dtype)
        result = train(model, base.tokenizer, rows[4 * warmup :], len(rows) - 4 * warmup, config, tmp / "t",
                       progress=False, compute_dtype=base.dtype)
    finally:
        model.unload()
    return {"steps": result.steps, "tokens": result.tokens, "seconds": result.seconds,
            "tokens_per_s": result.tokens / result.seconds}


def time_trainer(base, rows, config: TrainConfig, warmup: int, tmp: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            ids, labels = rows[i]
            return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                    "attention_mask": torch.ones(len(ids), dtype=torch.long)}

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, bias="none",
                      target_modules=target_modules(base.model, config), task_type="CAUSAL_LM")
    model = get_peft_model(base.model, lora)
    clock = Clock()
    args = TrainingArguments(output_dir=str(tmp / "trainer"), per_device_train_batch_size=4,
                             max_steps=len(rows) // 4, learning_rate=config.lr, lr_scheduler_type="cosine",
                             warmup_steps=1, logging_steps=1000, save_strategy="no", report_to=[],
                             use_cpu=base.device.type == "cpu", dataloader_num_workers=0, seed=0,
                             disable_tqdm=True, bf16=base.dtype == torch.bfloat16, fp16=base.dtype == torch.float16)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[clock])
    try:
        trainer.train()
    finally:
        model.unload()
    timed = clock.marks[warmup - 1 :]
    steps = len(timed) - 1
    tokens = steps * 4 * len(rows[0][0])
    seconds = timed[-1] - timed[0]
    return {"steps": steps, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="gemma-3-270m")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--processes", default="1,2", help="process counts of our loop (default 1,2)")
    parser.add_argument("--ours-only", type=Path, default=None, help=argparse.SUPPRESS)  # a worker: write here
    parser.add_argument("--out", default=str(RESULTS / "train_speed"))
    args = parser.parse_args()

    import tempfile

    distributed.setup()
    base = load_base(args.base, dtype=args.dtype, device=args.device)
    rows = make_rows(base.tokenizer, 4 * (args.steps + args.warmup), args.seq_len, args.seq_len // 2)
    config = TrainConfig(epochs=1, replay_fraction=0.0, batch_tokens=4 * args.seq_len, max_seq_len=args.seq_len,
                         checkpoint_every=10**9, lr=1e-4)
    if args.ours_only:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            ours = time_ours(base, rows, config, args.warmup, Path(tmp))
        if distributed.is_main():
            args.ours_only.write_text(json.dumps(ours | {"threads": torch.get_num_threads()}))
        return
    device = describe_device(base.device)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ours = time_ours(base, rows, config, args.warmup, Path(tmp))
        torch.manual_seed(0)
        trainer = time_trainer(base, rows, config, args.warmup, Path(tmp))
        processes = {}
        for n in [int(n) for n in args.processes.split(",") if n.strip()]:
            processes[n] = run_processes(n, args, Path(tmp) / f"p{n}.json", base.device)
    dtype = str(base.dtype).removeprefix("torch.")
    result = {
        "benchmark": "train_speed", "base": args.base, "device": device, "dtype": dtype,
        "batch": f"4 x {args.seq_len} tokens, loss on last {args.seq_len // 2}",
        "lora": {"r": config.rank, "alpha": config.alpha, "targets": target_modules(base.model, config)},
        "inweights": ours, "hf_trainer_peft": trainer, "speedup": ours["tokens_per_s"] / trainer["tokens_per_s"],
        "processes": processes,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "command": "python " + " ".join(["benchmarks/train_speed.py"] + sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# Training throughput ({args.base}, {result['batch']}, LoRA r{config.rank} on all projections)", "",
             "| loop | device | dtype | processes | steps timed | tokens/s | vs HF Trainer |", "|---|---|---|---|---|---|---|",
             f"| HF Trainer + PEFT (logits at every position) | {device} | {dtype} | 1 | {trainer['steps']} | "
             f"{trainer['tokens_per_s']:.1f} | 1.00 |",
             f"| inweights (logits only where loss) | {device} | {dtype} | 1 (in this process) | {ours['steps']} | "
             f"{ours['tokens_per_s']:.1f} | {result['speedup']:.2f} |"]
    for n, r in processes.items():
        lines.append(f"| inweights, torchrun | {device} | {dtype} | {n} x {r['threads']} threads | {r['steps']} | "
                     f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / trainer['tokens_per_s']:.2f} |")
    lines += ["", f"Measured in one session, one after another. Command: `{result['command']}`"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


def run_processes(n: int, args, out: Path, device) -> dict:
    """Our loop as a separate job of `n` processes under torchrun (cores / n threads each on the CPU)."""
    threads = max(1, (os.cpu_count() or 1) // n) if device.type == "cpu" else 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
               __file__, "--ours-only", str(out), "--base", args.base, "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--seq-len", str(args.seq_len), "--device", "auto" if device.type == "cuda" else
               str(device), "--dtype", args.dtype]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def describe_device(device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
