"""Corpus sources: reading, decoding, cleaning, and every kind of bad input."""

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spectra_interp.corpus.sources import (
    Document,
    decode_text,
    load_documents,
    normalize_newlines,
    parse_hf_spec,
    strip_gutenberg,
)
from spectra_interp.errors import SpectraError


def test_gutenberg_header_and_footer_are_stripped(books, book_ids):
    assert sorted(books) == book_ids
    for doc in books.values():
        assert "gutenberg" not in doc.text.lower()
        assert "*** START" not in doc.text and "*** END" not in doc.text
    frankenstein = books["pg84-frankenstein"].text
    assert frankenstein.startswith("Frankenstein;\n\nor, the Modern Prometheus")
    assert frankenstein.endswith("lost in darkness and distance.")


def test_strip_gutenberg_keeps_only_the_body():
    text = (
        "The Project Gutenberg eBook of X\nlicence\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***\nBody line.\n"
        "   *** END OF THE PROJECT GUTENBERG EBOOK X ***\nfooter licence\n"
    )
    assert strip_gutenberg(text).strip() == "Body line."
    assert strip_gutenberg("no markers here\n") == "no markers here\n"


def test_windows_1252_books_decode_to_unicode(books):
    frankenstein = books["pg84-frankenstein"].text
    assert "\u2014" in frankenstein  # the em dash, byte 0x97 in Windows-1252
    assert "Farewell.\u201d" in frankenstein  # a right double quote, byte 0x94
    for doc in books.values():
        assert "\ufffd" not in doc.text and "\r" not in doc.text


def test_decode_text_handles_each_encoding():
    text = "Caf\u00e9 \u2014 \u201cq\u201d"
    assert decode_text(text.encode("cp1252"), "x") == text
    assert decode_text(text.encode("utf-8"), "x") == text
    assert decode_text(b"\xef\xbb\xbf" + text.encode("utf-8"), "x") == text
    assert decode_text(text.encode("utf-16"), "x") == text
    assert normalize_newlines("a\r\nb\rc\n") == "a\nb\nc\n"


def test_folder_of_txt_md_jsonl_and_parquet(tmp_path):
    (tmp_path / "b.txt").write_bytes("Caf\u00e9 \u2014 line\r\nnext".encode("cp1252"))
    (tmp_path / "a.md").write_text("# Title\n\nbody\n")
    (tmp_path / "sub").mkdir()
    records = [{"text": "first"}, {"text": ""}, {"text": "third", "id": 3}]
    (tmp_path / "sub" / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.table({"text": ["row zero", None, "row two"]}), tmp_path / "d.parquet")
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "notes.csv").write_text("a,b\n")

    docs = load_documents(str(tmp_path))
    assert [d.doc_id for d in docs] == [
        "a.md",
        "b.txt",
        "d.parquet:0",
        "d.parquet:2",
        "sub/c.jsonl:1",
        "sub/c.jsonl:3",
    ]
    assert docs[1].text == "Caf\u00e9 \u2014 line\nnext"
    assert [d.text for d in docs[2:]] == ["row zero", "row two", "first", "third"]
    assert {d.source for d in docs} == {str(tmp_path)}
    assert load_documents(str(tmp_path), max_docs=3) == docs[:3]


def test_named_text_field_and_column(tmp_path):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"body": "from a field"}\n')
    parquet = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["from a column"]}), parquet)
    assert load_documents(f"{jsonl}:body") == [
        Document("x.jsonl:1", f"{jsonl}:body", "from a field")
    ]
    assert [d.text for d in load_documents(f"{parquet}:content")] == ["from a column"]


def test_stdlib_code_is_python_source_in_a_fixed_order():
    docs = load_documents("stdlib-code")
    ids = [d.doc_id for d in docs]
    assert len(docs) > 200
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i.endswith(".py") for i in ids)
    assert not any(i.startswith(("test/", "idlelib/idle_test/")) for i in ids)
    assert "os.py" in ids and "def " in docs[ids.index("os.py")].text
    assert load_documents("stdlib-code", max_docs=5) == docs[:5]


def test_comma_separated_specs_combine_sources(book_ids):
    docs = load_documents("bundled, stdlib-code", max_docs=1)
    assert [(d.source, d.doc_id) for d in docs] == [
        ("bundled", book_ids[0]),
        ("stdlib-code", load_documents("stdlib-code", max_docs=1)[0].doc_id),
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:roneneldan/TinyStories:train", ("roneneldan/TinyStories", None, "train", "text")),
        ("hf:user/ds:validation:story", ("user/ds", None, "validation", "story")),
        ("hf:wikitext:wikitext-2-raw-v1:train", ("wikitext", "wikitext-2-raw-v1", "train", "text")),
        (
            "hf:wikitext:wikitext-2-raw-v1:test:page",
            ("wikitext", "wikitext-2-raw-v1", "test", "page"),
        ),
        ("hf:ds::train:body", ("ds", None, "train", "body")),
    ],
)
def test_parse_hf_spec(spec, expected):
    assert parse_hf_spec(spec) == expected


def write(path, data):
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return str(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", r"empty\.txt is empty"),
        ("blank.txt", "  \n\n", r"blank\.txt has no text"),
        ("nul.txt", bytes(range(256)) * 4, r"nul\.txt looks like a binary file"),
        ("noise.txt", bytes(range(1, 256)) * 4, r"noise\.txt is neither UTF-8 nor Windows-1252"),
        ("bad.jsonl", '{"text": "ok"}\n{oops\n', r"bad\.jsonl line 2 is not valid JSON"),
        ("list.jsonl", "[1, 2]\n", r"list\.jsonl line 1 is a JSON list, not an object"),
        (
            "field.jsonl",
            '{"text": "a"}\n{"body": "b"}\n',
            r"line 2 has no text field 'text' \(fields: body\)",
        ),
        ("num.jsonl", '{"text": 5}\n', r"num\.jsonl line 1: text field 'text' is int"),
        ("junk.parquet", b"not a parquet file", r"junk\.parquet is not a readable Parquet file"),
    ],
)
def test_bad_files_raise_naming_file_and_line(tmp_path, name, content, message):
    with pytest.raises(SpectraError, match=message):
        load_documents(write(tmp_path / name, content))


def test_missing_parquet_column_lists_the_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), path)
    with pytest.raises(
        SpectraError, match=r"t\.parquet has no text column 'text' \(columns: body, n\)"
    ):
        load_documents(str(path))
    with pytest.raises(SpectraError, match=r"text column 'n' holds int64, not strings"):
        load_documents(f"{path}:n")


def test_a_bad_file_in_a_folder_fails_the_whole_load(tmp_path):
    write(tmp_path / "a.txt", "good text")
    write(tmp_path / "b.txt", b"")
    with pytest.raises(SpectraError, match=r"b\.txt is empty"):
        load_documents(str(tmp_path))
    with pytest.raises(SpectraError, match="has no .txt, .md, .jsonl or .parquet files"):
        load_documents(str((tmp_path / "none").mkdir() or tmp_path / "none"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/corpus.txt", r"'/no/such/corpus.txt' is neither a known source nor an existing"),
        ("wikipedia", r"'wikipedia' is neither a known source .* use 'bundled', 'stdlib-code'"),
        ("bundled,", r"has an empty source"),
        ("hf:justaname", r"must be 'hf:<name>\[:<config>\]:<split>\[:<text column>\]'"),
        ("hf:a:b:c:d:e", r"must be 'hf:"),
    ],
)
def test_unknown_or_missing_sources(spec, message):
    with pytest.raises(SpectraError, match=message):
        load_documents(spec)


def test_text_field_on_a_plain_text_file_is_refused(tmp_path):
    path = write(tmp_path / "a.txt", "text")
    with pytest.raises(SpectraError, match=r"a text field \(':body'\) only applies to .jsonl"):
        load_documents(f"{path}:body")


def assert_hub_error(spec):
    start = time.perf_counter()
    with pytest.raises(SpectraError) as err:
        load_documents(spec, max_docs=3)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith("cannot reach the Hugging Face Hub to stream")
    assert "'bundled', 'stdlib-code' and local paths" in message and "\n" not in message


def test_hf_source_offline_fails_fast_naming_offline_sources(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert_hub_error("hf:roneneldan/TinyStories:train")


def test_hf_source_with_unreachable_hub_fails_fast(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert_hub_error("hf:roneneldan/TinyStories:train:text")
