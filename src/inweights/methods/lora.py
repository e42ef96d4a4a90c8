"""LoRA through PEFT: low-rank updates on the chosen linear layers. Saved in PEFT's own format
(`adapter_config.json` + `adapter_model.safetensors`), so vLLM and PEFT load a memory as it is.

Without `target_modules` in the config, the targets are found by architecture: every `torch.nn.Linear` inside
the decoder layers (attention and MLP projections, whatever a family calls them; never the embedding or the
output head), named by the shortest module-name suffix that PEFT matches to those layers alone. The adapters'
weights are float32 whatever the base's dtype (PEFT's `autocast_adapter_dtype`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer


class LoRA:
    name = "lora"
    default_lr = 5e-4

    def attach(self, model, config):
        if isinstance(model, PeftModel):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                          target_modules=target_modules(model, config), task_type="CAUSAL_LM",
                          layers_to_transform=list(config.layers) or None)
        return get_peft_model(model, lora)

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(str(directory))
        (Path(directory) / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: the manifest says more

    def load(self, model, directory: Path):
        peft_model = PeftModel.from_pretrained(model, str(directory), is_trainable=False)
        peft_model.eval()
        return peft_model

    def resume(self, model, directory: Path, config):
        """Attach a saved memory with its weights trainable, to go on training it (`learn --update`)."""
        if isinstance(model, PeftModel):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        return PeftModel.from_pretrained(model, str(directory), is_trainable=True)

    def scale(self, model, factor: float) -> None:
        """Multiply the update by `factor`, in place: each LoRA layer's scaling and the alpha that saving
        writes (servers rebuild the scaling from it)."""
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.scaling:
                    module.scaling[adapter] *= factor
        for config in model.peft_config.values():
            config.lora_alpha *= factor

    def disabled(self, model):
        return model.disable_adapter()

    def detach(self, model):
        return model.unload()


def quiet_directions(moment: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """The eigenvectors (columns) of a second moment with the lowest `share` of its eigenvalues."""
    _, vectors = torch.linalg.eigh(moment.double())  # ascending eigenvalues
    return vectors[:, : max(1, round(share * vectors.shape[1]))].float()


@torch.no_grad()
def init_quiet(model, sequences, pad_id: int, share: float = 0.5) -> None:
    """Draw each LoRA layer's A factor anew inside the input directions that general text uses least, in place:
    the eigenvectors of the layer's input second moment over the tokens of `sequences` (token id lists) whose
    eigenvalues are the lowest `share` of them, each row of A a random mix of those directions at the
    norm PEFT gave it. B is still zero, so the model is unchanged until training; as A moves little while B
    grows, the update B A then reads mostly what general text leaves quiet (the idea of null-space editing and
    of knowledge-preserving LoRA inits). On the SQuAD tuning passages it cut WikiText-2's rise but cost more on
    the general tasks (docs/benchmarks.md)."""
    if not 0.0 < share <= 1.0:
        raise ValueError("share must be in (0, 1]")
    from inweights.anchor import input_moments

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]
    if not sequences:
        raise ValueError("init_quiet needs general text (the guard's rows)")
    moments = input_moments(model, layers, list(sequences), pad_id)
    for name, module in layers:
        a = module.lora_A["default"].weight
        quiet = quiet_directions(moments[name], share)
        rows = torch.randn(a.shape[0], quiet.shape[1]) @ quiet.T.cpu()
        rows *= a.norm(dim=1, keepdim=True).cpu() / rows.norm(dim=1, keepdim=True)
        a.copy_(rows.to(a.device, a.dtype))


def average(model, directories) -> PeftModel:
    """A PeftModel on the plain base `model` whose one adapter ("default", as a saved memory has) is the mean of the
    LoRA updates saved in `directories`: PEFT's "cat" combination, one adapter whose rank is the sum of theirs (the
    A factors stacked, each times its weight 1/n and its scaling; the B factors side by side; alpha = rank), so its
    update is exactly the mean of theirs. `learn --seeds` saves this; vLLM serves it like any LoRA."""
    if isinstance(model, PeftModel):
        raise ValueError("the model already carries a memory; average onto a plain base model")
    names = [f"part{i}" for i in range(len(directories))]
    peft_model = PeftModel.from_pretrained(model, str(directories[0]), adapter_name=names[0], is_trainable=False)
    for name, directory in zip(names[1:], directories[1:]):
        peft_model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
    peft_model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "default", combination_type="cat")
    peft_model.set_adapter("default")
    for name in names:
        peft_model.delete_adapter(name)
    for parameter in peft_model.parameters():
        parameter.requires_grad_(False)
    peft_model.eval()
    return peft_model


@torch.no_grad()
def truncate(model, rank: int | None = None, drop: int = 0) -> None:
    """Keep each LoRA module's update B @ A only along its singular directions drop, ..., rank - 1 (largest first),
    in place: `rank` alone gives the best rank-`rank` approximation of the update, `drop` removes its largest
    directions. The factors keep their shape, the rest of their rows and columns zero. An update of rank r is
    factored through two thin QRs and an r x r SVD, never the full matrix."""
    if (rank is not None and rank < 1) or drop < 0 or (rank is not None and drop >= rank):
        raise ValueError("rank must be >= 1 and above drop, drop >= 0")
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # (r, in), (out, r)
            last = a.shape[0] if rank is None else min(rank, a.shape[0])
            if drop == 0 and last == a.shape[0]:
                continue
            qb, rb = torch.linalg.qr(b.float())
            qa, ra = torch.linalg.qr(a.float().T)
            u, s, vh = torch.linalg.svd(rb @ ra.T)
            kept = slice(drop, last)
            root = s[kept].sqrt()
            new_b = torch.zeros_like(b)
            new_a = torch.zeros_like(a)
            new_b[:, :last - drop] = (qb @ u[:, kept] * root).to(b.dtype)
            new_a[:last - drop] = ((qa @ vh[kept].T) * root).T.to(a.dtype)
            b.copy_(new_b)
            a.copy_(new_a)


def target_modules(model, config) -> list[str]:
    """The config's target modules as given, or, when it names none, those found by `linear_targets`."""
    return list(config.target_modules) or linear_targets(model)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM: `get_decoder().layers` where the model has them (Llama, Qwen2,
    Gemma and most families), else its ModuleList with `num_hidden_layers` entries."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return layers
    count = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    found = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if not found:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}; give target_modules")
    return found[0]


def linear_targets(model) -> list[str]:
    """Every `torch.nn.Linear` inside the decoder layers, as the module-name suffixes PEFT takes: for each, the
    shortest suffix of its name (its own name, e.g. `q_proj`, where that is enough) that matches no module outside
    the decoder layers' linear layers; the full name where no shorter one does."""
    inside = {id(m) for m in decoder_layers(model).modules() if isinstance(m, torch.nn.Linear)}
    named = [(n.split("."), id(m)) for n, m in model.named_modules() if n]
    outside: set[str] = set()  # suffixes that also name some module other than these linear layers
    for parts, ident in named:
        if ident not in inside:
            outside.update(".".join(parts[-k:]) for k in range(1, len(parts) + 1))
    targets: set[str] = set()
    for parts, ident in named:
        if ident in inside:
            suffixes = (".".join(parts[-k:]) for k in range(1, len(parts) + 1))
            targets.add(next((s for s in suffixes if s not in outside), ".".join(parts)))
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layers in its decoder layers; give target_modules")
    return sorted(targets)
