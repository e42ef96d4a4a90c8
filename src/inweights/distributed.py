"""Several processes, one memory: data-parallel training through Hugging Face Accelerate.

`accelerate launch --num_processes N -m inweights learn ...` (add `--cpu` on a machine without GPUs; torchrun
works the same) starts N copies of `learn`. Each loads the base on its own device; the main process makes the
synthetic data and training targets first (the others then read them from the workspace's caches, so every
process trains on the same rows), every process takes its share of each batch's rows under PyTorch's
DistributedDataParallel (prepared by Accelerate), and only the main process writes checkpoints and publishes
the version. With one process (no launcher) nothing here does anything and no process group is made.

Why the result matches one process: the batch plan depends only on the seed, each process takes rows
rank::N of a batch, and each scales its summed loss by N / (scored positions of the whole batch), so the
gradients DDP averages are exactly the one-process gradient of the mean loss, up to floating-point order.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

_ACCELERATOR = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """True when this process is one of several started by a launcher."""
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def accelerator():
    """The process group's Accelerator, made on first use (only under a launcher). Its timeout allows the main
    process hours of synthesis while the others wait."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        _ACCELERATOR = Accelerator(cpu=not torch.cuda.is_available(),
                                   kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=12))])
    return _ACCELERATOR


def setup() -> None:
    """Join the process group before the base model is loaded, so that each process's "auto" device is its own GPU."""
    if active():
        accelerator()


def barrier() -> None:
    if active():
        accelerator().wait_for_everyone()


@contextmanager
def main_first():
    """The main process runs the block first; the others run it after, when its results are cached."""
    if not active():
        yield
        return
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def broadcast(value):
    """The main process's `value`, in every process."""
    if not active():
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def prepare(module):
    """`module` wrapped for data-parallel training (DistributedDataParallel, by Accelerate)."""
    return accelerator().prepare_model(module)


def sum_across(value: float) -> float:
    """The sum of a number over all processes."""
    if not active():
        return value
    import torch

    acc = accelerator()
    return float(acc.reduce(torch.tensor([value], dtype=torch.float64, device=acc.device), reduction="sum")[0])
