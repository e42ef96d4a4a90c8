"""LLM-free text analysis shared by the strategies: sentences, answer-bearing spans, normalisation."""

from __future__ import annotations

import re
import string

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_NUMBER_WORDS = ("one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                 "sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|"
                 "hundred|thousand|million|billion")
# Ordered by priority: an earlier pattern's match wins where two overlap.
_SPAN_PATTERNS = [
    re.compile(rf"\b(?:\d{{1,2}}\s+(?:{_MONTHS})|(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?,?)\s+\d{{4}}\b"),
    re.compile(rf"\b(?:{_MONTHS})\s+\d{{4}}\b"),
    re.compile(r"\b\d{1,2}:\d{2}\b"),
    re.compile(r"\b[A-Z][\w'’-]*\s+\d+[A-Za-z]?\b"),  # a name with a number: "TideLog 300", "Bryggeveien 42"
    # Proper names: two or more capitalised words (allowing "of", "de", "van" inside), or one with digits.
    re.compile(r"[$€£]?\d[\d,.]*\d?%?(?:\s+(?:million|billion|thousand))?(?:\s+(?:per cent|percent|euros?|"
               r"dollars?|kroner|km|kilometres?|metres?|meters?|kg|grams?|hours?|days?|weeks?|months?|years?|"
               r"minutes?))?"),
    re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:of|de|del|la|van|von|and|&)?\s*[A-Z0-9][\w'’-]*)+\b"),
    re.compile(rf"\b(?:{_NUMBER_WORDS})(?:[\s-](?:{_NUMBER_WORDS}))*\b", re.IGNORECASE),
    re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zø-ÿ]{2,}\b"),  # a single capitalised word not starting the sentence
]


def sentences(text: str) -> list[str]:
    """Split text into sentences; headings and list items count as their own sentences."""
    out = []
    for line in re.split(r"\n+", text):
        line = line.strip().lstrip("#*-> ").strip()
        if not line:
            continue
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def answer_spans(sentence: str, limit: int = 3) -> list[str]:
    """Short spans that carry a fact: dates, times, names, numbers. Non-overlapping, in priority order."""
    taken: list[tuple[int, int]] = []
    spans: list[str] = []
    for pattern in _SPAN_PATTERNS:
        for match in pattern.finditer(sentence):
            start, end = match.span()
            text = re.sub(r"^(?:The|A|An)\s+", "", match.group().strip(" ,."))
            start += len(match.group()) - len(match.group().lstrip(" ,.")) + match.group().strip(" ,.").find(text)
            if not text or start == 0 and " " not in text and not any(c.isdigit() for c in text):
                continue  # a lone capitalised first word is usually just the sentence start
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            spans.append(text)
    # The highest-priority spans (dates, numbers before names) win the limit; then back into sentence order.
    return sorted(spans[:limit], key=sentence.find)


def question_word(span: str, before: str = "") -> str:
    """The wh-phrase that asks for a span of this kind (`before`: the sentence text in front of the span)."""
    unit = re.fullmatch(r"[\d,.]+\s+(?:million\s+|billion\s+|thousand\s+)?([a-z]+)", span)
    if unit and unit.group(1) not in ("euros", "euro", "dollars", "kroner", "percent"):
        return f"how many {unit.group(1)}"
    if re.search(rf"\b(?:{_MONTHS})\b", span) or re.fullmatch(r"(?:19|20)\d\d", span):
        return "when"
    if re.fullmatch(r"\d{1,2}:\d{2}", span):
        return "what time"
    if re.search(r"[$€£%]|euros?|dollars?|kroner|per ?cent", span):
        return "how much"
    if re.match(rf"(?:\d|(?:{_NUMBER_WORDS})\b)", span, re.IGNORECASE):
        return "how many"
    if re.search(r"\bby\s*$", before) and re.fullmatch(r"[A-Z][a-zæøåé-]+(?:\s+[A-Z][a-zæøåé-]+)+", span):
        return "who"
    return "what"


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation) | {"’", "‘", "“", "”"})
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def fact_tokens(text: str) -> set[str]:
    """Numbers and capitalised words: the parts of a sentence that a paraphrase must not invent or drop."""
    found = re.findall(r"\b(?:\d[\d,.:]*\d|\d|[A-Z][\w'’-]+)\b", text)
    return {re.sub(r"['’]s$", "", t).lower() for t in found} - _COMMON_CAPITALS  # "Bergen's" is Bergen


def invented_facts(text: str, source: str) -> set[str]:
    """Numbers and names in `text` that `source` does not contain: what a teacher made up. List markers ("1.",
    "-") are not numbers, and a capitalised word that opens a sentence or a line ("Because") is not a name."""
    text = re.sub(r"(?m)^\s*(?:\d+[.)]|[-*•])\s+", "", text)
    numbers = {t.lower() for t in re.findall(r"\b(?:\d[\d,.:]*\d|\d)\b", text)}
    names = {re.sub(r"['’]s$", "", m.group(0)).lower() for m in re.finditer(r"\b[A-Z][\w'’-]+\b", text)
             if text[: m.start()].rstrip(" \t\"'(“")[-1:] not in ("", ".", "!", "?", ":", ";", "\n")}
    return (numbers | names) - fact_tokens(source) - _COMMON_CAPITALS


_COMMON_CAPITALS = {"the", "a", "an", "it", "its", "this", "that", "these", "those", "in", "on", "at", "each",
                    "every", "all", "he", "she", "they", "we", "you", "i", "there", "staff", "employees", "after",
                    "before", "during", "when", "if", "for", "from", "with", "and", "but", "as", "by", "of", "to",
                    "our", "their", "his", "her", "some", "most", "new", "one"}
