"""The forgetting suite: general ability of a (possibly adapted) model on fixed subsets of public benchmarks.

Reads `../shared/data/general/` (see its README): ARC-Easy, PIQA and BoolQ are scored by option
log-likelihood, TriviaQA by a short greedy answer and WikiText-2 by perplexity. Each task takes the FIRST
N items, so numbers from different runs compare. Run `general_suite` on the base model and on the adapted
one, then `compare` the two reports.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from inweights.errors import InweightsError
from inweights.evaluate.metrics import alias_match, choose, option_logliks, sum_nll
from inweights.generate import generate

MULTIPLE_CHOICE_FILES = {"arc_easy": "arc_easy.jsonl", "piqa": "piqa.jsonl", "boolq": "boolq_500.jsonl"}
TRIVIAQA_FILE = "triviaqa_dev1500.jsonl"
WIKITEXT_FILE = "wikitext2_test.raw"

# Multiple-choice prompt: the query, then this cue; each choice is scored as " " + choice after it.
ANSWER_CUE = "\nAnswer:"
TRIVIAQA_MAX_NEW_TOKENS = 16
WIKITEXT_WINDOW = 512

# Result keys that are accuracies in [0, 1]; `compare` reports them as percentage points.
_ACCURACY_KEYS = ("acc", "acc_norm", "match")


@dataclass
class GeneralLimits:
    """How many items of each task to score (always the first N). 0 skips the task."""

    arc_easy: int = 200
    """ARC-Easy questions (2,376 available)."""
    piqa: int = 200
    """PIQA questions (1,838 available)."""
    boolq: int = 200
    """BoolQ questions (500 available)."""
    triviaqa: int = 200
    """TriviaQA closed-book questions (1,500 available)."""
    wikitext_tokens: int = 1024
    """WikiText-2 test tokens scored for perplexity."""

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 0:
                raise InweightsError(f"general limit {name}={value!r} must be a whole number >= 0 (0 skips the task)")


def load_multiple_choice(path: Path, limit: int | None = None) -> list[dict]:
    """The first `limit` items (all when None) of a `{"query", "choices", "gold"}` JSONL file."""
    items = []
    for line_no, row in _read_jsonl(path, limit):
        try:
            query, choices, gold = row["query"], list(row["choices"]), int(row["gold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InweightsError(
                f"{path}:{line_no}: expected an object with query, choices and gold, got {exc!r}"
            ) from exc
        if not 0 <= gold < len(choices):
            raise InweightsError(f"{path}:{line_no}: gold index {gold} is outside its {len(choices)} choices")
        items.append({"query": query, "choices": choices, "gold": gold})
    return items


def load_triviaqa(path: Path, limit: int | None = None) -> list[dict]:
    """The first `limit` items of a TriviaQA `{"context", "answer", "aliases"}` JSONL file.

    The answer is added to the aliases if it is not already one.
    """
    items = []
    for line_no, row in _read_jsonl(path, limit):
        try:
            context, answer, aliases = row["context"], row["answer"], list(row["aliases"])
        except (KeyError, TypeError) as exc:
            raise InweightsError(
                f"{path}:{line_no}: expected an object with context, answer and aliases, got {exc!r}"
            ) from exc
        if answer not in aliases:
            aliases.append(answer)
        items.append({"context": context, "answer": answer, "aliases": aliases})
    return items


def load_wikitext(path: Path) -> str:
    """The raw WikiText text with CRLF line ends turned into LF."""
    return _require(path).read_text(encoding="utf-8").replace("\r\n", "\n")


def general_suite(
    model,
    tokenizer,
    data_dir: Path,
    limits: GeneralLimits,
    stop_token_ids,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Score the model on each task whose limit is above 0.

    Returns `{"arc_easy" | "piqa" | "boolq": {"acc", "acc_norm", "n", "correct"}, "triviaqa": {"match", "n",
    "correct"}, "wikitext2": {"ppl", "tokens"}}`, without the skipped tasks. `acc` picks the option with the
    highest total log-likelihood. `acc_norm` divides that by the option's token count. TriviaQA takes the first
    line of a 16-token greedy answer and counts it correct when it contains an alias (see `alias_match`).
    `correct` marks each item right ("1") or wrong ("0") by `acc` or `match`.
    """
    data_dir = Path(data_dir)
    report: dict = {}
    for task, filename in MULTIPLE_CHOICE_FILES.items():
        limit = getattr(limits, task)
        if limit:
            items = load_multiple_choice(data_dir / filename, limit)
            report[task] = _multiple_choice(model, tokenizer, items, task, batch_size, progress)
    if limits.triviaqa:
        items = load_triviaqa(data_dir / TRIVIAQA_FILE, limits.triviaqa)
        report["triviaqa"] = _triviaqa(model, tokenizer, items, stop_token_ids, batch_size, progress)
    if limits.wikitext_tokens:
        text = load_wikitext(data_dir / WIKITEXT_FILE)
        with tqdm(total=1, desc="wikitext2", disable=not progress, leave=False) as bar:
            nll, tokens = sum_nll(model, tokenizer, text, limits.wikitext_tokens, WIKITEXT_WINDOW)
            bar.update(1)
        report["wikitext2"] = {"ppl": math.exp(nll / tokens), "tokens": tokens}
    return report


def compare(base: dict, other: dict) -> dict:
    """Per-task change from `base` to `other`, for tasks in both reports.

    Accuracies become `<key>_points` (other - base, x100, so +1.5 means 1.5 points better). Perplexity
    becomes `ppl_pct`, the relative change in % (positive means worse). Where both reports mark their items
    (`correct`), `lost` and `gained` count the items that went from right to wrong and back: a change of -3
    points on 100 items made of 3 lost and 0 gained is a shift, made of 9 lost and 6 gained mostly churn. Both
    reports must have scored the same number of items, or the numbers would not be comparable.
    """
    deltas: dict = {}
    for task in base.keys() & other.keys():
        a, b = base[task], other[task]
        for size in ("n", "tokens"):
            if size in a and a.get(size) != b.get(size):
                raise InweightsError(
                    f"cannot compare {task}: {a[size]} vs {b.get(size)} {size}; rerun both with the same limits"
                )
        task_deltas = {f"{key}_points": 100 * (b[key] - a[key]) for key in _ACCURACY_KEYS if key in a}
        if len(a.get("correct", "")) == len(b.get("correct", "")) > 0:
            pairs = list(zip(a["correct"], b["correct"]))
            task_deltas |= {"lost": pairs.count(("1", "0")), "gained": pairs.count(("0", "1"))}
        if "ppl" in a:
            task_deltas["ppl_pct"] = 100 * (b["ppl"] / a["ppl"] - 1)
        deltas[task] = task_deltas
    return {task: deltas[task] for task in base if task in deltas}  # keep the report's task order


def _multiple_choice(model, tokenizer, items: list[dict], task: str, batch_size: int, progress: bool) -> dict:
    right, correct_norm = [], 0
    with tqdm(total=len(items), desc=task, disable=not progress, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            contexts = [item["query"].rstrip() + ANSWER_CUE for item in chunk]
            logliks = option_logliks(model, tokenizer, contexts, [item["choices"] for item in chunk], batch_size)
            for item, scores in zip(chunk, logliks):
                right.append(choose(scores, normalize=False) == item["gold"])
                correct_norm += choose(scores, normalize=True) == item["gold"]
            bar.update(len(chunk))
    n = len(items)
    return {"acc": sum(right) / n if n else 0.0, "acc_norm": correct_norm / n if n else 0.0, "n": n,
            "correct": _marks(right)}


def _triviaqa(model, tokenizer, items: list[dict], stop_token_ids, batch_size: int, progress: bool) -> dict:
    right = []
    with tqdm(total=len(items), desc="triviaqa", disable=not progress, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            answers = generate(model, tokenizer, [item["context"] for item in chunk],
                               max_new_tokens=TRIVIAQA_MAX_NEW_TOKENS, stop_token_ids=stop_token_ids,
                               batch_size=batch_size)
            for item, answer in zip(chunk, answers):
                first_line = answer.strip().split("\n", 1)[0]
                right.append(alias_match(first_line, item["aliases"]) == 1.0)
            bar.update(len(chunk))
    n = len(items)
    return {"match": sum(right) / n if n else 0.0, "n": n, "correct": _marks(right)}


def _marks(right: list[bool]) -> str:
    """Which items were right, one character each ("1" right, "0" wrong): compact in JSON, and enough for
    `compare` to count the items a change lost and gained."""
    return "".join("1" if r else "0" for r in right)


def _read_jsonl(path: Path, limit: int | None):
    """Yield (line number, parsed object) for the first `limit` non-blank lines."""
    path = _require(path)
    count = 0
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InweightsError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            count += 1


def _require(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InweightsError(
            f"general-ability data file {path} is missing; point the data directory at ../shared/data/general "
            "or set that task's limit to 0 to skip it"
        )
    return path

