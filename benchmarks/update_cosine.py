"""How alike two LoRA memories' updates are: per adapted module, the cosine between their updates B A (as
matrices, from the saved factors, without forming them), summarised by module kind.

Averaging memories forgets less only where their updates differ (the mean of two nearly orthogonal updates is
shorter than either, the mean of two alike ones is the same update), so this says which ways of training two
memories can make an average worth having: other seeds, or one seed trained with dropout, decay or averaging.

Run as (memories of the workspace, e.g. kept by benchmarks/strength.py --keep):
    python benchmarks/update_cosine.py plane-lora-sft-guard-facts-all-strength-p1-24 \\
        plane-lora-sft-guard-facts-all-sd1-strength-p1-24 plane-lora-sft-guard-facts-all-dp0p1-strength-p1-24
The first memory is compared with each of the others; prints a Markdown table (--out also writes it).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strength_lines import show  # noqa: E402  (print and write a report)


def factors(directory: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (A, B) from a saved PEFT LoRA (the scaling alpha / r is common to a module's two
    memories of the same config and cancels in a cosine)."""
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    found: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        for part in ("A", "B"):
            marker = f".lora_{part}.weight"
            if key.endswith(marker):
                found[key[: -len(marker)]][part] = value.double()
    return {name: (f["A"], f["B"]) for name, f in found.items()}


def update_inner(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> float:
    """<B1 A1, B2 A2> (Frobenius) = sum((B1^T B2) * (A1 A2^T)): r x r products only."""
    return float(((b1.T @ b2) * (a1 @ a2.T)).sum())


def cosines(first: Path, second: Path) -> dict[str, float]:
    """Module name -> the cosine between the two memories' updates of it."""
    one, two = factors(first), factors(second)
    if one.keys() != two.keys():
        raise SystemExit(f"{first} and {second} adapt different modules")
    out = {}
    for name, (a1, b1) in one.items():
        a2, b2 = two[name]
        norms = (update_inner(a1, b1, a1, b1) * update_inner(a2, b2, a2, b2)) ** 0.5
        out[name] = update_inner(a1, b1, a2, b2) / norms if norms else float("nan")
    return out


def report(workspace, names: list[str]) -> str:
    first = workspace.get(names[0])
    lines = [f"# Cosine between LoRA updates, {first.ref} against each", "",
             "| memory | module kind | modules | mean | min | max |", "|---|---|---|---|---|---|"]
    for name in names[1:]:
        other = workspace.get(name)
        by_kind = defaultdict(list)
        for module, value in cosines(first.path, other.path).items():
            by_kind[module.rsplit(".", 1)[-1]].append(value)
        for kind, values in sorted(by_kind.items()):
            lines.append(f"| {other.ref} | {kind} | {len(values)} | {sum(values) / len(values):.3f} | "
                         f"{min(values):.3f} | {max(values):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("memories", nargs="+", help="memory names (NAME or NAME@VERSION); the first against the rest")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if len(args.memories) < 2:
        raise SystemExit("name at least two memories")
    from inweights.store import Workspace

    return show(report(Workspace(), args.memories), args.out)


if __name__ == "__main__":
    main()
