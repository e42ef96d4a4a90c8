"""Read a user's documents into plain text, and cut that text into token-bounded chunks.

Reading never fails on one bad file: anything we cannot turn into text is returned as a `Skipped` with a short
reason, so a folder of 500 PDFs with 3 scanned ones still learns the other 497 and says which 3 it left out.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from inweights.errors import InweightsError

log = logging.getLogger("inweights")

KIND_BY_SUFFIX = {".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
                  ".pdf": "pdf", ".docx": "docx"}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(KIND_BY_SUFFIX)
MIN_CHUNK_TOKENS = 8  # below this a single multi-byte character may not fit in a chunk


@dataclass(frozen=True)
class Document:
    path: str    # relative to the folder the user passed, or the file path as given
    text: str    # plain text, whitespace normalised, paragraphs separated by "\n\n"
    sha256: str  # hash of `text` (utf-8): identifies this version of the document
    kind: str    # "txt" | "md" | "html" | "pdf" | "docx"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str  # short and human: "binary file", "empty", "encrypted PDF", ...


@dataclass(frozen=True)
class Chunk:
    doc_path: str
    doc_sha256: str
    index: int      # position within its document
    text: str
    n_tokens: int
    sha256: str     # hash of `text`: the cache key for synthetic data made from this chunk


class _Unreadable(Exception):
    """An extractor's way of saying why a file is skipped."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalise(text: str) -> str:
    """One space between words, no trailing spaces, at most one blank line between paragraphs.
    Leading indentation is kept because it carries meaning in Markdown lists and code."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"(?<=\S)[^\S\n]+(?=\S)", " ", text)
    text = re.sub(r"[^\S\n]+(?=\n|$)", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- one extractor per file kind: bytes in, raw text out, _Unreadable for anything we cannot use ---

def _decode_text(raw: bytes) -> str:
    """Text in UTF-8 (with or without a BOM), UTF-16, or a legacy encoding detected by charset-normalizer
    (Windows-1252 "Café", Latin-1 "Tromsø", Windows-1251, Shift-JIS, ...). Raises _Unreadable for bytes that
    no encoding turns into text."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return _check_text(raw.decode("utf-8-sig", errors="replace"))
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # checked before the NUL test: UTF-16 is full of NUL bytes
        return _check_text(raw.decode("utf-16", errors="replace"))
    if b"\x00" in raw:
        raise _Unreadable("binary file")
    try:
        return _check_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    encoding = _detect_encoding(raw)
    if encoding is None:
        raise _Unreadable("undecodable text (no encoding fits: not UTF-8, UTF-16 or a legacy code page)")
    log.info("decoded as %s", encoding)
    return _check_text(raw.decode(encoding))


def _detect_encoding(raw: bytes) -> str | None:
    """The legacy encoding of `raw`, by charset-normalizer. Several single-byte code pages often decode a short
    Western text without a "mess" (cp1250 turns "Tromsø" into "Tromsř"); among the candidates as clean as the
    best one Windows-1252 wins, as it does in browsers, because it is by far the most common."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        return None
    best = matches[0]
    for match in (m for m in matches if m.percent_chaos <= best.percent_chaos):
        if "cp1252" in match.could_be_from_charset:
            return "cp1252"
    return best.encoding


def _check_text(text: str) -> str:
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\n\r\t\f")
    if controls > 0.05 * len(text):
        raise _Unreadable("binary file")
    return text


_PARA = "\ue000"  # private-use marks for block and line breaks, so HTML source whitespace can be collapsed
_LINE = "\ue001"
_HTML_BLOCKS = ["p", "div", "section", "article", "main", "header", "footer", "aside", "h1", "h2", "h3", "h4",
                "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "pre", "blockquote", "title",
                "figure", "figcaption", "form", "hr"]


def _html_text(raw: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode_text(raw), "lxml")
    for tag in soup.find_all(["script", "style", "nav", "noscript", "template"]):
        tag.decompose()
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before(_PARA)
        tag.insert_after(_PARA)
    for tag in soup.find_all(["br", "td", "th"]):
        tag.insert_after(_LINE if tag.name == "br" else " ")
    text = re.sub(r"\s+", " ", soup.get_text())  # HTML source line breaks mean nothing
    text = re.sub(rf"\s*{_PARA}[\s{_PARA}{_LINE}]*", "\n\n", text)
    return re.sub(rf"\s*{_LINE}\s*", "\n", text)


def _pdf_text(raw: bytes) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(raw))
    except Exception as err:  # pypdf raises many types on damaged files; all mean the same to the user
        raise _Unreadable(f"corrupt PDF: {err}") from None
    # Many PDFs are "encrypted" with an empty user password just to set permissions; those open fine.
    try:
        locked = reader.is_encrypted and not reader.decrypt("")
    except Exception:  # e.g. an algorithm pypdf cannot decrypt without an optional dependency
        locked = True
    if locked:
        raise _Unreadable("encrypted PDF")
    try:
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as err:
        raise _Unreadable(f"corrupt PDF: {err}") from None
    if not "".join(pages).strip():
        raise _Unreadable("empty (no text layer: a scanned PDF needs OCR first)")
    return "\n\n".join(pages)


def _docx_text(raw: bytes) -> str:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(raw))
    except Exception as err:
        raise _Unreadable(f"corrupt DOCX: {err}") from None
    blocks = []
    for block in document.iter_inner_content():  # body order, so tables stay where they were
        if isinstance(block, Table):
            for row in block.rows:
                cells = list(dict.fromkeys(cell.text.strip() for cell in row.cells))  # merged cells repeat
                blocks.append(" | ".join(c for c in cells if c))
        else:
            blocks.append(block.text)
    return "\n\n".join(blocks)


_EXTRACTORS: dict[str, Callable[[bytes], str]] = {
    "txt": _decode_text, "md": _decode_text, "html": _html_text, "pdf": _pdf_text, "docx": _docx_text}


def _read_one(path: Path, shown: str) -> Document | Skipped:
    kind = KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        return Skipped(shown, f"unsupported type {path.suffix.lower() or '(no extension)'}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        return Skipped(shown, f"unreadable: {err.strerror or err}")
    if not raw.strip():
        return Skipped(shown, "empty")
    try:
        text = _normalise(_EXTRACTORS[kind](raw))
    except _Unreadable as err:
        return Skipped(shown, str(err))
    if not text:
        return Skipped(shown, "empty")
    return Document(path=shown, text=text, sha256=_sha256(text), kind=kind)


def _walk(root: Path) -> list[Path]:
    """Every non-hidden file under `root`, sorted by relative path so runs are reproducible."""
    found = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune .git and friends early
        found += [Path(folder, name) for name in filenames if not name.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[Skipped]]:
    """Read files and folders (recursively) into Documents; every file that yields no text becomes a Skipped.
    Never raises for bad input. A document whose text was already read is kept once."""
    documents: list[Document] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # text hash -> path of the first copy
    for given in paths:
        root = Path(given)
        if not root.exists():
            skipped.append(Skipped(str(given), "does not exist"))
            continue
        files = [(p, p.relative_to(root).as_posix()) for p in _walk(root)] if root.is_dir() else [(root, str(given))]
        for path, shown in files:
            result = _read_one(path, shown)
            if isinstance(result, Skipped):
                skipped.append(result)
            elif result.sha256 in seen:
                skipped.append(Skipped(shown, f"duplicate of {seen[result.sha256]}"))
            else:
                seen[result.sha256] = shown
                documents.append(result)
    return documents, skipped


def load_corpus(paths: Iterable[str | Path]) -> list[Document]:
    """read_documents, plus one warning listing what was skipped; raises InweightsError when nothing is left."""
    paths = list(paths)
    documents, skipped = read_documents(paths)
    if skipped:
        lines = "\n".join(f"  {s.path}: {s.reason}" for s in skipped)
        log.warning("skipped %d of %d files:\n%s", len(skipped), len(skipped) + len(documents), lines)
    if not documents:
        inputs = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise InweightsError(
            f"No readable documents in {inputs}. Supported file types: {', '.join(sorted(SUPPORTED_SUFFIXES))}. "
            "Point at a file or folder containing at least one of these with text in it.")
    return documents


# --- chunking ---
#
# Linear in the corpus: pieces (paragraphs, else sentences, else token windows) are counted in batches by the
# fast tokenizer, packed greedily on the sums of their counts, and each packed chunk is counted once more to
# check it. Re-counting the growing chunk after every piece, as a naive packer does, is quadratic in the chunk
# and made a 33 MB file take minutes.

_COUNT_BATCH = 256      # texts per tokenizer call: bounds the memory of the token lists
_CHARS_PER_TOKEN = 16   # no tokenizer packs more characters into a token: longer text cannot fit, no need to count
_SEP_TOKENS = 1         # a separator costs at most one token between two counted pieces


def _count_many(tokenizer, texts: Sequence[str]) -> list[int]:
    counts: list[int] = []
    for i in range(0, len(texts), _COUNT_BATCH):
        counts += [len(ids) for ids in tokenizer(list(texts[i:i + _COUNT_BATCH]), add_special_tokens=False)["input_ids"]]
    return counts


def _fit_prefix(text: str, count: Callable[[str], int], max_tokens: int) -> int:
    """Length of the longest prefix of `text` within max_tokens, moved back to a space when there is one."""
    lo, hi = 1, min(len(text), max_tokens * _CHARS_PER_TOKEN)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(text[:mid]) <= max_tokens else (lo, mid - 1)
    space = text.rfind(" ", 0, lo + 1)
    return space if lo < len(text) and space > 0 and count(text[:space]) <= max_tokens else lo


def _windows(text: str, tokenizer, max_tokens: int) -> list[str]:
    """A sentence too long for one chunk, cut into pieces of about max_tokens tokens at spaces. Cut points come
    from the tokenizer's character offsets, one segment of text at a time so a huge run holds little memory."""
    pieces: list[str] = []
    segment_chars = max_tokens * _CHARS_PER_TOKEN * 4
    rest = text
    while rest:
        if len(rest) > segment_chars:
            cut = rest.rfind(" ", 0, segment_chars)
            segment, rest = (rest[:cut], rest[cut:].strip()) if cut > 0 else (rest[:segment_chars], rest[segment_chars:])
        else:
            segment, rest = rest, ""
        offsets = tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        start, first = 0, 0
        while first < len(offsets):
            last = min(first + max_tokens, len(offsets)) - 1
            end = offsets[last][1] if last + 1 >= len(offsets) else offsets[last + 1][0]
            space = segment.rfind(" ", start + 1, end + 1) if last + 1 < len(offsets) else -1
            end = space if space > start else end
            if segment[start:end].strip():
                pieces.append(segment[start:end].strip())
            start = end
            while first < len(offsets) and offsets[first][0] < end:
                first += 1
    return pieces


def _pieces(text: str, tokenizer, max_tokens: int) -> list[tuple[str, str, int]]:
    """(separator, piece, tokens) triples, each piece within max_tokens: whole paragraphs where they fit, else
    sentences (or lines), else windows of a monster sentence. The separator joins a piece to the previous one."""
    def fits_chars(t: str) -> bool:
        return len(t) <= max_tokens * _CHARS_PER_TOKEN

    paragraphs = text.split("\n\n")
    short = [p for p in paragraphs if fits_chars(p)]
    counts = dict(zip(short, _count_many(tokenizer, short)))
    out: list[tuple[str, str, int]] = []
    pending: list[tuple[str, str]] = []  # sentences of long paragraphs, counted together below
    for paragraph in paragraphs:
        n = counts.get(paragraph)
        if n is not None and n <= max_tokens:
            out.append(("\n\n", paragraph, n))
            continue
        parts = re.split(r"((?<=[.!?])\s+|\n)", paragraph)  # the captured separators are kept in `parts`
        sep = "\n\n"
        for i in range(0, len(parts), 2):
            sentence = parts[i].strip()
            if sentence:
                pending.append((sep, sentence))
                out.append(("", "", -len(pending)))  # a placeholder, filled in below in order
                sep = " "
            if i + 1 < len(parts):
                sep = sep if sep == "\n\n" else ("\n" if "\n" in parts[i + 1] else " ")
    if not pending:
        return out
    short = [s for _, s in pending if fits_chars(s)]
    counts = dict(zip(short, _count_many(tokenizer, short)))
    filled: list[tuple[str, str, int]] = []
    for sep, piece, n in out:
        if n >= 0:
            filled.append((sep, piece, n))
            continue
        sep, sentence = pending[-n - 1]
        n = counts.get(sentence)
        if n is not None and n <= max_tokens:
            filled.append((sep, sentence, n))
            continue
        windows = _windows(sentence, tokenizer, max_tokens)
        window_counts = _count_many(tokenizer, windows)
        for j, (window, c) in enumerate(zip(windows, window_counts)):
            filled.append((sep if j == 0 else " ", window, c))
    return filled


def _pack(pieces: list[tuple[str, str, int]], max_tokens: int) -> list[list[tuple[str, str, int]]]:
    """Consecutive pieces grouped greedily so that their counts plus a token per separator stay in budget."""
    groups: list[list[tuple[str, str, int]]] = []
    total = 0
    for piece in pieces:
        if groups and total + _SEP_TOKENS + piece[2] <= max_tokens:
            groups[-1].append(piece)
            total += _SEP_TOKENS + piece[2]
        else:
            groups.append([piece])
            total = piece[2]
    return groups


def _join(group: list[tuple[str, str, int]]) -> str:
    return group[0][1] + "".join(sep + piece for sep, piece, _ in group[1:])


def chunk_documents(docs: Sequence[Document], tokenizer, max_tokens: int = 256) -> list[Chunk]:
    """Cut each document into chunks of at most max_tokens tokens (no special tokens), packing consecutive
    paragraphs/sentences greedily so chunks are large and break at natural boundaries. Linear in the text:
    pieces are counted in batches and each chunk is counted once more to check it."""
    if max_tokens < MIN_CHUNK_TOKENS:
        raise InweightsError(f"max_tokens must be at least {MIN_CHUNK_TOKENS}, got {max_tokens}.")

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    chunks: list[Chunk] = []
    for doc in docs:
        texts = [_join(group) for group in _pack(_pieces(doc.text, tokenizer, max_tokens), max_tokens)]
        counts = _count_many(tokenizer, texts)
        i = 0
        while i < len(texts):
            if counts[i] > max_tokens:  # a tokenizer that merges across a separator: cut exactly (rare)
                cut = _fit_prefix(texts[i], count, max_tokens)
                texts[i:i + 1] = [texts[i][:cut].strip(), texts[i][cut:].strip()]
                counts[i:i + 1] = [count(texts[i]), count(texts[i + 1])]
            i += 1
        chunks += [Chunk(doc_path=doc.path, doc_sha256=doc.sha256, index=i, text=t, n_tokens=n, sha256=_sha256(t))
                   for i, (t, n) in enumerate(zip(texts, counts)) if t]
    return chunks
