"""Keeping a memory up to date: what changed since a version, and the training data of an update.

`learn --update` trains the newest version's weights further on what changed instead of learning the whole
corpus again (TemporalWiki, Jang et al. 2022: training on the changed part matches a full retrain at a fraction
of the compute):

- **Fresh** examples: those of chunks whose text (hash) the parent version did not have.
- **Changed facts**: a question the parent was trained on, asked again of the new text with another answer
  (the synthesis asks the same questions of a sentence whose value changed). The new answer is trained as usual
  and the old one gets the unlikelihood loss at its first token that differs from the new answer
  (`train.completion_loss`); plain fine-tuning alone leaves the old value competing (EvolvingQA, Kim et al.
  2024).
- **Removed facts**: questions of the parent's chunks that are gone (a removed document, a deleted sentence)
  whose answer no new question gives. They are trained toward the plain base model's own distribution (a KL
  over its top-k next tokens, the forgetting guard's form): "answer as if the memory never held this".
- **Rehearsal**: a seeded sample of the unchanged chunks' examples, `rehearsal` of them per example above, so
  that what was learned is held while the weights move (sequential updates forget otherwise).

The parent's examples come from the synthetic-example cache, by the chunk hashes its manifest records: no
document text is stored with a memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from inweights.corpus import Chunk
from inweights.store import MemoryVersion
from inweights.synth import STRATEGIES, Example, ExampleCache
from inweights.prompt import answer_format
from inweights.train import IGNORE, UNLIKELY, tokenize_example


@dataclass
class Delta:
    """Documents (by path) added, changed, removed and unchanged since the parent version; chunks (by hash)
    that are new, and the parent's chunk records that are gone."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    fresh_chunks: set[str] = field(default_factory=set)
    gone_chunks: list[dict] = field(default_factory=list)  # {"sha256", "doc_path", "doc_sha256"}

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def summary(self) -> dict:
        return {"added": self.added, "changed": self.changed, "removed": self.removed,
                "unchanged": len(self.unchanged), "fresh_chunks": len(self.fresh_chunks),
                "gone_chunks": len(self.gone_chunks)}

    def describe(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (("added", self.added), ("changed", self.changed),
                                              ("removed", self.removed), ("unchanged", self.unchanged))]
        return f"documents: {', '.join(parts)}; {len(self.fresh_chunks)} new chunks"


def document_records(documents: Sequence, chunks: Sequence[Chunk]) -> list[dict]:
    """The manifest's record of each document: path, hash, kind and the hashes of its chunks in order."""
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_sha256, []).append(c.sha256)
    return [{"path": d.path, "sha256": d.sha256, "kind": d.kind, "chunks": len(by_doc.get(d.sha256, [])),
             "chunk_sha256": by_doc.get(d.sha256, [])} for d in documents]


def can_update(manifest: dict) -> bool:
    """Whether a version records its chunks (versions learned before inweights 0.3 do not)."""
    documents = manifest.get("documents")
    return bool(documents) and all("chunk_sha256" in d for d in documents)


def delta(parent_documents: Sequence[dict], documents: Sequence[dict]) -> Delta:
    """What changed from the parent's document records to these (both as `document_records` gives them)."""
    old = {d["path"]: d for d in parent_documents}
    new = {d["path"]: d for d in documents}
    out = Delta()
    for path, d in new.items():
        if path not in old:
            out.added.append(path)
        elif old[path]["sha256"] != d["sha256"]:
            out.changed.append(path)
        else:
            out.unchanged.append(path)
    out.removed = [path for path in old if path not in new]
    old_chunks = {sha for d in parent_documents for sha in d["chunk_sha256"]}
    new_chunks = {sha for d in documents for sha in d["chunk_sha256"]}
    out.fresh_chunks = new_chunks - old_chunks
    out.gone_chunks = [r for r in chunk_records_of(parent_documents)
                       if r["sha256"] not in new_chunks or new.get(r["doc_path"], {}).get("sha256") != r["doc_sha256"]]
    return out


def parent_examples(parent: MemoryVersion, records: Sequence[dict], cache: ExampleCache) -> tuple[list[Example], int]:
    """The parent's synthetic examples of these chunk records, from the cache. Returns (examples, chunks missing
    from the cache)."""
    from inweights.config import LearnConfig

    manifest = parent.manifest
    config = LearnConfig.from_dict(manifest["config"]).synth
    teacher = manifest["synthetic"].get("teacher", "none")
    examples, missing = [], 0
    for record in records:
        chunk = Chunk(record["doc_path"], record["doc_sha256"], 0, "", 0, record["sha256"])
        for name in config.strategies:
            cached = cache.get(cache.key(STRATEGIES[name], chunk, teacher, config))
            if cached is None:
                missing += 1
            else:
                examples.extend(cached[0])
    return examples, missing


def chunk_records_of(documents: Sequence[dict], keep=lambda d: True) -> list[dict]:
    """The chunk records (sha256, doc_path, doc_sha256) of the manifest documents that `keep` accepts."""
    return [{"sha256": sha, "doc_path": d["path"], "doc_sha256": d["sha256"]}
            for d in documents if keep(d) for sha in d["chunk_sha256"]]


def contrast(old: Sequence[Example], current: Sequence[Example]
             ) -> tuple[list[tuple[Example, Example]], list[Example]]:
    """(changed, removed) facts among the parent's question examples `old` (of chunks that are gone), against
    the `current` examples: changed = (old example, the current example asking the same question with another
    answer); removed = old questions no current example asks, whose answer is not still given by a current
    question of the same document."""
    pairs = {(e.prompt, e.completion) for e in current}
    by_prompt: dict[str, Example] = {}
    for e in current:
        by_prompt.setdefault(e.prompt, e)
    answers_by_doc: dict[str, set[str]] = {}
    for e in current:
        answers_by_doc.setdefault(e.doc_path, set()).add(_norm(e.completion))
    changed, removed, seen = [], [], set()
    for e in old:
        if not e.prompt.startswith("Question:") or (e.prompt, e.completion) in pairs or e.prompt in seen:
            continue
        seen.add(e.prompt)
        if e.prompt in by_prompt:
            if _norm(by_prompt[e.prompt].completion) != _norm(e.completion):
                changed.append((e, by_prompt[e.prompt]))
        elif _norm(e.completion) not in answers_by_doc.get(e.doc_path, ()):
            removed.append(e)
    return changed, removed


def unlikely_rows(tokenizer, changed: Sequence[tuple[Example, Example]], max_len: int, end_id: int | None
                  ) -> list[tuple[list[int], list[int], str]]:
    """For each (old, new) pair, the old answer's row with one label: its first token that differs from the
    new answer's (tokens they share, "14 March" in "14 March 2009" -> "14 March 2011", stay likely). An old
    answer that is a prefix of the new one gives no row."""
    rows = []
    for old, new in changed:
        ids, labels = tokenize_example(tokenizer, old.prompt, old.completion, max_len, end_id)
        new_ids, _ = tokenize_example(tokenizer, new.prompt, new.completion, max_len, end_id)
        end = answer_format(tokenizer, old.prompt, old.completion, end_id)[2]  # the token that ends its answer
        start = next((i for i, label in enumerate(labels) if label != IGNORE), None)
        if start is None:
            continue
        split = next((i for i in range(start, len(ids)) if i >= len(new_ids) or ids[i] != new_ids[i]), None)
        if split is None or labels[split] == IGNORE or (end is not None and ids[split] == end):
            continue
        rows.append((ids, [IGNORE] * split + [ids[split]] + [IGNORE] * (len(ids) - split - 1), UNLIKELY))
    return rows


def base_rows(base, removed: Sequence[Example], max_len: int, end_id: int | None, cache_dir, progress: bool = True
              ) -> list[tuple]:
    """Rows that train the removed facts' questions toward the plain base model's answers: soft targets of the
    base without any context (`objectives.distill_rows` with an empty context), computed before the memory is
    attached."""
    from inweights.objectives import distill_rows

    return distill_rows(base, removed, {}, max_len, end_id, cache_dir, progress=progress, context=False)


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip(".").split())
