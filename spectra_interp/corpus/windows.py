"""Windows: cleaned documents cut into fixed-length windows of token ids (pure).

`make_windows` is a pure function of the documents, a tokenizer and the options: it cuts each
document into windows of `ctx` token ids that never straddle two documents (unless packing is
asked for) and records where every window came from, so a later stage can trace any token back
to its text and cluster the statistics by document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Int64

from spectra_interp.corpus.sources import Document, load_documents
from spectra_interp.errors import SpectraError

META_COLUMNS = (
    "window_id",
    "source",
    "doc_id",
    "token_offset",
    "n_doc_tokens",
    "char_start",
    "char_end",
    "packed",
)


@dataclass(frozen=True, eq=False)
class Windows:
    """Windows of token ids and where each one came from.

    `tokens[i]` is described by `meta.iloc[i]` (`window_id == i`). Meta columns:
    `source`, `doc_id`, `token_offset` (index, in the document's tokens, of the window's
    first document token), `n_doc_tokens` (that document's length in tokens), `char_start`
    and `char_end` (the span of document text the window's document tokens decode to; -1
    for a tokenizer without offsets) and `packed`. A packed window joins its documents'
    sources and ids with ``+``; its offsets refer to its first document and its `char_end`
    to its last. `bos` says whether position 0 of every window is the tokenizer's BOS token.
    """

    tokens: Int64[np.ndarray, "window pos"]
    meta: pd.DataFrame
    bos: bool

    @property
    def ctx(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def added_bos_id(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front of encoded text, or None if it adds none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return int(bos) if with_special[:1] == [bos] and plain[:1] != [bos] else None


def control_ids(tokenizer: Any) -> frozenset[int]:
    """The ids of the tokenizer's special (control) tokens: BOS, EOS, chat markers and the
    other added tokens marked special. Document text never becomes one of them. The unknown
    token is left out: it is what text the vocabulary lacks legitimately becomes."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", ())}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids |= {int(i) for i, token in decoder.items() if getattr(token, "special", False)}
    return frozenset(ids - {getattr(tokenizer, "unk_token_id", None)})


def tokenize_documents(
    docs: Sequence[Document], tokenizer: Any, *, batch_docs: int = 64
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Token ids (int64 [n]) of each whole document, without special tokens, and the
    character span (int64 [n, 2]) of each token where the tokenizer gives offsets.

    Document text is data: a special-token string in it (``<|im_start|>``, ``<|endoftext|>``,
    ...) is tokenized as the plain text it is (``split_special_tokens``), never as a control
    id; a tokenizer that still yields one is an error (`control_ids`).

    A whole book is one call to the fast (Rust) tokenizer; documents go in batches so the
    Python lists it returns stay small.
    """
    with_offsets = bool(getattr(tokenizer, "is_fast", False))
    ids: list[np.ndarray] = []
    spans: list[np.ndarray] = []
    for lo in range(0, len(docs), batch_docs):
        enc = tokenizer(
            [d.text for d in docs[lo : lo + batch_docs]],
            add_special_tokens=False,
            return_attention_mask=False,
            return_offsets_mapping=with_offsets,
            split_special_tokens=True,
            verbose=False,
        )
        ids.extend(np.asarray(x, dtype=np.int64) for x in enc["input_ids"])
        if with_offsets:
            spans.extend(
                np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in enc["offset_mapping"]
            )
    _refuse_control_ids(docs, ids, control_ids(tokenizer))
    return ids, (spans if with_offsets else None)


def _refuse_control_ids(docs: Sequence[Document], ids: list[np.ndarray], control: frozenset[int]):
    if not control:
        return
    known = np.fromiter(control, dtype=np.int64)
    for doc, x in zip(docs, ids, strict=True):
        hits = x[np.isin(x, known)]
        if hits.size:
            raise SpectraError(
                f"The tokenizer turned text of document {doc.doc_id} into the control token id "
                f"{int(hits[0])} although special tokens were split; use a fast tokenizer."
            )


def select_windows(
    documents: Int64[np.ndarray, " candidate"],
    max_windows: int | None,
    seed: int,
    sources: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (int64, sorted) of the candidate windows to keep: all, or `max_windows` spread
    across documents. Stratified: documents take turns in a seeded order, each giving one window
    (seeded, without replacement) per turn until it runs out, so the windows come from as many
    documents as there are windows, and the inference has as many documents as possible.

    With `sources` (one label per candidate), the sources also take turns inside each turn of
    the documents: every source's next unused document is taken before any source gives a
    second window of one document, so a source with few documents (books beside many code
    files) is not left to chance. One source gives the unstratified order."""
    documents = np.asarray(documents)
    n = len(documents)
    if max_windows is None or max_windows >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    names = np.unique(documents)
    queues = [rng.permutation(np.flatnonzero(documents == d)) for d in names]
    order = rng.permutation(len(names))
    labels = np.zeros(n, dtype=np.int64) if sources is None else pd.factorize(sources)[0]
    source_of = [int(labels[queue[0]]) for queue in queues]
    by_source = [[int(d) for d in order if source_of[d] == s] for s in np.unique(source_of)]
    chosen: list[int] = []
    turn = 0
    while len(chosen) < max_windows:
        lists = [[int(queues[d][turn]) for d in ds if turn < len(queues[d])] for ds in by_source]
        for i in range(max(map(len, lists))):
            chosen.extend(lst[i] for lst in lists if i < len(lst))
        turn += 1
    return np.sort(np.array(chosen[:max_windows], dtype=np.int64))


@dataclass(frozen=True)
class _Stream:
    """A run of tokens windows are cut from: one document, or short documents packed."""

    tokens: np.ndarray  # int64 [n]
    doc: np.ndarray  # int64 [n], index of the token's document; -1 for a separator
    pos: np.ndarray  # int64 [n], index of the token within its document
    packed: bool


def _doc_stream(i: int, ids: np.ndarray) -> _Stream:
    n = len(ids)
    return _Stream(ids, np.full(n, i, dtype=np.int64), np.arange(n, dtype=np.int64), False)


def _packed_stream(members: list[int], ids: list[np.ndarray], sep: int | None) -> _Stream:
    tokens, doc, pos = [], [], []
    for k, i in enumerate(members):
        if k and sep is not None:
            tokens.append(np.array([sep], dtype=np.int64))
            doc.append(np.array([-1], dtype=np.int64))
            pos.append(np.array([0], dtype=np.int64))
        tokens.append(ids[i])
        doc.append(np.full(len(ids[i]), i, dtype=np.int64))
        pos.append(np.arange(len(ids[i]), dtype=np.int64))
    return _Stream(np.concatenate(tokens), np.concatenate(doc), np.concatenate(pos), True)


def make_windows(
    docs: Sequence[Document],
    tokenizer: Any,
    ctx: int,
    *,
    stride: int | None = None,
    max_windows: int | None = None,
    seed: int = 0,
    pack: bool = False,
    by_source: bool = False,
) -> Windows:
    """Cut documents into windows of `ctx` token ids, each from one document.

    BOS convention: the tokenizer's own, the same for every window. If the tokenizer adds a
    BOS token when it encodes text (Llama-3 does), position 0 of every window is BOS and the
    other ctx-1 positions are document tokens; if it adds none (SmolLM2), all ctx positions
    are document tokens. `Windows.bos` records which. Document tokens hold no control id (see
    `tokenize_documents`), so a window has exactly one BOS, or none; a packed window's only
    other control ids are the EOS separators between its documents.

    Each document is tokenized whole (no special tokens), and windows start every `stride`
    document tokens (default: the window's document length, so windows tile without
    overlap; the tail that does not fill a window is dropped). Documents shorter than one
    window are skipped, or with `pack=True` concatenated in order, separated by the EOS
    token where the tokenizer has one, and cut into windows the same way. Candidates are in
    document order; `max_windows` keeps a subset spread across documents by `seed`
    (`select_windows`, sorted), None keeps all; `by_source` makes the sources take turns too.
    """
    docs = list(docs)
    if not docs:
        raise SpectraError("there are no documents to cut into windows")
    if ctx < 2:
        raise SpectraError(f"ctx must be at least 2 tokens (got {ctx})")
    if stride is not None and stride < 1:
        raise SpectraError(f"stride must be at least 1 token (got {stride})")
    if max_windows is not None and max_windows < 1:
        raise SpectraError(f"max_windows must be at least 1 (got {max_windows})")
    bos_id = added_bos_id(tokenizer)
    body = ctx - (bos_id is not None)
    step = body if stride is None else stride
    ids, spans = tokenize_documents(docs, tokenizer)
    lengths = [len(x) for x in ids]

    streams = [_doc_stream(i, x) for i, x in enumerate(ids) if len(x) >= body]
    short = [i for i, n in enumerate(lengths) if 0 < n < body]
    if pack and short:
        streams.append(_packed_stream(short, ids, getattr(tokenizer, "eos_token_id", None)))
    starts = [(s, a) for s in streams for a in range(0, len(s.tokens) - body + 1, step)]
    if not starts:
        raise SpectraError(_too_short_message(len(docs), lengths, body, ctx, bos_id, pack, short))
    starts = _in_document_order(starts, body)

    first_documents = np.array([_first_document(stream, a, body) for stream, a in starts])
    sources = np.array([docs[d].source for d in first_documents]) if by_source else None
    keep = select_windows(first_documents, max_windows, seed, sources)
    tokens = np.empty((len(keep), ctx), dtype=np.int64)
    rows = []
    for w, k in enumerate(keep):
        stream, a = starts[k]
        if bos_id is not None:
            tokens[w, 0] = bos_id
        tokens[w, ctx - body :] = stream.tokens[a : a + body]
        rows.append(_window_meta(w, stream, a, body, docs, lengths, spans))
    meta = pd.DataFrame(rows, columns=list(META_COLUMNS))
    return Windows(tokens=tokens, meta=meta, bos=bos_id is not None)


def _first_document(stream: _Stream, a: int, body: int) -> int:
    """The document a window starting at `a` begins with (packed windows: their first)."""
    doc = stream.doc[a : a + body]
    return int(doc[np.argmax(doc >= 0)])


def _in_document_order(starts: list[tuple[_Stream, int]], body: int) -> list[tuple[_Stream, int]]:
    """Sort window starts by (first document, token offset in it)."""

    def key(sa: tuple[_Stream, int]) -> tuple[int, int]:
        stream, a = sa
        doc, pos = stream.doc[a : a + body], stream.pos[a : a + body]
        first = int(np.argmax(doc >= 0))
        return int(doc[first]), int(pos[first])

    return sorted(starts, key=key)


def _window_meta(
    window_id: int,
    stream: _Stream,
    a: int,
    body: int,
    docs: list[Document],
    lengths: list[int],
    spans: list[np.ndarray] | None,
) -> tuple:
    doc, pos = stream.doc[a : a + body], stream.pos[a : a + body]
    real = np.flatnonzero(doc >= 0)
    first, last = real[0], real[-1]
    members = list(dict.fromkeys(int(d) for d in doc[real]))
    d0, d1 = int(doc[first]), int(doc[last])
    char_start = int(spans[d0][pos[first], 0]) if spans is not None else -1
    char_end = int(spans[d1][pos[last], 1]) if spans is not None else -1
    return (
        window_id,
        "+".join(dict.fromkeys(docs[d].source for d in members)),
        "+".join(docs[d].doc_id for d in members),
        int(pos[first]),
        lengths[d0],
        char_start,
        char_end,
        stream.packed,
    )


def _too_short_message(
    n_docs: int,
    lengths: list[int],
    body: int,
    ctx: int,
    bos_id: int | None,
    pack: bool,
    short: list[int],
) -> str:
    need = f"{body} tokens a window of ctx={ctx} needs" + (
        " after BOS" if bos_id is not None else ""
    )
    message = (
        f"none of the {n_docs} documents read has the {need} "
        f"(the longest has {max(lengths, default=0)} tokens)"
    )
    if pack:
        total = sum(lengths[i] for i in short)
        return f"{message}, and packed together they have only {total}; lower ctx or add text"
    return f"{message}; lower ctx, add longer documents, or pack short ones (pack=True)"


def load_corpus(
    spec: str,
    tokenizer: Any,
    ctx: int,
    *,
    max_docs: int | None = None,
    stride: int | None = None,
    max_windows: int | None = None,
    seed: int = 0,
    pack: bool = False,
) -> Windows:
    """`load_documents` then `make_windows`: a spec string straight to windows."""
    docs = load_documents(spec, max_docs=max_docs)
    return make_windows(
        docs, tokenizer, ctx, stride=stride, max_windows=max_windows, seed=seed, pack=pack
    )
