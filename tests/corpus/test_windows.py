"""Windows: cut from documents, traceable to their text, seeded, and bad options refused."""

import numpy as np
import pytest

from spectra_interp.corpus.sources import (
    Document,
    load_documents,
)
from spectra_interp.corpus.windows import (
    META_COLUMNS,
    control_ids,
    load_corpus,
    make_windows,
    select_windows,
    tokenize_documents,
)
from spectra_interp.errors import SpectraError


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_bundled_corpus_gives_60_windows_of_4096_tokens(bundled_windows, books, book_ids):
    w = bundled_windows
    assert w.tokens.dtype == np.int64 and w.tokens.shape[1] == 4096 == w.ctx
    assert len(w) >= 60
    assert w.bos is False
    assert list(w.meta.columns) == list(META_COLUMNS)
    assert w.meta.window_id.tolist() == list(range(len(w)))
    assert (w.meta.source == "bundled").all() and not w.meta.packed.any()
    assert w.meta.doc_id.unique().tolist() == book_ids  # every book, in document order
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
    assert w.meta.doc_id.nunique() == len(small_docs)
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


def test_select_windows_spreads_across_documents():
    docs = np.repeat(np.arange(12), [500, 40, 30, 30, 20, 20, 20, 10, 10, 10, 5, 1])
    assert select_windows(docs[:5], None, 0).tolist() == [0, 1, 2, 3, 4]
    assert select_windows(docs[:5], 9, 0).tolist() == [0, 1, 2, 3, 4]
    chosen = select_windows(docs, 16, 3)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and len(chosen) == 16
    counts = np.bincount(docs[chosen], minlength=12)
    assert (counts >= 1).all() and counts.max() == 2  # every document, then a second turn
    assert chosen.tolist() == select_windows(docs, 16, 3).tolist()
    assert chosen.tolist() != select_windows(docs, 16, 4).tolist()
    uniform = np.random.default_rng(3).choice(len(docs), 16, replace=False)
    assert len(set(docs[uniform])) < 12  # what stratifying avoids: the big book dominates


def test_select_windows_lets_the_sources_take_turns():
    # 3 long books and 40 short code files: by documents alone, 8 windows are mostly code
    docs = np.repeat(np.arange(43), [50, 50, 50] + [1] * 40)
    sources = np.where(docs < 3, "books", "code")
    assert select_windows(docs, 20, 0, np.full(len(docs), "one")).tolist() == (
        select_windows(docs, 20, 0).tolist()
    )  # one source: the unstratified order
    for seed in range(5):
        chosen = select_windows(docs, 8, seed, sources)
        assert len(set(docs[chosen])) == 8  # one window per document while documents last
        assert set(docs[chosen]) >= {0, 1, 2}  # every book
        alone = select_windows(docs, 8, seed)
        assert len(set(docs[alone]) & {0, 1, 2}) < 3  # without the sources' turns, never all
    chosen = select_windows(docs, 50, 0, sources)
    assert len(set(docs[chosen])) == 43 and np.bincount(docs[chosen])[:3].sum() == 10


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


def _special_strings(tok) -> list[str]:
    return sorted({t.content for t in tok.added_tokens_decoder.values() if t.special})


def _documents_with(tok, books, strings: list[str]) -> list[Document]:
    """Each special-token string placed at the start, in the middle and at the end of a text."""
    base = next(iter(books.values())).text[5000:7000]
    half = len(base) // 2
    return [
        Document(f"special-{i}", "test", f"{s}{base[:half]}{s}{base[half:]}{s}")
        for i, s in enumerate(strings)
    ]


@pytest.mark.parametrize("with_bos", [False, True])
def test_special_token_strings_in_text_stay_text(books, tok, bos_tok, with_bos):
    """Every special-token string of SmolLM2's tokenizer, in text at the start, middle and end:
    the document's ids round-trip to its text, no id is a control id, and every window has
    exactly one BOS (at position 0) when the tokenizer adds one, none otherwise."""
    strings = _special_strings(tok)
    assert {tok.bos_token, tok.eos_token, "<|endoftext|>"} <= set(strings)
    control = control_ids(tok)
    # The reference: what plain transformers makes of the text by default (control ids).
    default = tok(f"{strings[0]} x", add_special_tokens=False)["input_ids"]
    assert default[0] in control
    docs = _documents_with(tok, books, strings)
    ids, _ = tokenize_documents(docs, tok)
    for doc, x in zip(docs, ids, strict=True):
        assert tok.decode(x.tolist()) == doc.text
        assert not set(x.tolist()) & control
    tokenizer = bos_tok if with_bos else tok
    w = make_windows(docs, tokenizer, 64, stride=24)
    starts = w.meta["token_offset"].to_numpy()
    assert (starts == 0).sum() == len(docs)  # every document's first window
    in_control = np.isin(w.tokens, np.fromiter(control, dtype=np.int64))
    if with_bos:
        assert (w.tokens[:, 0] == tok.bos_token_id).all()
        assert (w.tokens == tok.bos_token_id).sum(1).tolist() == [1] * len(w)
        assert not in_control[:, 1:].any()
    else:
        assert not in_control.any()


def test_a_tokenizer_that_keeps_control_ids_is_refused(tok):
    class Unsplit:
        """A tokenizer that ignores split_special_tokens (as a slow one may)."""

        all_special_ids = [tok.bos_token_id]
        added_tokens_decoder = {}
        is_fast = False

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[tok.bos_token_id, 5] for _ in texts]}

    with pytest.raises(SpectraError, match="control token id"):
        tokenize_documents([Document("d", "test", "<|im_start|>x")], Unsplit())
