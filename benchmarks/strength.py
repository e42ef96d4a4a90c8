"""Memory strength: one LoRA or memory-layer memory learned once, then scored with its update scaled by s (the
adapter's alpha, or the memory layer's value rows, times s; s = 1 is the memory as trained), to see how much
learning each bit of forgetting buys back.

Scaling a task update toward the base trades what it learned against what it changed elsewhere (weight
interpolation, as in WiSE-FT); for a LoRA memory the scale is only its alpha, so a scaled memory is served
like any other, and `learn --strength s` saves exactly the memory scored here at s. Same passages, questions,
general tasks and base scores as benchmarks/plane.py, whose point names this takes (default: learn's default
LoRA memory).

Run as:
    python benchmarks/strength.py --out benchmarks/results/strength_tune                 # passages 1-8
    python benchmarks/strength.py --skip-passages 24 --passages 24 --general-limit 100 \
        --scales 1,0.7 --out benchmarks/results/strength_check24                          # confirmation half
    python benchmarks/strength.py --keep --scales 1,0.7 --profiles "L9-17=0.5;mlp=0.5;ramp=1:0.3" \
        --out benchmarks/results/strength_profiles_tune                                   # by layer and module
Outputs: strength.json (every number) and strength.md (table) in --out; an interrupted run resumes (with
--keep, without learning again: the memory stays in the workspace and a later run scores more scales on it).
A profile scales each LoRA module by its own factor (profile_factor) to see where the learning and the forgetting
sit; `learn --strength` saves only the plain numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plane  # noqa: E402  (the same points, data and scoring)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--point", default="lora-sft-guard-facts-all",
                        help="a plane.py point name (LoRA or memory_layer)")
    parser.add_argument("--scales", default="1,0.85,0.7,0.5", help="comma-separated scales of the update")
    parser.add_argument("--profiles", default="",
                        help="';'-separated scale profiles by layer and module, each 'selector=factor,...' (see "
                             "profile_factor), e.g. 'L9-17=0.5;mlp=0.6;ramp=1:0.4'")
    parser.add_argument("--keep", action="store_true",
                        help="keep the learned memory in the workspace, and score a kept one instead of learning")
    parser.add_argument("--average-with", default="",
                        help="comma-separated LoRA points whose memories, kept by earlier --keep runs on the same "
                             "passages, are averaged with this point's: the update scored is the mean of their "
                             "updates (one LoRA of their summed ranks, exact)")
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--skip-passages", type=int, default=0)
    parser.add_argument("--general-limit", type=int, default=50)
    parser.add_argument("--wikitext-tokens", type=int, default=1024)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "strength")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from inweights.evaluate.conditions import answer_logliks, answer_short, gold_summary, score
    from inweights.evaluate.general import GeneralLimits, compare, general_suite
    from inweights.evaluate.harness import mean_change_points
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.store import Workspace

    point = plane._parse(args.point)
    others = [plane._parse(p) for p in args.average_with.split(",") if p]
    if others and any(p.method != "lora" for p in [point, *others]):
        raise SystemExit("--average-with averages LoRA memories")
    scales = [f"{float(s):g}" for s in args.scales.split(",") if s] + [p for p in args.profiles.split(";") if p]
    if point.method not in ("lora", "memory_layer"):
        raise SystemExit("strength scales a LoRA or memory_layer memory")
    for key in scales:
        check_profile(key, point.method)  # a bad profile fails before learning
    progress = not args.no_progress
    documents, questions = plane.squad_passages(args.data, args.skip_passages, args.passages)
    base = load_base(DEFAULT_BASE)
    n = args.general_limit
    limits = GeneralLimits(arc_easy=n, piqa=n, boolq=n, triviaqa=n, wikitext_tokens=args.wikitext_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "strength.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    settings = {"point": point.name, "passages": args.passages, "skip_passages": args.skip_passages,
                "questions": len(questions), "general_limit": n, "wikitext_tokens": args.wikitext_tokens,
                "base": base.name}
    if others:
        settings["average_with"] = [p.name for p in others]
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{path} was made with {results['settings']}; use another --out")
    results["settings"] = settings
    results["versions"] = plane._versions()

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    def gold(model, contexts=None) -> dict:
        """The gold answers' likelihood (conditions.answer_logliks): per question and summed up."""
        logliks = answer_logliks(model, base.tokenizer, questions, contexts or [None] * len(questions))
        return gold_summary(logliks) | {"logliks": [[round(lp, 4), k] for lp, k in logliks]}

    def evaluate(model) -> dict:
        t = time.perf_counter()
        answers = answer_short(model, base.tokenizer, base.stop_token_ids, questions, [None] * len(questions))
        general = general_suite(model, base.tokenizer, args.data / "general", limits, base.stop_token_ids,
                                progress=progress)
        return {"scores": score(questions, answers), "general": general, "eval_s": time.perf_counter() - t,
                "predictions": answers[:20], "gold": gold(model)}

    if "base" not in results:
        closed = evaluate(base.model)
        in_context = answer_short(base.model, base.tokenizer, base.stop_token_ids, questions,
                                  [documents[q.doc] for q in questions])
        results["base"] = closed | {"in_context": score(questions, in_context)}
        save()
    if "gold" not in results["base"]:  # results from before the gold answers were scored
        results["base"]["gold"] = gold(base.model)
        save()
    if "in_context_gold" not in results["base"]:
        results["base"]["in_context_gold"] = gold(base.model, [documents[q.doc] for q in questions])
        save()
    em_closed = results["base"]["scores"]["em"]
    em_context = results["base"]["in_context"]["em"]
    results.setdefault("scales", {})
    todo = [s for s in scales if s not in results["scales"]]
    # scales scored before the gold answers were, on a memory still kept: only their gold answers are scored
    gold_todo = [s for s in scales if s in results["scales"] and "gold" not in results["scales"][s]] \
        if args.keep else []
    if not todo and not gold_todo:
        return _report(results, args.out)
    workspace = Workspace()
    name = memory_name(point, args.skip_passages, args.passages)
    with tempfile.TemporaryDirectory() as folder:
        config = learn_config(point)
        kept = _kept(workspace, name, config) if args.keep else None
        if kept is not None:
            version = kept
            results.setdefault("memory", version.ref)
        else:
            plane.write_documents(folder, documents)
            t = time.perf_counter()
            from inweights.api import learn

            version = learn([folder], name, config, base=base, workspace=workspace,
                            exclude_questions=[q.question for q in questions], progress=progress, yes=True)
            results["learn_s"] = time.perf_counter() - t
            results["manifest_config"] = version.manifest["config"]
            results["memory"] = version.ref
            save()
        averaged = [_kept_other(workspace, p, args.skip_passages, args.passages) for p in others]
        same = kept is not None and results["memory"] == version.ref and \
            results.get("averaged_with", []) == [v.ref for v in averaged]
        results["averaged_with"] = [v.ref for v in averaged]
        for s in gold_todo if same else []:  # not when the rows scored another memory (or version) than this one
            with scaled_memory(base, workspace, [version, *averaged], s, point.method) as model:
                results["scales"][s]["gold"] = gold(model)
            save()
        for s in todo:
            with scaled_memory(base, workspace, [version, *averaged], s, point.method) as model:
                row = evaluate(model)
            deltas = compare(results["base"]["general"], row["general"])
            row |= {"general_deltas": deltas, "general_mean_points": mean_change_points(deltas),
                    "wikitext_ppl_pct": deltas.get("wikitext2", {}).get("ppl_pct"),
                    "gap_recovered": plane.gap_recovered(row["scores"]["em"], em_closed, em_context)}
            results["scales"][s] = row
            print(f"scale {s}: EM {100 * row['scores']['em']:.1f}, gap {100 * row['gap_recovered']:.0f}%, general "
                  f"{row['general_mean_points']:+.1f} pts, wikitext {row['wikitext_ppl_pct']:+.1f}%", flush=True)
            save()
    if not args.keep:
        plane._remove(workspace.memories_dir / name)
    return _report(results, args.out)


def memory_name(point, skip_passages: int, passages: int) -> str:
    """The workspace name of the memory this run learns (and --keep finds again): the plane's, with the
    passages; one over the 64 characters a memory name may have is cut and given a hash of the whole."""
    name = plane._memory_name(point) + f"-strength-p{skip_passages + 1}-{skip_passages + passages}"
    return name if len(name) <= 64 else f"{name[:55]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def learn_config(point):
    """The LearnConfig a point's memory is learned with, on the embedded default base."""
    from inweights.config import LearnConfig
    from inweights.models import DEFAULT_BASE

    return LearnConfig(base=DEFAULT_BASE, synth=point.synth_config(), train=point.train_config())


def _kept_other(workspace, point, skip_passages: int, passages: int):
    version = _kept(workspace, memory_name(point, skip_passages, passages), learn_config(point))
    if version is None:
        raise SystemExit(f"no kept memory of {point.name} on these passages: run strength.py --keep --point "
                         f"{point.name} with the same passages first")
    return version


LEARN_RESOLVES = ("lr", "epochs")
"""TrainConfig fields that None leaves to `learn`, whose manifest records the value it chose."""


def learned_with(config, manifest_config: dict) -> bool:
    """Whether a memory whose manifest records `manifest_config` was learned with `config`: plane.same_config,
    with the fields `config` left to learn taken as the manifest records them."""
    wanted = plane._requested(config)
    for key in LEARN_RESOLVES:
        if wanted["train"][key] is None:
            wanted["train"][key] = manifest_config.get("train", {}).get(key)
    return plane.same_config(wanted, manifest_config)


def _kept(workspace, name: str, config):
    """The newest version of memory `name` in the workspace, if it was learned with this config by today's
    strategies (a manifest without their versions predates a change to them)."""
    from inweights.errors import InweightsError
    from inweights.synth import strategy_versions

    try:
        version = workspace.get(name)
    except InweightsError:
        return None
    made_by = version.manifest.get("synthetic", {}).get("strategy_versions")
    if made_by != strategy_versions(config.synth):
        return None
    return version if learned_with(config, version.manifest["config"]) else None


def check_profile(profile: str, method: str = "lora") -> None:
    """Exit with the reason when `profile` (a number or profile entries) is not one strength.py can apply."""
    if method == "memory_layer":
        memory_layer_profile(profile)
        return
    profile_factor(profile, "x.layers.0.mlp.up_proj", 1)
    profile_rank(profile)


def memory_layer_profile(profile: str) -> tuple[float, float | None, float | None]:
    """(factor, gate, contrast) from a memory-layer profile: a plain number, or comma-separated entries 'gate=Q'
    (the memory's gate at quantile Q of its training reads' cosines: TrainConfig.memory_gate), 'cgate=S' (cut
    row by row where the guard's general text reads the row, dropping the share S of the training reads:
    SparseMemory.contrast_cuts; with gate=Q too, the higher cut) and 'scale=F' (its value rows times F)."""
    try:
        return float(profile), None, None
    except ValueError:
        pass
    found = {"scale": 1.0, "gate": None, "cgate": None}
    for entry in profile.split(","):
        key, _, value = entry.partition("=")
        try:
            found[key] = float(value) if key in found else None
        except ValueError:
            found[key] = None
        if found[key] is None or (key.endswith("gate") and not 0 <= found[key] < 1):
            raise SystemExit(f"memory-layer profile entry {entry!r}: expected gate=Q or cgate=S (in [0, 1)) "
                             "or scale=F")
    return found["scale"], found["gate"], found["cgate"]


def profile_rank(profile: str) -> tuple[int | None, int] | None:
    """(rank, drop) from a profile's 'rank=K' and 'drop=J' entries, or None without either: every LoRA module's
    update is cut to its singular directions J, ..., K - 1, largest first (lora.truncate; before the factors):
    'rank=K' alone is its best rank-K approximation, 'drop=J' removes its J largest directions."""
    found = {}
    for entry in profile.split(","):
        selector, _, value = entry.partition("=")
        if selector in ("rank", "drop"):
            if not value.isdigit() or int(value) < (1 if selector == "rank" else 0):
                raise SystemExit(f"profile entry {entry!r}: rank=K and drop=J need whole numbers K >= 1, J >= 0")
            found[selector] = int(value)
    if not found:
        return None
    rank, drop = found.get("rank"), found.get("drop", 0)
    if rank is not None and drop >= rank:
        raise SystemExit(f"profile {profile!r}: drop=J must be below rank=K")
    return rank, drop


def profile_factor(profile: str, module_name: str, n_layers: int) -> float:
    """The factor a profile gives one LoRA module: the product of its matching entries. A profile is a plain
    number (every module), or comma-separated 'selector=factor' entries whose selector is 'all', 'attn' or 'mlp'
    (the module kind), 'La-b' (decoder layers a to b, from 0), 'La-b.attn' / 'La-b.mlp', or 'ramp=first:last' (a
    factor linear in the layer index, first at layer 0 and last at the last layer); 'rank=K' and 'drop=J' entries
    are no factors (profile_rank)."""
    try:
        return float(profile)
    except ValueError:
        pass
    layer_match = re.search(r"\.layers\.(\d+)\.", module_name)
    layer = int(layer_match.group(1)) if layer_match else None
    kind = "mlp" if any(p in module_name for p in ("gate_proj", "up_proj", "down_proj", ".mlp.")) else "attn"
    factor = 1.0
    for entry in profile.split(","):
        selector, _, value = entry.partition("=")
        if not value:
            raise SystemExit(f"profile entry {entry!r} needs selector=factor")
        if selector in ("rank", "drop"):  # not factors: see profile_rank
            continue
        if selector == "ramp":
            first, last = (float(v) for v in value.split(":"))
            if layer is not None:
                factor *= first + (last - first) * layer / max(n_layers - 1, 1)
            continue
        layers, _, part = selector.partition(".") if selector.startswith("L") else ("", "", selector)
        if part == "all":
            part = ""
        elif part not in ("", "attn", "mlp"):
            raise SystemExit(f"profile selector {selector!r}: the part must be all, attn or mlp")
        if layers:
            a, _, b = layers[1:].partition("-")
            if layer is None or not int(a) <= layer <= int(b or a):
                continue
        if part in ("", kind):
            factor *= float(value)
    return factor


@contextmanager
def scaled_memory(base, workspace, versions, profile: str, method: str):
    """The base carrying the memory of `versions` (one, or the mean of several LoRA memories' updates, as `learn
    --seeds` saves it) scaled by `profile` (see _apply); the base is plain again on leaving."""
    from inweights.api import load_memory
    from inweights.methods.lora import average

    if len(versions) > 1:
        model = average(base.model, [v.path for v in versions])
        close = model.unload
    else:
        loaded = load_memory(versions[0].ref, base=base, workspace=workspace)
        model, close = loaded.model, loaded.close
    try:
        _apply(model, profile, method)
        yield model
    finally:
        close()


def _apply(model, profile: str, method: str) -> None:
    """Scale the memory (of `method`) by a profile: a plain number as `learn --strength` saves it, else LoRA
    module by module."""
    from peft.tuners.lora import LoraLayer

    from inweights.methods import METHODS
    from inweights.methods.lora import decoder_layers, truncate

    if method == "memory_layer":
        factor, gate, contrast = memory_layer_profile(profile)
        METHODS[method].scale(model, factor)
        if gate is not None or contrast is not None:
            METHODS[method].set_gate(model, gate or 0.0, contrast or 0.0)
        return
    try:
        factor = float(profile)
    except ValueError:
        factor = None
    if factor is not None:
        METHODS[method].scale(model, factor)
        return
    cut = profile_rank(profile)
    if cut is not None:
        truncate(model, *cut)
    n_layers = len(decoder_layers(model))
    for module_name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            f = profile_factor(profile, module_name, n_layers)
            for adapter in module.scaling:
                module.scaling[adapter] *= f


def _gold_cell(row: dict) -> str:
    """A row's p(gold) cell ('-' for a row scored before gold answers were)."""
    return f"{100 * row['gold']['p_gold']:.1f}%" if "gold" in row else "-"


def _report(results: dict, out: Path) -> dict:
    s = results["settings"]
    b = results["base"]
    lines = [f"# Memory strength ({s['point']}; SQuAD dev passages {s['skip_passages'] + 1}-"
             f"{s['skip_passages'] + s['passages']}, {s['questions']} questions; general tasks: "
             f"{s['general_limit']} items each, WikiText-2 {s['wikitext_tokens']:,} tokens)", "",
             f"Base model: closed-book EM {100 * b['scores']['em']:.1f}, in-context EM "
             f"{100 * b['in_context']['em']:.1f}. "
             + (f"One memory, learned in {results['learn_s']:.0f} s" if "learn_s" in results else
                "A memory kept by an earlier run" if not s.get("average_with") else
                f"The mean of {1 + len(s['average_with'])} memories kept by earlier runs")
             + ", scored with its update (LoRA: alpha; memory layer: value rows) scaled by s (a profile: "
             "strength.py's profile_factor and profile_rank).", "",
             "| scale | EM | F1 | gap recovered | p(gold) | general (mean pts) | ARC-E | PIQA | BoolQ | TriviaQA | "
             "WikiText-2 ppl |",
             "|" + "---|" * 11]
    def order(kv):
        try:
            return (0, -float(kv[0]))
        except ValueError:
            return (1, kv[0])

    for key, row in sorted(results["scales"].items(), key=order):
        d = row["general_deltas"]
        pts = [plane.task_cell(d, t, k) for t, k in (("arc_easy", "acc_points"), ("piqa", "acc_points"),
                                                     ("boolq", "acc_points"), ("triviaqa", "match_points"))]
        lines.append(f"| {key} | {100 * row['scores']['em']:.1f} | {100 * row['scores']['f1']:.1f} | "
                     f"{100 * row['gap_recovered']:.0f}% | {_gold_cell(row)} | {row['general_mean_points']:+.1f} | "
                     + " | ".join(pts) + f" | {row['wikitext_ppl_pct']:+.1f}% |")
    if "gold" in b and "in_context_gold" in b:
        lines += ["", f"p(gold): the mean probability of the likeliest gold answer after the closed-book prompt (base "
                  f"{100 * b['gold']['p_gold']:.1f}%, in context {100 * b['in_context_gold']['p_gold']:.1f}%), a "
                  "continuous score where EM counts only what greedy decoding reaches. A memory trained to a low "
                  "loss answers more confidently than the base reads, so it is compared between memories, not as "
                  "a share of the in-context gap."]
    if any("lost" in d for row in results["scales"].values() for d in row["general_deltas"].values()):
        lines += ["", "A task's change in points, with (-items lost/+items gained) against the base where both runs "
                  "marked their items."]
    (out / "strength.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
