"""The learning/forgetting plane: every method x objective x guard x budget, learned from the same SQuAD dev
passages and scored on the same held-out questions and general tasks.

Each point learns a memory with `inweights.learn` (evaluation questions excluded and leak-checked), answers the
passages' questions closed-book, and runs the forgetting suite (ARC-Easy, PIQA, BoolQ, TriviaQA, WikiText-2).
The base model is scored once closed-book and with the passage in context, which fixes the gap a memory should
recover: recovered = (EM_memory - EM_closed) / (EM_in_context - EM_closed).

Points run in the order listed and each is written to
`plane.json` as soon as it is done, so an interrupted run resumes where it stopped; `--points` picks a subset.
Outputs in benchmarks/results/plane/: plane.json (every number, with versions and settings), plane.md (table),
plane.png (learning vs forgetting), scaling.png (exact match vs synthetic tokens, LoRA + selfstudy).

Run as:
    python benchmarks/plane.py                                   # embedded gemma-3-270m, 8 passages, all points
    python benchmarks/plane.py --report-only                     # plane.md and plots from plane.json
    python benchmarks/plane.py --points lora-sft-guard-selfstudy-6000,full-sft-guard-selfstudy-6000
    python benchmarks/plane.py --points lora-sft-guard-cloze-all-lr0.0001    # a learning rate of its own
    python benchmarks/plane.py --points full-sft-guard-cloze-all-rf0.5-rs256  # the guard: replay fraction, samples
    python benchmarks/plane.py --points full-sft-guard-cloze-all-fs10        # 10 answer spans per sentence, not 2
    python benchmarks/plane.py --points lora-sft-guard-facts-all-ml1         # LoRA on the MLP projections only
    python benchmarks/plane.py --out benchmarks/results/teacher_quality --teacher http://127.0.0.1:8765/v1 \
        --teacher-model base --points lora-sft-guard-facts+entigraph-all   # strategies joined by '+', a teacher
    python benchmarks/plane.py --skip-passages 8 --out benchmarks/results/plane_check --points ...  # passages 9-16
    python benchmarks/plane.py --base DIR --passages 1 --general-limit 2 --budgets 200 --reference-budget 200 --low-budget 100 --out /tmp/plane  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from inweights.config import LORA_INITS

ROOT = Path(__file__).resolve().parents[1]

# A point's settings other than the defaults, each a suffix of its name: suffix -> (Point attribute, type,
# config section, config field, meaning). Names, parsing, configs and the table's legend all come from here.
KNOBS = {
    "lr": ("lr", float, "train", "lr", "learning rate"),
    "rf": ("replay", float, "train", "replay_fraction", "the guard's replay fraction"),
    "rs": ("replay_sequences", int, "train", "replay_sequences", "its general-text samples"),
    "fs": ("facts", int, "synth", "facts_per_sentence", "answer spans per sentence"),
    "mr": ("rows", int, "train", "memory_trainable_rows", "memory-layer rows trained"),
    "mk": ("topk", int, "train", "memory_topk", "memory-layer rows read per token"),
    "ep": ("epochs", int, "train", "epochs", "training epochs"),
    "vw": ("views", int, "synth", "views", "facts: statements, reorders and shuffled passages (1 on, 0 off)"),
    "wf": ("warmup", float, "train", "warmup_fraction", "QA warm-up share of the sequences"),
    "ho": ("holdout", float, "train", "holdout", "share of facts with a wording held out for early stopping"),
    "ex": ("exposures", int, "train", "exposures", "target exposures per fact (sets the epochs)"),
    "rk": ("rank", int, "train", "rank", "LoRA rank (alpha stays its default unless al is given)"),
    "al": ("alpha", float, "train", "alpha", "LoRA alpha (the update is scaled by alpha / rank)"),
    "qi": ("quiet_init", int, "train", "lora_init", "LoRA's A factors started at random (0), in the guard text's "
                                                   "quietest input directions (1), or in those of that text and QA "
                                                   "about it (2)"),
    "ml": ("mlp", int, "train", "target_modules", "LoRA on the MLP projections only (1; default: every linear layer)"),
    "an": ("anchor", float, "train", "anchor", "the activation anchor's weight"),
    "ly": ("layers", int, "train", "layers", "LoRA on the first N decoder layers only"),
    "at": ("layer_at", int, "train", "layers", "the memory layer beside decoder layer N (default: the middle one)"),
    "kt": ("kl_tail", int, "train", "kl_tail", "the guard's KL with a rest-of-vocabulary bucket (1) or over the "
                                               "renormalised top k (0)"),
    "st": ("strength", float, "train", "strength", "LoRA: the saved update's scale"),
    "gq": ("guard_questions", float, "train", "guard_questions", "the share of the guard's rows that are QA about "
                                                                 "its general text"),
    "gk": ("guard_top_k", int, "train", "replay_top_k", "the guard's texts sampled from the top k tokens (0: all)"),
    "rt": ("replay_tokens", int, "train", "replay_tokens", "the guard's rows cut to their first N tokens"),
    "sd": ("seed", int, "train", "seed", "the random seed (LoRA's start, the data's order, the guard's draws)"),
    "is": ("init_seed", int, "train", "init_seed", "the seed of the memory's start alone (default: sd)"),
    "ss": ("seeds", int, "train", "seeds", "LoRA: memories of seeds seed, seed + 1, ... averaged into one"),
    "ms": ("slots", int, "train", "memory_slots", "memory-layer rows in all, trained or not"),
    "mg": ("gate", float, "train", "memory_gate", "the memory layer's gate: the quantile of its training reads' "
                                                  "centroid cosines it keeps reads above (0: off)"),
    "mc": ("gate_contrast", float, "train", "memory_gate_contrast", "the memory layer's gate cut row by row where "
                                                                    "the guard's text reads: the share of training "
                                                                    "reads it may drop (0: off)"),
    "wd": ("decay", float, "train", "weight_decay", "AdamW weight decay of the memory's parameters"),
    "dp": ("dropout", float, "train", "dropout", "LoRA dropout on the adapters' inputs while training"),
    "ta": ("average", float, "train", "average_last", "tail averaging: the weights kept are the mean over this last "
                                                      "share of the steps"),
}
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # Gemma, Llama and Qwen name them so
# Knobs whose config value is not the number in the point's name: Point attribute -> the value from that number.
TO_CONFIG = {"views": bool, "kl_tail": bool, "mlp": lambda on: MLP_PROJECTIONS if on else (),
             "layers": lambda n: tuple(range(n)), "layer_at": lambda n: (n,),
             "quiet_init": lambda n: LORA_INITS[n]}


@dataclass(frozen=True)
class Point:
    method: str
    objective: str
    guard: bool
    strategy: str
    budget: int | None
    lr: float | None = None  # None: the method's default
    replay: float | None = None  # the guard's replay fraction; None: TrainConfig's default
    replay_sequences: int | None = None  # general-text samples the guard draws from; None: TrainConfig's default
    facts: int | None = None  # answer spans taken per sentence (SynthConfig.facts_per_sentence); None: its default
    rows: int | None = None  # memory_layer: trainable rows (TrainConfig.memory_trainable_rows); None: its default
    topk: int | None = None  # memory_layer: rows each token reads (TrainConfig.memory_topk); None: its default
    epochs: int | None = None  # passes over the synthetic data (TrainConfig.epochs); None: derived by learn
    views: int | None = None  # facts: the plain-text views (SynthConfig.views, 1 or 0); None: its default
    warmup: float | None = None  # QA warm-up share (TrainConfig.warmup_fraction); None: its default
    holdout: float | None = None  # early stopping on held-out wordings (TrainConfig.holdout); None: its default
    exposures: int | None = None  # target exposures per fact (TrainConfig.exposures); None: its default
    rank: int | None = None  # LoRA rank (TrainConfig.rank); None: its default
    alpha: float | None = None  # LoRA alpha (TrainConfig.alpha); None: its default
    quiet_init: int | None = None  # TrainConfig.lora_init LORA_INITS[n] (1 quiet, 2 quiet-qa); None: random
    mlp: int | None = None  # 1: LoRA on MLP_PROJECTIONS only (TrainConfig.target_modules); None: every linear layer
    anchor: float | None = None  # the activation anchor's weight (TrainConfig.anchor); None: its default
    layers: int | None = None  # LoRA on decoder layers 0..N-1 only (TrainConfig.layers); None: every layer
    layer_at: int | None = None  # memory_layer: beside decoder layer N (TrainConfig.layers); None: the middle one
    kl_tail: int | None = None  # 1: the soft targets' KL with a rest-of-vocabulary bucket (TrainConfig.kl_tail)
    strength: float | None = None  # LoRA: the saved update's scale (TrainConfig.strength); None: its default
    guard_top_k: int | None = None  # the guard's texts' sampling top-k (TrainConfig.replay_top_k); None: its default
    replay_tokens: int | None = None  # the guard's rows cut to N tokens (TrainConfig.replay_tokens); None: whole
    seed: int | None = None  # TrainConfig.seed; None: its default
    init_seed: int | None = None  # the seed of the memory's start alone (TrainConfig.init_seed); None: seed
    seeds: int | None = None  # LoRA: seeds averaged into one memory (TrainConfig.seeds); None: its default
    slots: int | None = None  # memory_layer: rows in all (TrainConfig.memory_slots); None: its default
    gate: float | None = None  # memory_layer: the gate's quantile (TrainConfig.memory_gate); None: its default (off)
    gate_contrast: float | None = None  # memory_layer: TrainConfig.memory_gate_contrast; None: its default (off)
    decay: float | None = None  # AdamW weight decay (TrainConfig.weight_decay); None: its default
    average: float | None = None  # the last share of steps averaged (TrainConfig.average_last); None: its default
    dropout: float | None = None  # LoRA dropout (TrainConfig.dropout); None: its default
    guard_questions: float | None = None  # the guard's QA share (TrainConfig.guard_questions); None: its default

    @property
    def name(self) -> str:
        return (f"{self.method}-{self.objective}-{'guard' if self.guard else 'noguard'}-{self.strategy}-"
                f"{self.budget or 'all'}" + "".join(f"-{k}{getattr(self, attr):g}" for k, (attr, *_) in KNOBS.items()
                                                    if getattr(self, attr) is not None))

    def _fields(self, section: str) -> dict:
        """The config fields this point sets in `section` ("train" or "synth"), as the config takes them."""
        return {field: TO_CONFIG.get(attr, lambda v: v)(getattr(self, attr)) for attr, _, where, field, _
                in KNOBS.values() if where == section and getattr(self, attr) is not None}

    def synth_config(self):
        """The SynthConfig of this point."""
        from inweights.config import SynthConfig

        return SynthConfig(strategies=tuple(self.strategy.split("+")), budget=self.budget, **self._fields("synth"))

    def train_config(self):
        """The TrainConfig of this point (guard off: no replay)."""
        from inweights.config import TrainConfig

        return TrainConfig(method=self.method, objective=self.objective,
                           **(self._fields("train") | ({} if self.guard else {"replay_fraction": 0.0})))


def default_points(budgets: list[int], ref: int, low: int) -> list[Point]:
    """Every point of the committed plane: learn's cloze data with LoRA, full fine-tuning and the memory layer;
    every method x objective with selfstudy data at two budgets (`ref` and `low`); LoRA's scaling curve over
    `budgets`; the guard off; and the settings tried beside the defaults (learning rates, a stronger guard, more
    answer spans, memory-layer sizes). Cheapest first within each group."""
    methods = ("lora", "full", "memory_layer", "cartridge", "tinylora")
    points = [Point(m, "sft", True, "cloze", None) for m in ("lora", "full")]
    points += [Point(m, o, True, "selfstudy", b) for b in (low, ref) for o in ("sft", "distill") for m in methods]
    points += [Point("lora", "sft", True, "selfstudy", b) for b in sorted(budgets)]
    points += [Point("lora", "sft", False, "cloze", None), Point("lora", "sft", False, "selfstudy", ref)]
    points += [Point("lora", "sft", True, "cloze", None, 1e-4), Point("full", "sft", True, "cloze", None, 1e-5)]
    points += [Point("full", "sft", True, "cloze", None, facts=10),
               Point("full", "sft", True, "cloze", None, replay=0.5, replay_sequences=256)]
    memory = [{}, {"lr": 0.03}, {"rows": 8192}, {"rows": 8192, "topk": 128}, {"rows": 8192, "facts": 10}]
    points += [Point("memory_layer", "sft", True, "cloze", None, **knobs) for knobs in memory]
    return list(dict.fromkeys(points))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=8, help="first N SQuAD dev passages (all their questions)")
    parser.add_argument("--skip-passages", type=int, default=0,
                        help="start after this many passages (a second, held-out set to check a choice made on the first)")
    parser.add_argument("--budgets", default="750,1500,3000,6000,12000", help="synthetic-token budgets")
    parser.add_argument("--reference-budget", type=int, default=6000, help="budget of the method/objective points")
    parser.add_argument("--low-budget", type=int, default=1500, help="their second, smaller budget")
    parser.add_argument("--points", default=None, help="comma-separated point names (default: the standard list)")
    parser.add_argument("--general-limit", type=int, default=50, help="items of each general task")
    parser.add_argument("--base", default=None, help="base model (default: the embedded gemma-3-270m)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plane")
    parser.add_argument("--report-only", action="store_true", help="rewrite plane.md and the plots from plane.json")
    parser.add_argument("--teacher", default=None, help="OpenAI-compatible URL of the teacher of the strategies that "
                        "need one (default: the base model in-process)")
    parser.add_argument("--teacher-model", default=None, help="the model name the teacher serves")
    parser.add_argument("--teacher-concurrency", type=int, default=16)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.out / "plane.json").read_text())
        (args.out / "plane.md").write_text(markdown(results))
        plot(results, args.out)
        return results

    from inweights.api import load_memory
    from inweights.config import LearnConfig
    from inweights.evaluate.conditions import answer_short, score
    from inweights.evaluate.general import GeneralLimits, compare, general_suite
    from inweights.evaluate.harness import mean_change_points
    from inweights.models import DEFAULT_BASE, load_base
    from inweights.store import Workspace
    from inweights.synth import strategy_versions

    progress = not args.no_progress
    budgets = [int(b) for b in args.budgets.split(",")]
    points = default_points(budgets, args.reference_budget, args.low_budget)
    if args.points:
        wanted = args.points.split(",")
        known = {p.name: p for p in points}
        points = [known.get(n) or _parse(n) for n in wanted]
    documents, questions = squad_passages(args.data, args.skip_passages, args.passages)
    base = load_base(args.base or DEFAULT_BASE)
    n = args.general_limit
    limits = GeneralLimits(arc_easy=n, piqa=n, boolq=n, triviaqa=n, wikitext_tokens=1024)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "plane.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    settings = {"passages": args.passages, "questions": len(questions), "general_limit": n, "base": base.name}
    if args.skip_passages:
        settings["skip_passages"] = args.skip_passages
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{results_path} was made with {results['settings']}; use another --out")
    results["settings"] = settings
    results |= {"versions": _versions(), "machine": {"threads": torch.get_num_threads(),
                                                    "platform": platform.platform()}}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    if "base" not in results:
        t = time.perf_counter()
        closed = answer_short(base.model, base.tokenizer, base.stop_token_ids, questions, [None] * len(questions))
        in_context = answer_short(base.model, base.tokenizer, base.stop_token_ids, questions,
                                  [documents[q.doc] for q in questions])
        results["base"] = {"closed_book": score(questions, closed), "in_context": score(questions, in_context),
                           "general": general_suite(base.model, base.tokenizer, args.data / "general", limits,
                                                    base.stop_token_ids, progress=progress),
                           "seconds": time.perf_counter() - t}
        save()
    em_closed = results["base"]["closed_book"]["em"]
    em_context = results["base"]["in_context"]["em"]
    exclude = [q.question for q in questions]
    results.setdefault("points", {})
    workspace = Workspace()  # its caches (replay text, targets, synthetic data) are shared across runs
    with tempfile.TemporaryDirectory() as folder:
        write_documents(folder, documents)
        for point in points:
            synth = point.synth_config()
            if args.teacher:
                synth = replace(synth, teacher=args.teacher, teacher_model=args.teacher_model,
                                teacher_concurrency=args.teacher_concurrency)
            config = LearnConfig(base=args.base or DEFAULT_BASE, synth=synth,
                                 train=point.train_config())
            requested = _requested(config)
            done = results["points"].get(point.name)
            if done is not None and "requested" in done and same_config(requested, done["requested"]):
                made_by = done.get("strategy_versions")  # absent: stored before points recorded them
                if made_by == strategy_versions(synth) if made_by is not None else not _strategies_changed(synth):
                    continue
            if done is not None:  # a name means today's defaults: a result made under others is kept aside, rerun
                results.setdefault("superseded", {}).setdefault(STALE, {})[point.name] = results["points"].pop(
                    point.name)
            print(f"--- {point.name}", flush=True)
            t = time.perf_counter()
            version = learn_point(folder, point, config, base, workspace, exclude, progress)
            learn_s = time.perf_counter() - t
            loaded = load_memory(version.ref, base=base, workspace=workspace)
            t = time.perf_counter()
            try:
                answers = answer_short(loaded.model, base.tokenizer, base.stop_token_ids, questions,
                                       [None] * len(questions))
                general = general_suite(loaded.model, base.tokenizer, args.data / "general", limits,
                                        base.stop_token_ids, progress=progress)
            finally:
                loaded.close()
            eval_s = time.perf_counter() - t
            scores = score(questions, answers)
            deltas = compare(results["base"]["general"], general)
            m = version.manifest
            results["points"][point.name] = {
                "method": point.method, "objective": point.objective, "guard": point.guard,
                "strategy": point.strategy, "budget": point.budget,
                "scores": scores, "gain_points": 100 * (scores["em"] - em_closed),
                "gap_recovered": gap_recovered(scores["em"], em_closed, em_context),
                "general": general, "general_deltas": deltas,
                "general_mean_points": mean_change_points(deltas),
                "wikitext_ppl_pct": deltas.get("wikitext2", {}).get("ppl_pct"),
                "synthetic_examples": m["synthetic"]["examples"], "synthetic_pool": m["synthetic"].get("pool"),
                "synthetic_tokens": m["synthetic"]["tokens"], "by_strategy": m["synthetic"].get("by_strategy"),
                "teacher": m["synthetic"].get("teacher"), "teacher_usage": m["synthetic"].get("teacher_usage"), "trained_tokens": m["training"]["tokens"],
                "epochs": m["config"]["train"]["epochs"], "lr": m["config"]["train"]["lr"],
                "train_s": m["training"]["seconds"], "learn_s": learn_s, "eval_s": eval_s,
                "final_loss": m["training"].get("final_loss"), "loss_curve": m["training"].get("loss_curve"),
                "validation": m["training"].get("validation"), "best_step": m["training"].get("best_step"),
                "stopped_early": m["training"].get("stopped_early"),
                "trainable_parameters": m["training"].get("trainable_parameters"),
                "predictions": answers[:20], "requested": requested,
                "strategy_versions": m["synthetic"].get("strategy_versions"),
            }
            print(f"{point.name}: EM {100 * scores['em']:.1f} (closed {100 * em_closed:.1f}, in-context "
                  f"{100 * em_context:.1f}), general {mean_change_points(deltas):+.1f} pts, wikitext "
                  f"{deltas.get('wikitext2', {}).get('ppl_pct', 0):+.1f}%, learn {learn_s:.0f}s", flush=True)
            save()
            _remove(workspace.memories_dir / _memory_name(point))
    (out / "plane.md").write_text(markdown(results))
    plot(results, out)
    print((out / "plane.md").read_text())
    return results


def squad_passages(data: Path, skip: int, passages: int) -> tuple[dict, list]:
    """SQuAD dev passages skip+1 .. skip+passages (documents by id) and all their questions."""
    from inweights.evaluate.questions import load_squad

    documents, questions = load_squad(data / "squad" / "squad_dev.jsonl", skip + passages)
    skipped = set(list(documents)[:skip])
    return ({k: v for k, v in documents.items() if k not in skipped},
            [q for q in questions if q.doc not in skipped])


def write_documents(folder, documents: dict) -> None:
    """Each passage as `<id>.txt` in `folder`, what `learn` reads."""
    for doc_id, text in documents.items():
        (Path(folder) / f"{doc_id}.txt").write_text(text, encoding="utf-8")


def synthetic_questions(documents: dict, tokenizer, synth_config) -> list:
    """learn's synthetic question-answer items for these passages (the views, plain text, left out), through the
    workspace's synthesis cache."""
    from inweights.corpus import chunk_documents, load_corpus
    from inweights.prompt import ANSWER_CUE
    from inweights.store import Workspace
    from inweights.synth import ExampleCache, synthesize

    with tempfile.TemporaryDirectory() as folder:
        write_documents(folder, documents)
        chunks = chunk_documents(load_corpus([folder]), tokenizer, synth_config.chunk_tokens)
    examples, _ = synthesize(chunks, None, synth_config, ExampleCache(Workspace().cache_dir("synth")), progress=False)
    return [e for e in examples if e.prompt.endswith(ANSWER_CUE)]


def gap_recovered(em: float, em_closed: float, em_context: float) -> float:
    """The share of the closed-book -> in-context exact-match gap a memory recovers."""
    return (em - em_closed) / max(em_context - em_closed, 1e-9)


def learn_point(folder, point, config, base, workspace, exclude, progress):
    from inweights.api import learn

    return learn([folder], _memory_name(point), config, base=base, workspace=workspace, exclude_questions=exclude,
                 progress=progress, yes=True)


STALE = ("measured under the defaults of an earlier version (a name means today's defaults); each was run again "
         "when asked for")
UNRECORDED = "†"  # marks a point measured before points recorded their config: its name meant the defaults then


def _requested(config) -> dict:
    """The learn config a point asks for, as JSON would store it (tuples become lists), to tell whether a stored
    result was made under the same settings."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config)))


UNVERSIONED = {"facts": 2, "cloze": 2}
"""The strategies' versions when points did not record them yet (plane results before `strategy_versions`);
any other strategy has not changed since."""


def _strategies_changed(synth) -> bool:
    """Whether a strategy of this config makes other examples than it did before points recorded versions."""
    from inweights.synth import STRATEGIES

    return any(STRATEGIES[name].VERSION != UNVERSIONED.get(name, STRATEGIES[name].VERSION) for name in synth.strategies)


def same_config(wanted: dict, stored: dict) -> bool:
    """Whether a stored config (a point's `requested`, or a memory's manifest) is the one `wanted` asks for (both
    as `_requested` writes them): every setting equal, except those added since the stored one was written
    (absent there; they must be at their defaults, which is what the stored run used)."""
    from inweights.config import LearnConfig

    def same(want, got, default) -> bool:
        if isinstance(want, dict):
            return isinstance(got, dict) and all(
                same(v, got[k], (default or {}).get(k)) if k in got else v == (default or {}).get(k)
                for k, v in want.items())
        return want == got

    return same(wanted, stored, _requested(LearnConfig()))


def _memory_name(point: Point) -> str:
    return f"plane-{point.name}".replace(".", "p").replace("+", "")  # memory names take no '.' or '+'



def _parse(name: str) -> Point:
    """The inverse of Point.name: method-objective-guard-strategy-budget, then suffixes from KNOBS."""
    method, objective, guard, strategy, budget, *rest = name.split("-", 5)
    keys = "|".join(KNOBS)
    knobs = dict(re.findall(rf"({keys})(.+?)(?=-(?:{keys})|$)", rest[0])) if rest else {}
    if rest and "".join(f"-{k}{v}" for k, v in knobs.items()) != "-" + rest[0]:
        raise SystemExit(f"cannot read point {name!r}: after the budget come {_legend(with_defaults=False)}")
    settings = {KNOBS[k][0]: KNOBS[k][1](v) for k, v in knobs.items()}
    return Point(method, objective, guard == "guard", strategy, None if budget == "all" else int(budget), **settings)


def _legend(with_defaults: bool) -> str:
    """What each name suffix sets, in KNOBS order, with the default where the config has one."""
    from inweights.config import SynthConfig, TrainConfig

    parts = []
    for k, (_, _, section, field, meaning) in KNOBS.items():
        default = getattr(TrainConfig if section == "train" else SynthConfig, field)
        shown = with_defaults and isinstance(default, (int, float))  # not target_modules' empty tuple
        parts.append(f"-{k} ({meaning}" + (f", default {default:,}" if shown else "")
                     + ")")
    return ", ".join(parts)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)  # full fine-tunes are hundreds of MB each; the numbers are kept


def _versions() -> dict:
    import peft
    import transformers

    from inweights import __version__

    return {"inweights": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def markdown(results: dict) -> str:
    b = results["base"]
    s = results["settings"]
    where = f"passages {s['skip_passages'] + 1}-{s['skip_passages'] + s['passages']}" if s.get("skip_passages") \
        else f"{s['passages']} passages"
    lines = [f"# Learning/forgetting plane ({s['base']}, SQuAD dev: {where}, {s['questions']} "
             f"questions; general tasks: first {s['general_limit']} items each)", "",
             f"Base model: closed-book EM {100 * b['closed_book']['em']:.1f}, in-context EM "
             f"{100 * b['in_context']['em']:.1f}, WikiText-2 ppl {b['general']['wikitext2']['ppl']:.2f}.", ""]
    lines += _table(results["points"])
    lines += ["", "Targets (issue #12, default learn, on SQuAD passages 25-48): gap recovered >= 60%, WikiText-2 ppl "
              "within +5%, each general task within 2 points. Point names: method-objective-guard-strategy-budget, "
              f"then where a setting is not today's default: {_legend(with_defaults=True)}."]
    if any("requested" not in p for group in [results["points"], *results.get("superseded", {}).values()]
           for p in group.values()):
        lines += ["", f"{UNRECORDED} measured before points recorded their config: a setting its name leaves out had "
                  "the default of that day, which may not be today's (docs/benchmarks.md says which changed)."]
    for note, points in results.get("superseded", {}).items():
        lines += ["", f"Superseded: {note}", ""] + _table(points)
    return "\n".join(lines) + "\n"


def _table(points: dict) -> list[str]:
    lines = ["| point | synthetic tokens | EM | F1 | gap recovered | general (mean pts) | ARC-E | PIQA | BoolQ | "
             "TriviaQA | WikiText-2 ppl | learn time |", "|" + "---|" * 12]
    order = ("lora", "full", "memory_layer", "cartridge", "tinylora")

    def key(item):  # cloze first, then by budget; within a budget sft before distill, methods in a fixed order
        name, p = item
        return (p["strategy"] != "cloze", p["budget"] or 0, p["objective"] != "sft",
                order.index(p["method"]) if p["method"] in order else len(order), not p["guard"], name)

    for name, p in sorted(points.items(), key=key):
        d = p["general_deltas"]

        def pts(task, key="acc_points"):
            return task_cell(d, task, key)

        mark = "" if "requested" in p else " " + UNRECORDED
        lines.append(f"| {name}{mark} | {p['synthetic_tokens']:,} | {100 * p['scores']['em']:.1f} | "
                     f"{100 * p['scores']['f1']:.1f} | {100 * p['gap_recovered']:.0f}% | "
                     f"{p['general_mean_points']:+.1f} | {pts('arc_easy')} | {pts('piqa')} | {pts('boolq')} | "
                     f"{pts('triviaqa', 'match_points')} | {p['wikitext_ppl_pct']:+.1f}% | {p['learn_s']:.0f} s |")
    return lines


def task_cell(deltas: dict, task: str, key: str = "acc_points") -> str:
    """A general task's change in points for a table, with the items lost and gained where both runs marked
    theirs: "-3 (-5/+2)" is 5 items lost and 2 gained."""
    if task not in deltas:
        return ""
    d = deltas[task]
    churn = f" (-{d['lost']}/+{d['gained']})" if "lost" in d else ""
    return f"{d[key]:+.0f}{churn}"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["points"]
    if not points:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = {"lora": "tab:blue", "tinylora": "tab:cyan", "full": "tab:red", "memory_layer": "tab:green",
              "cartridge": "tab:purple"}
    axis_x = (lambda p: -p["general_mean_points"], lambda p: p["wikitext_ppl_pct"])  # lower is better on both

    def frontier(i, p):  # no other point learned at least as much and forgot no more, and is better on one axis
        return not any(q["gain_points"] >= p["gain_points"] and axis_x[i](q) <= axis_x[i](p)
                       and (q["gain_points"] > p["gain_points"] or axis_x[i](q) < axis_x[i](p)) for q in points.values())

    for name, p in points.items():
        marker = "o" if p["objective"] == "sft" else "s"
        face = colors.get(p["method"], "gray") if p["guard"] else "none"
        for i, (ax, x) in enumerate(zip(axes, (p["general_mean_points"], p["wikitext_ppl_pct"]))):
            ax.scatter([x], [p["gain_points"]], marker=marker, s=30 + p["train_s"] / 5,
                       facecolors=face, edgecolors=colors.get(p["method"], "gray"))
            if frontier(i, p):  # naming every point makes an unreadable pile; plane.md has them all
                ax.annotate(name, (x, p["gain_points"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    gap = 100 * (results["base"]["in_context"]["em"] - results["base"]["closed_book"]["em"])
    for ax, label in zip(axes, ("general-task change, mean (points; right is better)",
                                "WikiText-2 perplexity change (%; left is better)")):
        ax.axhline(gap, ls="--", c="gray", lw=0.8)
        ax.axhline(0.75 * gap, ls=":", c="gray", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("closed-book EM gain over the base (points)")
        ax.grid(alpha=0.3)
    axes[0].legend(handles=[plt.Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in colors.items()],
                   fontsize=8, loc="upper left")
    axes[0].set_title("dashed: in-context; dotted: 75% of the gap (target)")
    axes[1].set_title("circle: sft, square: distill; hollow: no guard; size: train time;\n"
                      "named: points no other point beats on both axes", fontsize=10)
    axes[1].set_xscale("symlog", linthresh=10)
    axes[1].set_xlim(left=-5)
    fig.tight_layout()
    fig.savefig(out / "plane.png", dpi=120)
    plt.close(fig)

    curve = sorted((p["synthetic_tokens"], 100 * p["scores"]["em"], p["wikitext_ppl_pct"]) for name, p in points.items()
                   if _parse(name) == Point("lora", "sft", True, "selfstudy", p["budget"]))
    if curve:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-", label="closed-book EM")
        ax.axhline(100 * results["base"]["in_context"]["em"], ls="--", c="gray", label="in-context EM")
        ax.axhline(100 * results["base"]["closed_book"]["em"], ls=":", c="gray", label="base closed-book EM")
        for tokens, em, ppl in curve:
            ax.annotate(f"ppl {ppl:+.0f}%", (tokens, em), fontsize=7, xytext=(3, -10), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("synthetic tokens (log)")
        ax.set_ylabel("exact match (%)")
        ax.set_title("Scaling: LoRA, sft, guard, selfstudy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
