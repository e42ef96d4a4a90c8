"""Evaluation questions: the user's own JSONL file, or the SQuAD and QuALITY benchmark files.

A question file has one JSON object a line, of either kind (see docs/eval.md):

    {"question": "When did the Oslo office open?", "answer": "March 2019", "aliases": ["2019"], "doc": "oslo.md"}
    {"question": "Who founded Acme?", "options": ["Ann", "Bob", "Cy", "Di"], "answer_index": 1, "doc": "acme.md"}

`doc` (optional) names the question's source document: in-context evaluation puts that document in the prompt.
`form` (optional) labels how the question relates to the text (for example "copied", "paraphrased", "reversed",
"two-hop"); the report then scores each form on its own, so carry-over from the text to new wordings shows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from inweights.errors import InweightsError


@dataclass(frozen=True)
class ShortAnswer:
    question: str
    answers: list[str]  # the gold answer first, then its aliases; a prediction matching any one counts
    doc: str | None = None
    form: str | None = None  # "copied", "paraphrased", "reversed", "two-hop", ... (any label the file uses)


@dataclass(frozen=True)
class MultipleChoice:
    question: str
    options: list[str]
    answer_index: int
    doc: str | None = None
    form: str | None = None


Question = ShortAnswer | MultipleChoice


def load_questions(path: Path, limit: int | None = None) -> list[Question]:
    """The first `limit` questions (all when None) of a question file; every line is checked, with its number."""
    path = Path(path)
    if not path.is_file():
        raise InweightsError(f"question file {path} does not exist")
    questions: list[Question] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if limit is not None and len(questions) >= limit:
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InweightsError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
        questions.append(_parse(row, f"{path}:{line_no}"))
    if not questions:
        raise InweightsError(f"{path} holds no questions; write one JSON object a line (see docs/eval.md)")
    kinds = {type(q) for q in questions}
    if len(kinds) > 1:
        raise InweightsError(f"{path} mixes short-answer and multiple-choice questions; put each kind in its own file")
    return questions


def _parse(row, where: str) -> Question:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
        raise InweightsError(f"{where}: each line needs a non-empty \"question\" string")
    doc, form = row.get("doc"), row.get("form")
    if doc is not None and not isinstance(doc, str):
        raise InweightsError(f"{where}: \"doc\" must be a document name (a string)")
    if form is not None and (not isinstance(form, str) or not form.strip()):
        raise InweightsError(f"{where}: \"form\" must be a label (a non-empty string)")
    if "options" in row:
        options, index = row["options"], row.get("answer_index")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise InweightsError(f"{where}: \"options\" must be a list of at least 2 strings")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(options):
            raise InweightsError(f"{where}: \"answer_index\" must be a whole number from 0 to {len(options) - 1}")
        return MultipleChoice(row["question"].strip(), options, index, doc, form)
    answer, aliases = row.get("answer"), row.get("aliases", [])
    if not isinstance(answer, str) or not answer.strip():
        raise InweightsError(f"{where}: a short-answer question needs an \"answer\" string "
                             "(or \"options\" and \"answer_index\" for multiple choice)")
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InweightsError(f"{where}: \"aliases\" must be a list of strings")
    return ShortAnswer(row["question"].strip(), [answer] + [a for a in aliases if a != answer], doc, form)


def load_squad(path: Path, passages: int | None = None) -> tuple[dict[str, str], list[ShortAnswer]]:
    """The first `passages` SQuAD passages ({doc_id: text}) and all their questions."""
    docs: dict[str, str] = {}
    questions: list[ShortAnswer] = []
    for row in _rows(path, passages):
        docs[row["doc_id"]] = row["text"]
        questions += [ShortAnswer(q["question"].strip(), [q["answer"]], row["doc_id"]) for q in row["questions"]]
    return docs, questions


def load_quality(path: Path, stories: int | None = None) -> tuple[dict[str, str], list[MultipleChoice]]:
    """The first `stories` QuALITY stories and their questions, phrased to name the story.

    Closed-book, "the story" means nothing to the model, so each question becomes
    `In the story "TITLE", <question>` (as in EntiGraph).
    """
    docs: dict[str, str] = {}
    questions: list[MultipleChoice] = []
    for row in _rows(path, stories):
        docs[row["doc_id"]] = row["text"]
        title = story_title(row["title_line"], row["text"])
        questions += [MultipleChoice(f'In the story "{title}", {q["question"].strip()}', list(q["options"]),
                                     int(q["answer_index"]), row["doc_id"]) for q in row["questions"]]
    return docs, questions


def story_title(title_line: str, text: str) -> str:
    """The title line, or the first line of the text after any HTML comment (one story starts with one)."""
    candidate = title_line
    if candidate.lstrip().startswith("<!--"):
        stripped = re.sub(r"<!--.*?-->", "", text, flags=re.S)
        candidate = next((line for line in stripped.splitlines() if line.strip()), "")
    return " ".join(candidate.split())


def _rows(path: Path, limit: int | None):
    path = Path(path)
    if not path.is_file():
        raise InweightsError(f"benchmark file {path} is missing; point --data at ../shared/data")
    count = 0
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if limit is not None and count >= limit:
            return
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise InweightsError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            count += 1
