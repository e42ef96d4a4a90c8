"""The activation anchor: a penalty on how much each LoRA layer changes its output on general text.

For a LoRA layer y = W x + s B A x, the change its update makes on inputs x drawn from general text has mean
energy E||s B A x||^2 = s^2 tr(B A C A^T B^T), with C = E[x x^T] the second moment of the layer's inputs on that
text. C is measured once, with the adapters off, over the guard's general-text sequences; the penalty is then
exact and cheap at every step (an r x r matrix per layer), and it covers every token those inputs stand for,
not only the sequences the KL guard replays. Each layer's term is relative to the energy of its base output
on the same text, tr(W C W^T), so that layers of different scale weigh alike; the penalty is their mean.

It pushes the update into input directions that general text uses little, the idea behind knowledge-preserving
adapters built from activation covariances (CorDA) and null-space constrained editing (AlphaEdit); unlike a hard
projection it leaves how far to go to one weight, and the memory stays a plain PEFT LoRA.
"""

from __future__ import annotations

from typing import Sequence

import torch


class Anchor:
    """`weight` x the mean over the model's LoRA layers of E||delta y||^2 / E||y||^2 on general text."""

    def __init__(self, model, sequences: Sequence[Sequence[int]], weight: float, pad_id: int,
                 batch_size: int = 8):
        from peft.tuners.lora import LoraLayer

        self.weight = weight
        self.layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
        if not self.layers:
            raise ValueError("the activation anchor needs a LoRA memory; this model has no LoRA layer")
        if not sequences:
            raise ValueError("the activation anchor needs general text (the guard's replay sequences)")
        self.moments = input_moments(model, self.layers, sequences, pad_id, batch_size)
        self.energy = {}  # tr(W C W^T): the base layer's output energy on the same text
        for name, layer in self.layers:
            w = layer.base_layer.weight.float()
            self.energy[name] = float(((w @ self.moments[name]) * w).sum()).__abs__() + 1e-12

    def __call__(self) -> torch.Tensor:
        terms = []
        for name, layer in self.layers:
            for adapter in layer.active_adapters:
                a = layer.lora_A[adapter].weight  # r x in
                b = layer.lora_B[adapter].weight  # out x r
                inner = a @ self.moments[name].to(a.dtype) @ a.T  # r x r
                change = layer.scaling[adapter] ** 2 * ((b @ inner) * b).sum()
                terms.append(change / self.energy[name])
        return self.weight * torch.stack(terms).mean()


@torch.no_grad()
def input_moments(model, layers, sequences, pad_id: int, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per LoRA layer of `layers` ((name, module) pairs): C = mean over the real tokens of `sequences` of its input
    x x^T (float32, on the layer's device), with the adapters off, from the decoder alone (the inputs need no
    logits of the output head)."""
    sums: dict[str, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in layers:
        def hook(module, args, name=name):
            x = args[0].float()
            x = x[mask_holder["mask"]]  # the real tokens only, not padding
            sums[name] = sums.get(name, 0) + x.T @ x
        hooks.append(layer.base_layer.register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    backbone = model.get_base_model().base_model
    tokens = 0
    try:
        with model.disable_adapter():
            for start in range(0, len(sequences), batch_size):
                batch = [list(s) for s in sequences[start : start + batch_size]]
                width = max(len(s) for s in batch)
                ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=device)
                mask = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in batch], device=device)
                mask_holder["mask"] = mask
                backbone(input_ids=ids, attention_mask=mask.long())
                tokens += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
    return {name: sums[name] / tokens for name, _ in layers}
