"""Export a memory for other servers: a PEFT adapter folder for vLLM, or a plain model with the memory merged in.

    peft    adapter_config.json + adapter_model.safetensors, checked against what vLLM's LoRA loader accepts:
            `vllm serve BASE --enable-lora --max-lora-rank R --lora-modules NAME=DIR`
    merged  a Hugging Face model folder (weights + tokenizer) with the LoRA update added to the base weights:
            anything that loads `AutoModelForCausalLM` serves it, one memory per model

Run as:
    inweights export acme ./acme-lora
    inweights export acme@2 ./acme-merged --format merged
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from inweights.errors import InweightsError
from inweights.serve.adapters import adapter_problems
from inweights.store import MANIFEST, MemoryVersion, Workspace

VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for --max-lora-rank; an adapter's rank must be at most the one chosen."""

FORMATS = ("peft", "merged")


def export_memory(ref: str, out_dir: str | Path, format: str = "peft", *, workspace: Workspace | None = None,
                  base: str | None = None) -> Path:
    """Write memory `ref` ('name' or 'name@N') to a new folder `out_dir` and return it.

    `base`: where the base model is, for `merged` when it moved since the memory was learned (default: the base
    recorded in the memory's manifest). The folder is written under a temporary name and renamed at the end.
    """
    if format not in FORMATS:
        raise InweightsError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    version = (workspace or Workspace()).get(ref)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InweightsError(f"{out} already exists and is not an empty folder; choose a new one")
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if format == "peft":
            _write_peft(version, staging)
        else:
            _write_merged(version, staging, base)
        shutil.copy(version.path / MANIFEST, staging / "inweights_manifest.json")  # what made it, for the record
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def vllm_problems(adapter_config: dict) -> list[str]:
    """Why vLLM's LoRA loader would refuse this adapter_config.json (empty when it loads)."""
    problems = adapter_problems(adapter_config)
    rank = adapter_config.get("r")
    if not isinstance(rank, int) or rank < 1:
        problems.append(f"rank r={rank!r} is not a positive integer")
    elif rank > max(VLLM_MAX_LORA_RANKS):
        problems.append(f"rank {rank} is above vLLM's largest --max-lora-rank ({max(VLLM_MAX_LORA_RANKS)})")
    return problems


def base_model_path(version: MemoryVersion) -> str:
    """What to give vLLM as the model: the exact weights the memory was trained on. For the embedded default
    that is the de-quantized copy in the workspace, not google/gemma-3-270m (different weights)."""
    from inweights.models import DEFAULT_BASE
    from inweights.paths import home

    name = version.manifest["base"]["name"]
    return str(home() / "models" / DEFAULT_BASE) if name == DEFAULT_BASE else name


def vllm_max_lora_rank(adapter_dir: str | Path) -> int:
    """The smallest --max-lora-rank vLLM accepts that fits this adapter."""
    rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"]
    return min(r for r in VLLM_MAX_LORA_RANKS if r >= rank)


def _write_peft(version: MemoryVersion, directory: Path) -> None:
    config = json.loads((version.path / "adapter_config.json").read_text())
    problems = vllm_problems(config)
    if problems:
        raise InweightsError(f"memory {version.ref} cannot be exported for vLLM: " + "; ".join(problems) +
                             ". Relearn it with a plain LoRA (the default method) or export --format merged")
    config["base_model_name_or_path"] = base_model_path(version)
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(version.path / "adapter_model.safetensors", directory / "adapter_model.safetensors")


def _write_merged(version: MemoryVersion, directory: Path, base: str | None) -> None:
    from peft import PeftModel

    from inweights.models import load_base

    manifest = version.manifest
    if manifest.get("method") != "lora":
        raise InweightsError(f"memory {version.ref} uses method {manifest.get('method')!r}; only LoRA merges")
    loaded = load_base(base or manifest["base"]["name"])  # a private copy: merging changes its weights
    if loaded.fingerprint != manifest["base"]["fingerprint"]:
        raise InweightsError(f"the base at {base or manifest['base']['name']!r} is not the one memory {version.ref} "
                             "was trained on; pass the right one with --base")
    merged = PeftModel.from_pretrained(loaded.model, str(version.path)).merge_and_unload()
    merged.save_pretrained(str(directory))
    loaded.tokenizer.save_pretrained(str(directory))
