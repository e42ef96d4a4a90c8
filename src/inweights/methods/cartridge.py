"""Cartridge: a trained KV cache of a virtual prefix (after Cartridges, Eyuboglu et al. 2025).

The memory is one key and one value tensor per layer for `prefix_tokens` positions. Every forward pass of the
backbone sees them as the KV cache of a prefix that comes before its own tokens; the base stays frozen.

Design:
- Initialised from data: `prepare` runs the frozen base on BOS + the first p-1 tokens of the training rows and
  copies its per-layer keys/values (post-RoPE, as the cache holds them) into the parameters. The paper found
  this better than a random init; before `prepare` the positions after BOS are small random values.
- Position 0 holds the BOS token's keys/values, the attention sink, and is never trained: it is a separate
  frozen tensor (`sink_*`) put in front of the trainable positions (`keys.i`, `values.i`), so weight decay
  cannot touch it either.
- A forward pre-hook on the backbone does the rest, so `train.completion_loss` and `generate` need no change.
  Without a cache (or with an empty one) it passes a fresh `DynamicCache` filled with the prefix (expanded to the
  batch, not detached: gradients flow into the parameters). It always prepends p ones to a 2-D attention mask
  and adds p to the position ids (deriving them from the mask when none are given). Callers therefore see a
  model whose masks and positions cover only their own tokens, while the cache they get back includes the prefix.
- Saved as `cartridge.safetensors` (`keys.i` / `values.i`, shape heads x p x head_dim, sink included) and
  `cartridge_config.json` (prefix length, layer count, shapes, dtype).
- Precision: the tensors are float32 whatever the base's dtype (an update of lr x gradient is often below
  bfloat16's resolution). The hook casts them to the dtypes the base's own keys and values have in the cache
  under the current weights' dtype and autocast state (found once per such state by a one-token forward of the
  base: under autocast a float32 base caches float32 keys, after RoPE, but bfloat16 values).

Limits: the prefix behaves exactly like a literal prefix, so in sliding-window layers (Gemma-3) tokens further
than the window from it no longer see it; `prefix_tokens` must be below the sliding window. Attention masks must
be 2-D and passed by keyword. Every forward pays attention over p more keys.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

_ATTR = "cartridge"  # the module set on the causal LM while a cartridge is attached


class _State(torch.nn.Module):
    """The cartridge's tensors (1 x heads x positions x head_dim per layer), the hook handle and the on/off flag."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], trainable: bool):
        super().__init__()
        fp32 = lambda t: t.to(torch.float32, copy=True)  # float32 on any base (see the module's doc)
        frozen = lambda ts: torch.nn.ParameterList([torch.nn.Parameter(fp32(t[:, :, :1]), False) for t in ts])
        train = lambda ts: torch.nn.ParameterList([torch.nn.Parameter(fp32(t[:, :, 1:]), trainable) for t in ts])
        self.sink_keys, self.sink_values = frozen(keys), frozen(values)
        self.keys, self.values = train(keys), train(values)
        self.prefix_tokens = keys[0].shape[2]
        self.enabled = True
        self.handle = None
        self.unfrozen: list[torch.nn.Parameter] = []  # base parameters attach froze, thawed again by detach
        self.cache_dtypes: dict[tuple, list[tuple[torch.dtype, torch.dtype]]] = {}  # see `_cache_dtypes`

    def full(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values, sink included (float32)."""
        return (torch.cat([self.sink_keys[i], self.keys[i]], dim=2),
                torch.cat([self.sink_values[i], self.values[i]], dim=2))


class Cartridge:
    name = "cartridge"
    default_lr = 2e-2  # the entries are activations of order 1, not small weight deltas (untuned on 270m)

    def attach(self, model, config):
        p = config.prefix_tokens
        window = getattr(_backbone(model).config, "sliding_window", None)
        if p < 2 or (window and p >= window):
            raise ValueError(f"prefix_tokens must be at least 2 and below the sliding window ({window}), got {p}")
        sink_k, sink_v = _base_kv(model, [_bos(model)])  # the BOS keys/values at position 0: the frozen sink
        noise = lambda t: torch.cat([t, 0.02 * torch.randn(*t.shape[:2], p - 1, t.shape[3], dtype=t.dtype)
                                     .to(t.device)], dim=2)
        state = _install(model, [noise(k.float()) for k in sink_k], [noise(v.float()) for v in sink_v],
                         trainable=True)
        state.unfrozen = [q for n, q in model.named_parameters() if q.requires_grad and not n.startswith(_ATTR + ".")]
        for q in state.unfrozen:
            q.requires_grad_(False)
        return model

    def prepare(self, model, items, replay=()) -> None:
        """Start from the KV cache of BOS + the first p-1 tokens of the training rows (replay rows if too few)."""
        state, bos, pad = getattr(model, _ATTR), _bos(model), model.config.pad_token_id
        need = state.prefix_tokens - 1
        stream = list(islice((t for row in [*items, *replay] for t in row[0] if t not in (bos, pad)), need))
        if not stream:
            return
        ids = [bos] + (stream * (need // len(stream) + 1))[:need]  # a corpus shorter than the prefix repeats
        with self.disabled(model):
            keys, values = _base_kv(model, ids)
        with torch.no_grad():
            for i, (k, v) in enumerate(zip(keys, values)):
                state.sink_keys[i].copy_(k[:, :, :1]), state.keys[i].copy_(k[:, :, 1:])
                state.sink_values[i].copy_(v[:, :, :1]), state.values[i].copy_(v[:, :, 1:])

    def save(self, model, directory: Path) -> None:
        state = getattr(model, _ATTR)
        tensors = {}
        for i in range(len(state.keys)):
            k, v = state.full(i)
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = k[0].detach().contiguous(), v[0].detach().contiguous()
        save_file(tensors, Path(directory) / "cartridge.safetensors")
        meta = {"prefix_tokens": state.prefix_tokens, "layers": len(state.keys),
                "shapes": [list(tensors[f"keys.{i}"].shape) for i in range(len(state.keys))],
                "dtype": str(tensors["keys.0"].dtype).removeprefix("torch.")}
        (Path(directory) / "cartridge_config.json").write_text(json.dumps(meta, indent=2))

    def load(self, model, directory: Path):
        meta = json.loads((Path(directory) / "cartridge_config.json").read_text())
        tensors = load_file(Path(directory) / "cartridge.safetensors")
        device = next(model.parameters()).device  # float32 on any base: the hook casts (see the module's doc)
        get = lambda kind: [tensors[f"{kind}.{i}"][None].to(device=device, dtype=torch.float32)
                            for i in range(meta["layers"])]
        _install(model, get("keys"), get("values"), trainable=False)
        model.eval()
        return model

    def resume(self, model, directory: Path, config):
        """Attach a saved memory with its entries trainable, to go on training it (`learn --update`)."""
        meta = json.loads((Path(directory) / "cartridge_config.json").read_text())
        model = self.attach(model, replace(config, prefix_tokens=meta["prefix_tokens"]))
        tensors, state = load_file(Path(directory) / "cartridge.safetensors"), getattr(model, _ATTR)
        with torch.no_grad():
            for i in range(meta["layers"]):
                k, v = (tensors[f"{kind}.{i}"][None].to(state.keys[i]) for kind in ("keys", "values"))
                state.sink_keys[i].copy_(k[:, :, :1]), state.keys[i].copy_(k[:, :, 1:])
                state.sink_values[i].copy_(v[:, :, :1]), state.values[i].copy_(v[:, :, 1:])
        return model

    def disabled(self, model):
        return _switched_off(getattr(model, _ATTR))

    def detach(self, model):
        state = getattr(model, _ATTR)
        state.handle.remove()
        for q in state.unfrozen:
            q.requires_grad_(True)
        delattr(model, _ATTR)
        return model


def _backbone(model):
    return getattr(model, model.base_model_prefix)


def _bos(model) -> int:
    bos = model.config.bos_token_id
    if bos is None:
        raise ValueError("a cartridge needs a model with a BOS token for its attention-sink position")
    return bos


def _base_kv(model, ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values (1 x heads x len(ids) x head_dim) of the frozen base on `ids`."""
    device = next(model.parameters()).device
    with torch.no_grad():
        cache = _backbone(model)(input_ids=torch.tensor([ids], device=device), use_cache=True).cache
    return [layer.keys.clone() for layer in cache.layers], [layer.values.clone() for layer in cache.layers]


def _install(model, keys, values, trainable: bool) -> _State:
    if hasattr(model, _ATTR) or hasattr(model, "get_base_model"):
        raise ValueError("the model already carries a memory; attach to a plain base model")
    state = _State(keys, values, trainable)
    setattr(model, _ATTR, state)  # registers the tensors as parameters `cartridge.*` of the model
    backbone = _backbone(model)
    state.handle = backbone.register_forward_pre_hook(
        lambda module, args, kwargs: _with_prefix(state, module, args, kwargs), with_kwargs=True)
    return state


def _cache_dtypes(state: _State, backbone) -> list[tuple[torch.dtype, torch.dtype]]:
    """Per layer, the dtypes of the keys and values the base itself puts in the cache, under the backbone's
    weights' dtype and the autocast state now: found by a one-token forward of the base the first time."""
    weight = next(backbone.parameters())
    kind = weight.device.type
    autocast = torch.is_autocast_enabled(kind)
    key = (weight.dtype, kind, autocast, torch.get_autocast_dtype(kind) if autocast else None)
    if key not in state.cache_dtypes:
        with _switched_off(state), torch.no_grad():
            cache = backbone(input_ids=torch.zeros(1, 1, dtype=torch.long, device=weight.device),
                             use_cache=True).cache
        layers = cache.layers if cache is not None else []  # no cache (gradient checkpointing): the weights' dtype
        state.cache_dtypes[key] = ([(layer.keys.dtype, layer.values.dtype) for layer in layers]
                                   or [(weight.dtype, weight.dtype)] * len(state.keys))
    return state.cache_dtypes[key]


def _with_prefix(state: _State, module, args, kwargs):
    """The pre-hook: put the prefix in the cache, the mask and the positions of one backbone call."""
    if not state.enabled:
        return None
    config = module.config
    p = state.prefix_tokens
    name = "past_key_values" if kwargs.get("past_key_values") is not None else "cache"
    kwargs.pop("past_key_values" if name == "cache" else "cache", None)
    tokens = args[0] if args else kwargs.get("input_ids")
    batch = (tokens if tokens is not None else kwargs["inputs_embeds"]).shape[0]
    cache = kwargs.get(name)
    if cache is None or cache.get_seq_length() == 0:
        cache = cache if cache is not None else DynamicCache(config=config)
        dtypes = _cache_dtypes(state, module)
        for i in range(len(state.keys)):
            k, v = state.full(i)
            k, v = k.to(dtypes[i][0]), v.to(dtypes[i][1])  # no-ops on a float32 base without autocast
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        kwargs[name] = cache
    mask = kwargs.get("attention_mask")
    if mask is not None:
        if not torch.is_tensor(mask) or mask.dim() != 2:
            raise ValueError("a cartridge needs a 2-D attention mask (batch x tokens)")
        mask = torch.cat([torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device), mask], dim=1)
        kwargs["attention_mask"] = mask
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + p
    elif mask is not None:  # skip left padding, as generate does; without a mask the cache length gives them
        length = (tokens if tokens is not None else kwargs["inputs_embeds"]).shape[1]
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    return args, kwargs


@contextlib.contextmanager
def _switched_off(state: _State):
    before, state.enabled = state.enabled, False
    try:
        yield
    finally:
        state.enabled = before
