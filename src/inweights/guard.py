"""The forgetting guard's data: general text sampled from the base model itself, made once and cached.

Training the memory on the base model's own samples (next-token loss) is, in expectation, minimising the KL
divergence from the base distribution to the student's, so it pulls general behaviour back toward the base
while the memory learns the corpus. It needs no bundled corpus and no network, and it never touches the
evaluation texts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from inweights.generate import generate

_SEEDS = [
    "The history of", "In mathematics,", "Scientists have found that", "The recipe calls for", "In 1850,",
    "The city is known for", "A good way to learn", "The river flows", "According to the report,",
    "The weather in", "Many animals", "The first step is to", "In the novel,", "The museum",
    "Football is", "The human body", "When the war ended,", "The company announced", "Music has",
    "The village", "Water is", "The election", "In computer science,", "The king", "Farmers", "The film",
    "Children often", "The mountain", "Electricity", "The painting", "Trade between", "The doctor said",
]


def replay_texts(base, n: int, cache_dir: Path, seed: int = 0, max_new_tokens: int = 64,
                 batch_size: int = 32) -> list[str]:
    """`n` general-text samples of the base model (cached by base fingerprint, n, seed and length)."""
    if n <= 0:
        return []
    key = hashlib.sha256(json.dumps([base.fingerprint, n, seed, max_new_tokens, _SEEDS]).encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["texts"]
        except (ValueError, KeyError):
            pass
    prompts = [_SEEDS[i % len(_SEEDS)] for i in range(n)]
    outputs = generate(base.model, base.tokenizer, prompts, max_new_tokens=max_new_tokens,
                       stop_token_ids=[base.tokenizer.eos_token_id], batch_size=batch_size, temperature=1.0,
                       top_k=50, top_p=1.0, seed=seed)
    texts = [f"{p} {o}".strip() for p, o in zip(prompts, outputs) if o.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"base": base.fingerprint, "texts": texts}))
    os.replace(tmp, path)
    return texts
