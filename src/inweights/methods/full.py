"""Full fine-tuning: every weight of the transformer blocks trains (the token embedding, tied to the output
head, stays frozen: it is 168M of the default model's 268M numbers, and training it on a few documents only
moves the rare tokens they contain). The literature's reference point: it learns most per step and forgets
most. A memory is the trained tensors (`full.safetensors`, hundreds of MB for the default model, fp32);
`detach` copies the original weights back, so one loaded base can train and answer with many memories in turn.

On a half-precision base (bfloat16, float16) the trainable weights are the base's own, so `attach` makes the
model's parameters float32 (fp32 master weights: an update of lr x gradient is mostly below bfloat16's
resolution, and AdamW's moments follow the parameters' dtype); the forward can still run under autocast.
`detach` puts them back in their own dtype, exactly as they were. `load` keeps the base's dtype: a memory
answers on a bfloat16 base in bfloat16.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from inweights.models import HALF_DTYPES

_ORIGINAL = "_inweights_full_original"
_HALF = "_inweights_full_half"  # {name: dtype} of the parameters attach made float32


class FullFineTune:
    name = "full"
    default_lr = 2e-5

    def attach(self, model, config):
        if hasattr(model, _ORIGINAL) or hasattr(model, "peft_config"):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        # fp32 master weights: a half-precision base's parameters become float32 while the memory is attached
        # (the parameters only, not the buffers, so that detach gives the base back bit for bit).
        half = {n: p.dtype for n, p in model.named_parameters() if p.dtype in HALF_DTYPES}
        for n, p in model.named_parameters():
            if n in half:
                p.data = p.data.float()
        setattr(model, _HALF, half)
        frozen = {id(p) for p in model.get_input_embeddings().parameters()}
        frozen |= {id(p) for p in model.get_output_embeddings().parameters()}
        trainable = {n: p for n, p in model.named_parameters() if id(p) not in frozen}
        setattr(model, _ORIGINAL, {n: p.detach().to(half.get(n, p.dtype), copy=True) for n, p in trainable.items()})
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
        half = getattr(model, _HALF, {})
        for n, p in model.named_parameters():
            if n in half:
                p.data = p.data.to(half[n])  # exact: the values were that dtype's before attach
        if hasattr(model, _HALF):
            delattr(model, _HALF)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @staticmethod
    def _copy(model, tensors: dict) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t)
