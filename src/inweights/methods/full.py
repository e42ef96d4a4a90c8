"""Full fine-tuning: every weight of the transformer blocks trains (the token embedding, tied to the output
head, stays frozen: it is 168M of the default model's 268M numbers, and training it on a few documents only
moves the rare tokens they contain). The literature's reference point: it learns most per step and forgets
most. A memory is the trained tensors (`full.safetensors`, hundreds of MB for the default model, fp32);
`detach` copies the original weights back, so one loaded base can train and answer with many memories in turn.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_ORIGINAL = "_inweights_full_original"


class FullFineTune:
    name = "full"
    default_lr = 2e-5

    def attach(self, model, config):
        if hasattr(model, _ORIGINAL) or hasattr(model, "peft_config"):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        frozen = {id(p) for p in model.get_input_embeddings().parameters()}
        frozen |= {id(p) for p in model.get_output_embeddings().parameters()}
        trainable = {n: p for n, p in model.named_parameters() if id(p) not in frozen}
        setattr(model, _ORIGINAL, {n: p.detach().clone() for n, p in trainable.items()})
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
        return model

    def save(self, model, directory: Path) -> None:
        names = getattr(model, _ORIGINAL)
        params = dict(model.named_parameters())
        save_file({n: params[n].detach().contiguous() for n in names}, str(Path(directory) / "full.safetensors"))
        (Path(directory) / "full_config.json").write_text(json.dumps({"tensors": len(names)}))

    def load(self, model, directory: Path):
        tensors = load_file(str(Path(directory) / "full.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n in tensors if n not in params or params[n].shape != tensors[n].shape]
        if missing:
            raise ValueError(f"memory does not fit this base model: {missing[:3]}")
        setattr(model, _ORIGINAL, {n: params[n].detach().clone() for n in tensors})
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t)
        model.eval()
        return model

    def resume(self, model, directory: Path, config):
        """Attach a saved memory with its weights trainable, to go on training it (`learn --update`)."""
        model = self.attach(model, config)
        self._copy(model, load_file(str(Path(directory) / "full.safetensors")))
        return model

    @contextlib.contextmanager
    def disabled(self, model):
        params = dict(model.named_parameters())
        trained = {n: params[n].detach().clone() for n in getattr(model, _ORIGINAL)}
        self._copy(model, getattr(model, _ORIGINAL))
        try:
            yield model
        finally:
            self._copy(model, trained)

    def detach(self, model):
        self._copy(model, getattr(model, _ORIGINAL))
        delattr(model, _ORIGINAL)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @staticmethod
    def _copy(model, tensors: dict) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t)
