"""Fixtures of the corpus tests: the SmolLM2 tokenizer, the bundled books, short documents."""

import copy

import pytest
from tokenizers.processors import TemplateProcessing

from spectra_interp.corpus.sources import (
    Document,
    load_documents,
)
from spectra_interp.corpus.windows import (
    make_windows,
)

BOOK_IDS = [
    "pg11-alice-in-wonderland",
    "pg1342-pride-and-prejudice",
    "pg16-peter-pan",
    "pg1661-sherlock-holmes",
    "pg174-dorian-gray",
    "pg236-the-jungle-book",
    "pg2641-a-room-with-a-view",
    "pg345-dracula",
    "pg5200-metamorphosis",
    "pg84-frankenstein",
    "pg98-a-tale-of-two-cities",
    "tinyshakespeare",
]


@pytest.fixture(scope="session")
def book_ids():
    """The bundled books' document ids, in document order."""
    return BOOK_IDS


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
