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
    # Proper names: two or more capitalised words (allowing "of", "de", "van" inside), or one with digits.
    re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:of|de|la|van|von|and|&)?\s*[A-Z0-9][\w'’-]*)+\b"),
    re.compile(r"[$€£]?\d[\d,.]*\d?%?(?:\s+(?:per cent|percent|euros?|dollars?|kroner|km|kilometres?|metres?|"
               r"meters?|kg|grams?|hours?|days?|weeks?|months?|years?|minutes?|people|employees|staff))?"),
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
            text = match.group().strip(" ,.")
            if not text or match.start() == 0 and " " not in text and not any(c.isdigit() for c in text):
                continue  # a lone capitalised first word is usually just the sentence start
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            spans.append(text)
    # Keep sentence order for determinism and readable cloze items.
    spans.sort(key=sentence.find)
    return spans[:limit]


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation) | {"’", "‘", "“", "”"})
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def fact_tokens(text: str) -> set[str]:
    """Numbers and capitalised words: the parts of a sentence that a paraphrase must not invent or drop."""
    return {t.lower() for t in re.findall(r"\b(?:\d[\d,.:]*\d|\d|[A-Z][\w'’-]+)\b", text)} - _COMMON_CAPITALS


_COMMON_CAPITALS = {"the", "a", "an", "it", "its", "this", "that", "these", "those", "in", "on", "at", "each",
                    "every", "all", "he", "she", "they", "we", "you", "i", "there", "staff", "employees", "after",
                    "before", "during", "when", "if", "for", "from", "with", "and", "but", "as", "by", "of", "to",
                    "our", "their", "his", "her", "some", "most", "new", "one"}
