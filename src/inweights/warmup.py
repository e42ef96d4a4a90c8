"""QA warm-up: questions and answers about other text, mixed into every memory's training.

Training on QA pairs about *other* documents before and with the target documents teaches the skill of
answering from knowledge stored in the weights (PIT, Jiang et al. 2024). The other text here is the general
text the forgetting guard already samples from the base model itself (cached per base model, never an
evaluation set), turned into questions by the same LLM-free `facts` strategy as the documents, without the
plain-text views. So the warm-up set is small, cached, and specific to each base model.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Sequence

from inweights.corpus import Chunk
from inweights.synth import Example, ExampleCache, drop_eval_overlap, synthesize

DOC_PATH = "(warm-up: the base model's general text)"


def warmup_examples(texts: Sequence[str], synth_config, cache: ExampleCache,
                    exclude_questions: Sequence[str] = ()) -> list[Example]:
    """QA examples about `texts` (no evaluation question among them)."""
    chunks = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        chunks.append(Chunk(doc_path=DOC_PATH, doc_sha256=digest, index=i, text=text, n_tokens=0, sha256=digest))
    config = replace(synth_config, strategies=("facts",), views=False, budget=None)
    examples, _ = synthesize(chunks, None, config, cache, progress=False)
    return drop_eval_overlap(examples, exclude_questions)[0]
