"""The corpus: text sources read into documents (`sources`), cut into windows (`windows`)."""

from spectra_interp.corpus.sources import Document, load_documents
from spectra_interp.corpus.windows import Windows, added_bos_id, load_corpus, make_windows

__all__ = ["Document", "Windows", "added_bos_id", "load_corpus", "load_documents", "make_windows"]
