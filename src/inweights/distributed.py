"""Several processes, one memory: data-parallel training through Hugging Face Accelerate.

`accelerate launch --num_processes N -m inweights learn ...` (add `--cpu` on a machine without GPUs; torchrun
works the same) starts N copies of `learn`. Each loads the base on its own device; the main process makes the
synthetic data and training targets first (the others then read them from the workspace's caches, so every
process trains on the same rows), every process takes its share of each batch's rows under PyTorch's
DistributedDataParallel (prepared by Accelerate), and only the main process writes checkpoints and publishes
the version. With one process (no launcher) nothing here does anything and no process group is made.

With `--shard` (FSDP; PyTorch's `fully_shard`, also chosen by `accelerate launch --use_fsdp`), each process holds
only its 1/N of every decoder layer's weights (the base and the memory's parameters in them) and gathers a layer's
full weights just for its forward and backward, so a base too large for one device trains on several. The base
is loaded into CPU memory first and only each process's shards go to its device; the embeddings, the final norm
and the output head stay whole on every device. Gradients are reduce-scattered (averaged, like DDP's), so the
result is the same as DDP's and one process's. The memory's trainable parameters must live inside the decoder
layers, each in one (LoRA, the memory layer); checkpoints hold full tensors, so a sharded run resumes with any number of processes.

Why the result matches one process: the batch plan depends only on the seed, each process takes rows
rank::N of a batch, and each scales its summed loss by N / (scored positions of the whole batch), so the
gradients DDP averages are exactly the one-process gradient of the mean loss, up to floating-point order.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

_ACCELERATOR = None
SHARDABLE = ("lora", "memory_layer")  # methods whose trainable parameters each live inside one decoder layer


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


def teardown() -> None:
    """Leave the process group at the end of a launched job (Accelerate's end_training destroys it), so that no
    communication thread is still running when the interpreter exits; without a launcher nothing is done."""
    global _ACCELERATOR
    if _ACCELERATOR is not None:
        _ACCELERATOR.end_training()
        _ACCELERATOR = None


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


def fsdp_requested() -> bool:
    """True when the launcher asked for FSDP (`accelerate launch --use_fsdp` sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in {"1", "true", "yes"}


def shard(model, device) -> None:
    """Shard `model`'s decoder layers across the processes onto `device` (FSDP2: `fully_shard` on each layer),
    in place; the parameters outside the layers are moved whole to `device`. Raises InweightsError when a
    trainable parameter lies outside the layers (its gradient would not be averaged)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from inweights.errors import InweightsError
    from inweights.methods.lora import decoder_layers

    layers = decoder_layers(model)
    owners: dict[int, int] = {}  # trainable parameter -> how many layers hold it
    for layer in layers:
        for p in {id(p) for p in layer.parameters() if p.requires_grad}:
            owners[p] = owners.get(p, 0) + 1
    unfit = [n for n, p in model.named_parameters(remove_duplicate=False)
             if p.requires_grad and owners.get(id(p)) != 1]
    if unfit:
        raise InweightsError(f"--shard splits the decoder layers across processes, but this memory trains "
                             f"parameters outside them or shared between them ({', '.join(unfit[:3])}); use "
                             f"--method lora or memory_layer, or train without --shard")
    mesh = init_device_mesh(device.type, (world_size(),))
    for layer in layers:
        # Each layer is a root of its own (the embeddings and head are not sharded); a root keeps its weights
        # gathered after its forward unless told otherwise, and a frozen layer that no gradient passes through
        # would then stay whole.
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    with torch.no_grad():
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, value in store.items():
                    if value is not None and not isinstance(value, DTensor) and value.device != device:
                        value.data = value.data.to(device)


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor):
    """A sharded tensor's whole value (gathered from every process: all must call this); others as they are."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def like(value, reference):
    """`value` (a whole tensor) sharded as `reference` is; `value` itself when `reference` is not sharded."""
    if not is_sharded(reference):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(reference.device), reference.device_mesh, reference.placements,
                             src_data_rank=None)  # every process holds `value`: each keeps its own shard


def gather_trainable(model) -> None:
    """Replace each sharded trainable parameter of `model` by its whole value (every process), so the memory
    can be saved as from one process. The model is not trained further after this."""
    import torch

    for module in model.modules():
        for name, value in list(module._parameters.items()):
            if value is not None and value.requires_grad and is_sharded(value):
                module._parameters[name] = torch.nn.Parameter(value.full_tensor().detach(), requires_grad=True)


def sum_across(value: float) -> float:
    """The sum of a number over all processes."""
    if not active():
        return value
    import torch

    acc = accelerator()
    return float(acc.reduce(torch.tensor([value], dtype=torch.float64, device=acc.device), reduction="sum")[0])
