"""Reading every supported file kind, skipping every kind of bad file with a reason, and token-bounded chunking."""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path

import pytest

from inweights.corpus import Document, Skipped, chunk_documents, load_corpus, read_documents
from inweights.errors import InweightsError


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, xref offsets computed so strict readers accept it."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypted_pdf(user_password: str = "hunter2") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(minimal_pdf("Secret text"))))
    writer.encrypt(user_password=user_password, owner_password="owner")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def docx_bytes(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


HTML = """<html><head><title>Fjordlight</title><style>p { color: red; }</style>
<script>var secret = "do not learn me";</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Offices</h1>
<p>The Oslo office
   opened in March 2019.</p><p>It employs forty people.<br>Most of them ski.</p>
<ul><li>Oslo</li><li>Bergen</li></ul></body></html>"""


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read_one(path: Path) -> Document | Skipped:
    documents, skipped = read_documents([path])
    assert len(documents) + len(skipped) == 1
    return (documents or skipped)[0]


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --- each reader ---

def test_txt_is_read_and_whitespace_normalised(tmp_path):
    doc = read_one(write(tmp_path / "a.txt", "Hello   world.  \r\n\r\n\r\n\r\nSecond\tparagraph.\n"))
    assert doc == Document(path=str(tmp_path / "a.txt"), text="Hello world.\n\nSecond paragraph.",
                           sha256=doc.sha256, kind="txt")


def test_txt_with_utf8_bom_and_utf16(tmp_path):
    assert read_one(write(tmp_path / "bom.txt", b"\xef\xbb\xbfCaf\xc3\xa9 au lait")).text == "Café au lait"
    assert read_one(write(tmp_path / "u16.txt", "Grüße aus Oslo".encode("utf-16"))).text == "Grüße aus Oslo"


def test_legacy_encodings_are_detected_and_read(tmp_path):
    western = "Café in Tromsø: “the Ærø office” opened in 2019, coffee costs 5 € a cup.\n"
    assert read_one(write(tmp_path / "cp1252.txt", western.encode("cp1252"))).text == western.strip()
    latin1 = "Møte på kontoret i Tromsø. Café crème à Paris."
    assert read_one(write(tmp_path / "latin1.md", latin1.encode("latin-1"))).text == latin1
    cyrillic = "Москва — столица России. Офис открылся в 2019 году."
    assert read_one(write(tmp_path / "cp1251.txt", cyrillic.encode("cp1251"))).text == cyrillic
    html = f"<html><body><p>{western}</p></body></html>".encode("cp1252")
    assert read_one(write(tmp_path / "page.html", html)).text == western.strip()


def test_markdown_is_kept_as_text(tmp_path):
    doc = read_one(write(tmp_path / "notes.md", "# Title\n\n- one\n  - nested\n\nBody text."))
    assert doc.kind == "md"
    assert doc.text == "# Title\n\n- one\n  - nested\n\nBody text."
    assert read_one(write(tmp_path / "b.markdown", "## H")).kind == "md"


def test_html_drops_script_style_nav_and_keeps_paragraphs(tmp_path):
    doc = read_one(write(tmp_path / "page.html", HTML))
    assert doc.kind == "html"
    for unwanted in ("secret", "do not learn me", "color", "Home", "About"):
        assert unwanted not in doc.text
    assert "The Oslo office opened in March 2019.\n\nIt employs forty people.\nMost of them ski." in doc.text
    assert doc.text.startswith("Fjordlight\n\nOffices")
    assert doc.text.endswith("Oslo\n\nBergen")


def test_pdf_is_read(tmp_path):
    doc = read_one(write(tmp_path / "hello.pdf", minimal_pdf("Hello PDF world")))
    assert doc.kind == "pdf"
    assert doc.text == "Hello PDF world"


def test_docx_paragraphs_and_table_cells(tmp_path):
    data = docx_bytes(["First paragraph.", "", "Second paragraph."], table=[["City", "Staff"], ["Oslo", "40"]])
    doc = read_one(write(tmp_path / "report.docx", data))
    assert doc.kind == "docx"
    assert doc.text == "First paragraph.\n\nSecond paragraph.\n\nCity | Staff\n\nOslo | 40"


# --- every bad input is skipped with a reason, never raised ---

@pytest.mark.parametrize("name, data, reason", [
    ("random.txt", random.Random(0).randbytes(200) + b"\x00\x00" + random.Random(1).randbytes(200), "binary file"),
    ("controls.txt", bytes(range(1, 32)) * 10, "binary file"),
    ("empty.txt", b"", "empty"),
    ("blank.md", b"  \n\t\n   \r\n", "empty"),
    ("blank.html", b"<html><body><script>x()</script>   </body></html>", "empty"),
    ("broken.pdf", b"%PDF-1.4 this is not really a pdf" + random.Random(2).randbytes(64), "corrupt PDF"),
    ("broken.docx", b"PK\x03\x04 not a zip archive at all", "corrupt DOCX"),
    ("image.png", b"\x89PNG\r\n", "unsupported type .png"),
    ("README", b"no extension", "unsupported type (no extension)"),
])
def test_bad_file_is_skipped_with_reason(tmp_path, name, data, reason):
    result = read_one(write(tmp_path / name, data))
    assert isinstance(result, Skipped)
    assert result.reason.startswith(reason)


def test_encrypted_pdf_is_skipped(tmp_path):
    result = read_one(write(tmp_path / "locked.pdf", encrypted_pdf()))
    assert result == Skipped(str(tmp_path / "locked.pdf"), "encrypted PDF")


def test_pdf_encrypted_with_empty_password_is_read(tmp_path):
    # Permission-only encryption (empty user password) is common and opens without asking anyone.
    assert read_one(write(tmp_path / "perms.pdf", encrypted_pdf(user_password=""))).text == "Secret text"


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    locked = write(tmp_path / "locked.txt", "secret")
    real_read_bytes = Path.read_bytes

    def read_bytes(self):  # tests may run as root, where chmod 000 does not deny reading
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert read_one(locked) == Skipped(str(locked), "unreadable: Permission denied")


def test_missing_path_is_skipped(tmp_path):
    assert read_documents([tmp_path / "nope"]) == ([], [Skipped(str(tmp_path / "nope"), "does not exist")])


def test_good_files_beside_bad_ones_are_all_read(tmp_path, caplog):
    write(tmp_path / "docs/a.txt", "Alpha text.")
    write(tmp_path / "docs/b.html", HTML)
    write(tmp_path / "docs/c.pdf", minimal_pdf("Hello PDF world"))
    write(tmp_path / "docs/d.docx", docx_bytes(["Delta text."]))
    write(tmp_path / "docs/e.md", "# Echo")
    write(tmp_path / "docs/f-cp1252.txt", "Café Tromsø opened in 2019.".encode("cp1252"))
    write(tmp_path / "docs/bad/binary.txt", b"\x00\x01\x02")
    write(tmp_path / "docs/bad/empty.md", b"")
    write(tmp_path / "docs/bad/locked.pdf", encrypted_pdf())
    write(tmp_path / "docs/bad/broken.docx", b"garbage")
    write(tmp_path / "docs/bad/x.xyz", b"what")
    with caplog.at_level(logging.WARNING, logger="inweights"):
        documents = load_corpus([tmp_path / "docs", tmp_path / "missing"])
    assert [d.path for d in documents] == ["a.txt", "b.html", "c.pdf", "d.docx", "e.md", "f-cp1252.txt"]
    assert [d.kind for d in documents] == ["txt", "html", "pdf", "docx", "md", "txt"]
    assert documents[-1].text == "Café Tromsø opened in 2019."
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one message listing everything, not one per file
    message = warnings[0].getMessage()
    for expected in ("bad/binary.txt: binary file", "bad/empty.md: empty", "bad/locked.pdf: encrypted PDF",
                     "bad/broken.docx: corrupt DOCX", "bad/x.xyz: unsupported type .xyz", "missing: does not exist"):
        assert expected in message


def test_nothing_readable_raises_a_helpful_error(tmp_path):
    write(tmp_path / "only/empty.txt", b"")
    write(tmp_path / "only/pic.jpg", b"\xff\xd8\xff")
    with pytest.raises(InweightsError) as excinfo:
        load_corpus([tmp_path / "only"])
    message = str(excinfo.value)
    assert str(tmp_path / "only") in message
    for suffix in (".txt", ".md", ".html", ".pdf", ".docx"):
        assert suffix in message


# --- walking, order, identity ---

def test_recursive_walk_is_sorted_and_skips_hidden(tmp_path):
    for relative in ("z.txt", "a/b/deep.txt", "a/top.md", "m.txt", ".hidden.txt", ".git/config.txt", "a/.cache/x.txt"):
        write(tmp_path / "root" / relative, f"Text of {relative}.")
    documents, skipped = read_documents([tmp_path / "root"])
    assert [d.path for d in documents] == ["a/b/deep.txt", "a/top.md", "m.txt", "z.txt"]
    assert skipped == []
    again, _ = read_documents([str(tmp_path / "root")])
    assert again == documents


def test_duplicates_are_kept_once(tmp_path):
    write(tmp_path / "a.txt", "Same words.")
    write(tmp_path / "b.md", "Same   words.\n")  # same text once whitespace is normalised
    documents, skipped = read_documents([tmp_path])
    assert [d.path for d in documents] == ["a.txt"]
    assert skipped == [Skipped("b.md", "duplicate of a.txt")]


def test_content_hash_is_stable_and_tracks_the_text(tmp_path):
    path = write(tmp_path / "a.txt", "Version one.")
    first, second = read_one(path), read_one(path)
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    write(tmp_path / "copy/a.txt", "Version one.")
    assert read_one(tmp_path / "copy/a.txt").sha256 == first.sha256  # identity is content, not location
    write(path, "Version two.")
    assert read_one(path).sha256 != first.sha256


# --- chunking ---

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_doc(text: str, path: str = "doc.txt") -> Document:
    from inweights.corpus import _normalise, _sha256

    text = _normalise(text)
    return Document(path=path, text=text, sha256=_sha256(text), kind="txt")


LONG_TEXT = "\n\n".join(
    " ".join(f"Sentence {p}.{s} says the Oslo office of Fjordlight opened in March 2019." for s in range(p % 7 + 1))
    for p in range(30)
) + "\n\n- a list line\n- another list line\n\nShort."


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
def test_chunks_respect_the_budget_and_cover_all_text(tokenizer, max_tokens):
    docs = [make_doc(LONG_TEXT, "long.txt"), make_doc("Tiny.", "tiny.txt")]
    chunks = chunk_documents(docs, tokenizer, max_tokens=max_tokens)
    for doc in docs:
        mine = [c for c in chunks if c.doc_path == doc.path]
        assert [c.index for c in mine] == list(range(len(mine)))
        assert all(c.doc_sha256 == doc.sha256 for c in mine)
        assert squash("".join(c.text for c in mine)) == squash(doc.text)
    for chunk in chunks:
        assert chunk.text.strip() == chunk.text and chunk.text
        assert chunk.n_tokens == n_tokens(tokenizer, chunk.text) <= max_tokens
    assert len([c for c in chunks if c.doc_path == "long.txt"]) > 1


def test_chunks_pack_paragraphs_up_to_the_budget(tokenizer):
    chunks = chunk_documents([make_doc("One.\n\nTwo.\n\nThree.")], tokenizer, max_tokens=256)
    assert [c.text for c in chunks] == ["One.\n\nTwo.\n\nThree."]


def test_monster_sentence_is_split(tokenizer):
    words = " ".join(f"word{i}" for i in range(400))  # one paragraph, one sentence, no punctuation
    glued = "x" * 3000  # and one "word" longer than any window
    doc = make_doc(f"{words} {glued} end")
    chunks = chunk_documents([doc], tokenizer, max_tokens=32)
    assert len(chunks) > 10
    assert all(0 < c.n_tokens <= 32 for c in chunks)
    assert squash("".join(c.text for c in chunks)) == squash(doc.text)
    assert chunks[0].text.startswith("word0 word1")


def test_chunk_hash_identifies_the_text(tokenizer):
    a = chunk_documents([make_doc("Same text.", "a.txt")], tokenizer)
    b = chunk_documents([make_doc("Same text.", "b.txt")], tokenizer)
    assert a[0].sha256 == b[0].sha256
    assert chunk_documents([make_doc("Other text.")], tokenizer)[0].sha256 != a[0].sha256


def test_too_small_budget_is_refused(tokenizer):
    with pytest.raises(InweightsError):
        chunk_documents([make_doc("Hello.")], tokenizer, max_tokens=2)


def test_chunking_work_is_linear_in_the_text(tokenizer):
    """A big corpus is counted in batches, each character a bounded number of times: re-counting the growing
    chunk after every piece made a 33 MB file take minutes and gigabytes."""
    text = "\n\n".join([LONG_TEXT] * 40 + [" ".join(f"word{i}" for i in range(3000))])
    calls, counted = [0], [0]

    class Counting:
        def __call__(self, texts, **kwargs):
            calls[0] += 1
            counted[0] += sum(map(len, texts)) if isinstance(texts, list) else len(texts)
            return tokenizer(texts, **kwargs)

    chunks = chunk_documents([make_doc(text)], Counting(), max_tokens=64)
    assert all(c.n_tokens == n_tokens(tokenizer, c.text) <= 64 for c in chunks)
    assert counted[0] <= 3 * len(text)  # pieces, their sentences or windows once, chunks once: not quadratic
    assert calls[0] <= 3 * len(chunks) // 256 + 10  # batched
