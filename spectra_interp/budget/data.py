"""The two disjoint sets of documents: calibration (fits the allocation) and evaluation (tests it).

Documents, not windows, are split, so no text that fitted an allocation ever judges it. The
split is drawn from the seed, per source (books and code alike on both sides); each side is then
cut into windows as the sweep cuts them (`make_windows`, spread across documents, the sources
taking turns: every book of a side is read before code fills the rest), and written once to
the results folder so a resumed run reads the very same windows back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spectra_interp.config import BudgetConfig
from spectra_interp.corpus import Document, Windows, load_documents, make_windows
from spectra_interp.corpus.sources import STDLIB_CODE
from spectra_interp.errors import SpectraError
from spectra_interp.results.layout import BudgetLayout
from spectra_interp.runner.windows import stored_or_built

# The standard-library modules Phase 2 reads from `stdlib-code`, pinned by name so the documents
# (and so the seeded split) do not change with the Python version: plain modules present in
# CPython 3.10 to 3.13, none a package, none a test.
PINNED_STDLIB = tuple(
    f"{name}.py"
    for name in (
        "abc argparse ast base64 bdb bisect calendar cmd code codecs codeop colorsys compileall "
        "configparser contextlib copy copyreg csv dataclasses datetime decimal difflib dis "
        "doctest enum filecmp fileinput fnmatch fractions ftplib functools genericpath getopt "
        "getpass gettext glob graphlib gzip hashlib heapq hmac imaplib inspect io ipaddress "
        "keyword linecache locale lzma mailbox mimetypes numbers opcode operator optparse os "
        "pickle pkgutil platform plistlib poplib posixpath pprint profile pstats py_compile "
        "pyclbr queue quopri random reprlib rlcompleter runpy sched secrets selectors shelve "
        "shlex shutil signal smtplib socket socketserver stat statistics string stringprep "
        "struct subprocess symtable tabnanny tarfile tempfile textwrap threading timeit token "
        "tokenize trace traceback tracemalloc tty types typing uuid wave weakref webbrowser "
        "zipapp zipimport"
    ).split()
)


def phase2_documents(spec: str) -> list[Document]:
    """The corpus's documents, with `stdlib-code` cut to the pinned modules (in pinned order)."""
    docs = load_documents(spec)
    pinned = {name: i for i, name in enumerate(PINNED_STDLIB)}
    other = [d for d in docs if d.source != STDLIB_CODE]
    stdlib = sorted(
        (d for d in docs if d.source == STDLIB_CODE and d.doc_id in pinned),
        key=lambda d: pinned[d.doc_id],
    )
    return other + stdlib


def split_documents(
    docs: Sequence[Document], share: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """(calibration, evaluation), each in corpus order, stratified by source: of each source's
    documents, in a seeded order, the first round(share · n) go to calibration (at least one, and
    one left, where the source has two or more), so that every source is judged on documents of
    its own that it did not fit. SpectraError with fewer than 2 documents."""
    if len(docs) < 2:
        raise SpectraError(
            f"Phase 2 fits on some documents and evaluates on others, so it needs at least 2 "
            f"documents; the corpus has {len(docs)}."
        )
    rng = np.random.default_rng(seed)
    sources = pd.Series([d.source for d in docs])
    chosen: set[int] = set()
    for source in sources.unique():
        members = rng.permutation(np.flatnonzero((sources == source).to_numpy()))
        n = len(members)
        n_cal = min(max(round(share * n), 1), n - 1) if n >= 2 else 0
        chosen.update(members[:n_cal].tolist())
    if not chosen:  # every source has one document: split the documents themselves
        chosen = {int(rng.integers(len(docs)))}
    calibration = [d for i, d in enumerate(docs) if i in chosen]
    evaluation = [d for i, d in enumerate(docs) if i not in chosen]
    return calibration, evaluation


def document_names(meta: pd.DataFrame) -> pd.Series:
    """source/doc_id of each window: the cluster of the inference."""
    return meta["source"].astype(str) + "/" + meta["doc_id"].astype(str)


def build_splits(config: BudgetConfig, tokenizer: Any) -> dict[str, Windows]:
    """The calibration and evaluation windows of a run, from its corpus."""
    calibration, evaluation = split_documents(
        phase2_documents(config.corpus), config.calibration_share, config.seed
    )
    wanted = {
        BudgetLayout.CALIBRATION: (calibration, config.calibration_windows),
        BudgetLayout.EVALUATION: (evaluation, config.max_windows),
    }
    out = {}
    for split, (docs, max_windows) in wanted.items():
        try:
            out[split] = make_windows(
                docs, tokenizer, config.ctx, stride=config.stride, max_windows=max_windows,
                seed=config.seed, pack=config.pack, by_source=True,
            )  # fmt: skip
        except SpectraError as err:
            raise SpectraError(f"The {split} documents give no window: {err}.") from err
    return out


def prepare_splits(
    config: BudgetConfig, layout: BudgetLayout, tokenizer: Any, write: bool
) -> dict[str, Windows]:
    """The run's windows: read back from the folder on resume, else built (and written once,
    by the process that `write`s)."""
    files = {s: (layout.split_tokens(s), layout.split_meta(s)) for s in layout.SPLITS}
    return stored_or_built(files, tokenizer, lambda: build_splits(config, tokenizer), write)
