"""Versions as a user expects them: roll back (as a new version, history kept), compare two versions, remove.

Every version's manifest says what made it (documents with their chunk hashes, config, lineage); `diff` reads
two of them, and the scores `inweights eval` recorded in each version's evaluations.jsonl.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from inweights.errors import InweightsError
from inweights.store import MemoryVersion, Workspace, parse_ref
from inweights.update import can_update, delta

EVALUATIONS = "evaluations.jsonl"


def rollback(memory: str, version: int, workspace: Workspace | None = None) -> MemoryVersion:
    """Make version `version`'s memory the newest again, as a new version (nothing is deleted)."""
    workspace = workspace or Workspace()
    with workspace.lock(memory, "inweights rollback"):
        source = workspace.get(f"{memory}@{version}")
        newest = workspace.get(memory)
        if source.version == newest.version:
            raise InweightsError(f"{source.ref} is already the newest version")
        lineage = {"mode": "rollback", "parent": newest.version, "rolled_back_to": source.version}
        if can_update(newest.manifest) and can_update(source.manifest):
            lineage["delta"] = delta(newest.manifest["documents"], source.manifest["documents"]).summary()
        return workspace.copy_version(source, {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                               "lineage": lineage})


def remove(ref: str, workspace: Workspace | None = None) -> list[MemoryVersion]:
    """Delete version NAME@N, or every version of NAME. Returns what was deleted."""
    workspace = workspace or Workspace()
    name, version = parse_ref(ref)
    with workspace.lock(name, "inweights rm"):
        return workspace.remove(name, version)


def record_evaluation(version: MemoryVersion, report: dict) -> None:
    """Append an evaluation's headline scores to the version's evaluations.jsonl (read by `diff`)."""
    metric = report["headline_metric"]
    scores = {name: round(c["scores"][metric], 4) for name, c in report["conditions"].items()
              if metric in c.get("scores", {})}
    entry = {"created": report["created"], "questions_file": report["run"].get("questions_file"),
             "n": report["questions"]["n"], "metric": metric, "scores": scores,
             "general_change_points": (report.get("forgetting") or {}).get("memory", {}).get("mean_change_points")}
    with open(version.path / EVALUATIONS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def evaluations(version: MemoryVersion) -> list[dict]:
    path = version.path / EVALUATIONS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def diff(ref_a: str, ref_b: str, workspace: Workspace | None = None) -> dict:
    """What differs from version `ref_a` to `ref_b`: documents added, changed and removed; configuration
    changes; lineage; and the scores of evaluations both versions had on the same question file."""
    workspace = workspace or Workspace()
    a, b = workspace.get(ref_a), workspace.get(ref_b)
    ma, mb = a.manifest, b.manifest
    out: dict = {"from": a.ref, "to": b.ref}
    if can_update(ma) and can_update(mb):
        out["documents"] = delta(ma["documents"], mb["documents"]).summary()
    else:
        old = {d["path"]: d["sha256"] for d in ma["documents"]}
        new = {d["path"]: d["sha256"] for d in mb["documents"]}
        out["documents"] = {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
                            "changed": sorted(p for p in old.keys() & new.keys() if old[p] != new[p])}
    fa, fb = _flatten(ma["config"]), _flatten(mb["config"])
    out["config"] = {k: [fa.get(k), fb.get(k)] for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)}
    if ma["base"]["fingerprint"] != mb["base"]["fingerprint"]:
        out["config"]["base.fingerprint"] = [ma["base"]["fingerprint"], mb["base"]["fingerprint"]]
    out["lineage"] = {a.ref: ma.get("lineage"), b.ref: mb.get("lineage")}
    latest_a = {e["questions_file"]: e for e in evaluations(a)}
    latest_b = {e["questions_file"]: e for e in evaluations(b)}
    out["scores"] = {q: {"metric": latest_b[q]["metric"],
                         **{c: [latest_a[q]["scores"].get(c), latest_b[q]["scores"].get(c)]
                            for c in sorted(latest_a[q]["scores"].keys() | latest_b[q]["scores"].keys())},
                         "general_change_points": [latest_a[q]["general_change_points"],
                                                   latest_b[q]["general_change_points"]]}
                     for q in sorted(latest_a.keys() & latest_b.keys())}
    return out


def render_diff(d: dict) -> str:
    lines = [f"{d['from']} -> {d['to']}"]
    docs = d["documents"]
    for kind in ("added", "changed", "removed"):
        for path in docs[kind]:
            lines.append(f"  {'+' if kind == 'added' else '-' if kind == 'removed' else '~'} {path}  ({kind})")
    if not any(docs[k] for k in ("added", "changed", "removed")):
        lines.append("  documents: the same")
    for key, (old, new) in d["config"].items():
        lines.append(f"  config {key}: {old} -> {new}")
    for ref, lineage in d["lineage"].items():
        if lineage:
            lines.append(f"  {ref}: made by {lineage['mode']}" + (f" from v{lineage['parent']}" if lineage.get("parent")
                                                                 else ""))
    for questions, scores in d["scores"].items():
        metric = scores["metric"]
        for condition, pair in scores.items():
            if condition in ("metric",):
                continue
            old, new = pair
            lines.append(f"  {questions} {condition} {'' if condition == 'general_change_points' else metric + ' '}"
                         f"{_num(old)} -> {_num(new)}")
    if not d["scores"]:
        lines.append("  scores: no question file evaluated on both (inweights eval records them)")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out
