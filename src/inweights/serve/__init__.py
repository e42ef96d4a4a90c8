"""Serving memories: an OpenAI-compatible server that batches requests for many memories on one base model.

    config.py    ServeConfig: every limit and capacity, with its default
    adapters.py  multi-LoRA linear layers and the LRU cache of loaded memories
    batcher.py   continuous batching over a shared KV cache, one worker thread
    tenants.py   API keys (hashed, in keys.json) and which memories each may use
    app.py       the FastAPI app: /v1/models, /v1/completions, /v1/chat/completions; `serve()`
    export.py    a memory as a vLLM-ready PEFT folder or as a merged Hugging Face model

See docs/serve.md.
"""

from inweights.serve.config import ServeConfig
from inweights.serve.export import export_memory
from inweights.serve.tenants import add_key, list_keys, revoke_key

__all__ = ["ServeConfig", "export_memory", "add_key", "list_keys", "revoke_key", "serve"]


def serve(base, config=None, workspace=None):
    """Serve the base model and the workspace's memories (see `inweights.serve.app.serve`)."""
    from inweights.serve.app import serve as run

    run(base, config, workspace)
