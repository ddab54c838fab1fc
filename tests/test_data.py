"""Corpus: sources, cleaning, windows, and every kind of bad input."""

import copy
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers.processors import TemplateProcessing

from spectra_interp.data import (
    META_COLUMNS,
    Document,
    decode_text,
    load_corpus,
    load_documents,
    make_windows,
    normalize_newlines,
    parse_hf_spec,
    select_windows,
    strip_gutenberg,
)
from spectra_interp.errors import SpectraError

BOOK_IDS = ["pg1342-pride-and-prejudice", "pg2641-a-room-with-a-view", "pg84-frankenstein"]


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def books():
    return {d.doc_id: d for d in load_documents("bundled")}


@pytest.fixture(scope="module")
def bundled_windows(books, tok):
    return make_windows(list(books.values()), tok, 4096)


@pytest.fixture(scope="module")
def small_docs(books):
    """Three documents of a few thousand tokens each, so windowing runs in a blink."""
    return [Document(d.doc_id, "test", d.text[:12000]) for d in books.values()]


@pytest.fixture(scope="module")
def bos_tok(tok):
    """The SmolLM2 tokenizer made to put BOS in front of encoded text, as Llama-3's does."""
    bos = copy.deepcopy(tok)
    bos.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
    )
    return bos


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- cleaning


def test_gutenberg_header_and_footer_are_stripped(books):
    assert sorted(books) == BOOK_IDS
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


# ---------------------------------------------------------------- sources


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


def test_comma_separated_specs_combine_sources():
    docs = load_documents("bundled, stdlib-code", max_docs=1)
    assert [(d.source, d.doc_id) for d in docs] == [
        ("bundled", BOOK_IDS[0]),
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


# ---------------------------------------------------------------- windows


def test_bundled_corpus_gives_60_windows_of_4096_tokens(bundled_windows, books):
    w = bundled_windows
    assert w.tokens.dtype == np.int64 and w.tokens.shape[1] == 4096 == w.ctx
    assert len(w) >= 60
    assert w.bos is False
    assert list(w.meta.columns) == list(META_COLUMNS)
    assert w.meta.window_id.tolist() == list(range(len(w)))
    assert (w.meta.source == "bundled").all() and not w.meta.packed.any()
    assert w.meta.doc_id.unique().tolist() == BOOK_IDS  # every book, in document order
    for _, offsets in w.meta.groupby("doc_id").token_offset:
        assert offsets.tolist() == list(range(0, 4096 * len(offsets), 4096))


def test_decoding_a_window_gives_the_text_at_its_offset(bundled_windows, books, tok):
    w = bundled_windows
    for row, ids in zip(w.meta.itertuples(), w.tokens, strict=True):
        text = books[row.doc_id].text
        assert tok.decode(ids.tolist()) == text[row.char_start : row.char_end]
    frankenstein = ids_of(tok, books["pg84-frankenstein"].text)
    rows = w.meta[w.meta.doc_id == "pg84-frankenstein"]
    assert (rows.n_doc_tokens == len(frankenstein)).all()
    for row in rows.itertuples():
        off = row.token_offset
        assert w.tokens[row.window_id].tolist() == frankenstein[off : off + 4096]


def test_windows_stay_inside_one_document(small_docs, tok):
    w = make_windows(small_docs, tok, 256)
    assert w.meta.doc_id.nunique() == 3
    doc_ids = {d.doc_id: ids_of(tok, d.text) for d in small_docs}
    for row in w.meta.itertuples():
        doc = doc_ids[row.doc_id]
        assert row.token_offset + 256 <= len(doc)
        assert w.tokens[row.window_id].tolist() == doc[row.token_offset : row.token_offset + 256]


def test_selection_is_deterministic_for_a_seed_and_differs_across_seeds(small_docs, tok):
    every = make_windows(small_docs, tok, 256)
    a = make_windows(small_docs, tok, 256, max_windows=8, seed=0)
    b = make_windows(small_docs, tok, 256, max_windows=8, seed=0)
    c = make_windows(small_docs, tok, 256, max_windows=8, seed=1)
    assert len(every) > 20 and len(a) == 8
    assert np.array_equal(a.tokens, b.tokens) and a.meta.equals(b.meta)
    assert not np.array_equal(a.tokens, c.tokens)
    key = ["doc_id", "token_offset"]
    picked = [
        every.meta[key].apply(tuple, axis=1).tolist().index(k)
        for k in a.meta[key].apply(tuple, axis=1)
    ]
    assert picked == sorted(picked)  # a subset of all windows, kept in document order
    assert np.array_equal(a.tokens, every.tokens[picked])


def test_select_windows():
    assert select_windows(5, None, 0).tolist() == [0, 1, 2, 3, 4]
    assert select_windows(5, 9, 0).tolist() == [0, 1, 2, 3, 4]
    chosen = select_windows(1000, 10, 3)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and len(chosen) == 10
    assert chosen.tolist() == select_windows(1000, 10, 3).tolist()
    assert chosen.tolist() != select_windows(1000, 10, 4).tolist()


def test_stride_overlaps_windows(small_docs, tok):
    w = make_windows(small_docs[:1], tok, 256, stride=64)
    assert w.meta.token_offset.tolist()[:3] == [0, 64, 128]
    assert np.array_equal(w.tokens[0, 64:], w.tokens[1, :192])


def test_bos_convention_puts_bos_first_in_every_window(small_docs, bos_tok, tok):
    assert bos_tok("hi")["input_ids"][0] == tok.bos_token_id
    w = make_windows(small_docs[:1], bos_tok, 256)
    doc = ids_of(tok, small_docs[0].text)
    assert w.bos is True
    assert (w.tokens[:, 0] == tok.bos_token_id).all()
    assert w.meta.token_offset.tolist()[:2] == [0, 255]
    assert w.tokens[0, 1:].tolist() == doc[:255] and w.tokens[1, 1:].tolist() == doc[255:510]


def test_short_documents_are_skipped_or_packed(books, tok):
    long = Document("long", "t", books["pg84-frankenstein"].text[:3000])
    shorts = [Document(f"s{i}", "t", f"Short note number {i} says little.") for i in range(20)]
    skipped = make_windows([long, *shorts], tok, 64)
    assert set(skipped.meta.doc_id) == {"long"}

    packed = make_windows(shorts, tok, 64, pack=True)
    assert len(packed) >= 1 and packed.meta.packed.all()
    first = packed.meta.iloc[0]
    assert first.doc_id.startswith("s0+s1+") and first.token_offset == 0
    s0 = ids_of(tok, shorts[0].text)
    assert packed.tokens[0, : len(s0)].tolist() == s0
    assert packed.tokens[0, len(s0)] == tok.eos_token_id


def test_nothing_long_enough_says_how_many_and_the_longest(tok):
    docs = [Document("a", "t", "A short text."), Document("b", "t", "A somewhat longer text here.")]
    longest = len(ids_of(tok, docs[1].text))
    with pytest.raises(SpectraError, match=rf"none of the 2 documents .* longest has {longest} "):
        make_windows(docs, tok, 4096)
    with pytest.raises(SpectraError, match="packed together they have only"):
        make_windows(docs, tok, 4096, pack=True)


def test_load_corpus_is_load_documents_then_make_windows(tmp_path, books, tok):
    path = tmp_path / "book.txt"
    path.write_text(books["pg84-frankenstein"].text[:20000])
    w = load_corpus(str(path), tok, 128, max_windows=5, seed=2)
    expected = make_windows(load_documents(str(path)), tok, 128, max_windows=5, seed=2)
    assert np.array_equal(w.tokens, expected.tokens) and w.meta.equals(expected.meta)
    assert (w.meta.doc_id == "book.txt").all() and (w.meta.source == str(path)).all()


# ---------------------------------------------------------------- bad input


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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ctx": 1}, "ctx must be at least 2"),
        ({"ctx": 64, "stride": 0}, "stride must be at least 1"),
        ({"ctx": 64, "max_windows": 0}, "max_windows must be at least 1"),
    ],
)
def test_bad_window_options(small_docs, tok, options, message):
    with pytest.raises(SpectraError, match=message):
        make_windows(small_docs, tok, **options)


def test_no_documents_and_bad_max_docs(tok):
    with pytest.raises(SpectraError, match="no documents"):
        make_windows([], tok, 64)
    with pytest.raises(SpectraError, match="max_docs must be at least 1"):
        load_documents("bundled", max_docs=0)
