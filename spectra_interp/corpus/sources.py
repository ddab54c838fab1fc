"""Corpus sources: the texts a spec string names, read and cleaned into `Document`s (I/O).

Source specs (combine several with commas, e.g. ``bundled,stdlib-code``):

- ``bundled``: public-domain books shipped inside the package (offline, any machine).
- a path: one text file, or a folder (searched recursively, hidden entries skipped) of
  ``.txt``/``.md`` files, ``.jsonl`` files (one JSON object per line) and ``.parquet`` files.
  Records and rows are read from the field/column ``text``, or the one named as
  ``<path>:<field>``.
- ``hf:<name>[:<config>]:<split>[:<text column>]``: a Hugging Face dataset, streamed
  (needs the network), at most `HF_DEFAULT_MAX_DOCS` documents unless `max_docs` says.
- ``stdlib-code``: the ``.py`` files of the running Python's standard library (test suites
  and site-packages left out), in sorted path order.

Every text is decoded (UTF-8, else Windows-1252), its line ends normalised to ``\\n``, and a
Project Gutenberg licence header and footer, where present, stripped.
"""

from __future__ import annotations

import json
import os
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from spectra_interp import hub
from spectra_interp.errors import SpectraError

BUNDLED = "bundled"
STDLIB_CODE = "stdlib-code"
HF_PREFIX = "hf:"
DEFAULT_TEXT_FIELD = "text"
HF_DEFAULT_MAX_DOCS = 1000
FOLDER_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
HF_SPLIT_NAMES = frozenset({"train", "validation", "test", "valid", "dev"})
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
OFFLINE_SOURCES = (
    "'bundled', 'stdlib-code' and local paths "
    "(a text file, or a folder of .txt/.md/.jsonl/.parquet files)"
)
SOURCE_USAGE = (
    "use 'bundled', 'stdlib-code', 'hf:<name>[:<config>]:<split>[:<text column>]' "
    "or the path of a file or folder"
)


@dataclass(frozen=True)
class Document:
    """One cleaned text; `doc_id` is unique within its `source` (the spec that named it)."""

    doc_id: str
    source: str
    text: str


# ---------------------------------------------------------------- cleaning (pure)

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_GUTENBERG_START = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b.*$", re.I | re.M
)
_GUTENBERG_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b"
    r"|End of (?:the )?Project Gutenberg)",
    re.I | re.M,
)


def decode_text(data: bytes, name: str) -> str:
    """Decode a text file's bytes: UTF-16 with a byte-order mark, UTF-8 (BOM or not), else
    Windows-1252 (what older Project Gutenberg files use). Binary data raises."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise SpectraError(f"{name} has a UTF-16 byte-order mark but is not UTF-16") from e
    if b"\x00" in data:
        raise SpectraError(f"{name} looks like a binary file (it contains NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as e:
            raise SpectraError(
                f"{name} is neither UTF-8 nor Windows-1252 text (byte {e.start} cannot be "
                "decoded); it may be a binary file"
            ) from e
    sample = text[:65536]
    if len(_CONTROL_CHARS.findall(sample)) > 0.01 * len(sample):
        raise SpectraError(f"{name} looks like a binary file (many control bytes), not text")
    return text


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR line ends -> LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header (up to its ``*** START OF ...`` line) and
    footer (from its ``*** END OF ...`` line); text without the markers is unchanged."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def clean_text(text: str) -> str:
    """Normalised line ends, Gutenberg boilerplate removed, outer whitespace stripped."""
    return strip_gutenberg(normalize_newlines(text)).strip()


# ---------------------------------------------------------------- sources (I/O)


def load_documents(spec: str, *, max_docs: int | None = None) -> list[Document]:
    """Read and clean the documents of one source spec, or several joined by commas.

    `max_docs` caps the documents taken from each source (the first ones in the source's
    order). Every source must give at least one document; errors name the file and line or
    field at fault, and nothing partial is returned.
    """
    if max_docs is not None and max_docs < 1:
        raise SpectraError(f"max_docs must be at least 1 (got {max_docs})")
    parts = [part.strip() for part in spec.split(",")]
    if not all(parts):
        raise SpectraError(f"corpus spec {spec!r} has an empty source; {SOURCE_USAGE}")
    docs: list[Document] = []
    for part in parts:
        found = _load_source(part, max_docs)
        if not found:
            raise SpectraError(f"corpus source {part!r} gave no documents with any text")
        docs.extend(found)
    return docs


def _load_source(spec: str, max_docs: int | None) -> list[Document]:
    if spec == BUNDLED:
        return _load_bundled(max_docs)
    if spec == STDLIB_CODE:
        return _load_stdlib(max_docs)
    if spec.startswith(HF_PREFIX):
        return _load_hf(spec, max_docs)
    return _load_path(spec, max_docs)


def _load_bundled(max_docs: int | None) -> list[Document]:
    root = resources.files("spectra_interp") / "assets" / "corpus"
    entries = sorted(
        (e for e in root.iterdir() if e.name.endswith(".txt")) if root.is_dir() else [],
        key=lambda e: e.name,
    )
    if not entries:
        raise SpectraError(
            "the bundled corpus (spectra_interp/assets/corpus) is missing from the installed "
            "package; reinstall spectra_interp"
        )
    return [
        Document(
            e.name.removesuffix(".txt"),
            BUNDLED,
            clean_text(decode_text(e.read_bytes(), f"bundled/{e.name}")),
        )
        for e in entries[:max_docs]
    ]


def _load_stdlib(max_docs: int | None) -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith(".")]
        files.extend(Path(folder) / f for f in filenames if f.endswith(".py"))
    docs = []
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        try:
            text = clean_text(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            docs.append(Document(path.relative_to(root).as_posix(), STDLIB_CODE, text))
        if max_docs is not None and len(docs) >= max_docs:
            break
    return docs


def _split_path_spec(spec: str) -> tuple[Path, str | None]:
    """A path spec -> (path, text field or None); ``<path>:<field>`` names the field."""
    path = Path(spec).expanduser()
    if path.exists():
        return path, None
    head, sep, field = spec.rpartition(":")
    if sep and head and field and Path(head).expanduser().exists():
        return Path(head).expanduser(), field
    raise SpectraError(
        f"corpus source {spec!r} is neither a known source nor an existing file or folder; "
        f"{SOURCE_USAGE}"
    )


def _load_path(spec: str, max_docs: int | None) -> list[Document]:
    path, field = _split_path_spec(spec)
    if path.is_dir():
        files = sorted(
            (
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in FOLDER_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise SpectraError(f"folder {path} has no .txt, .md, .jsonl or .parquet files")
    else:
        if field is not None and path.suffix.lower() not in (".jsonl", ".parquet"):
            raise SpectraError(
                f"{path}: a text field (':{field}') only applies to .jsonl and .parquet files"
            )
        files = [path]
    docs = []
    for file in files:
        rel = file.relative_to(path).as_posix() if path.is_dir() else file.name
        for doc_id, text in _read_file(file, rel, field or DEFAULT_TEXT_FIELD):
            docs.append(Document(doc_id, spec, text))
            if max_docs is not None and len(docs) >= max_docs:
                return docs
    return docs


def _read_file(path: Path, rel: str, field: str) -> Iterator[tuple[str, str]]:
    """(doc_id, cleaned text) for each document in one local file."""
    try:
        if path.stat().st_size == 0:
            raise SpectraError(f"{path} is empty")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _read_jsonl(path, rel, field)
        elif suffix == ".parquet":
            yield from _read_parquet(path, rel, field)
        else:
            text = clean_text(decode_text(path.read_bytes(), str(path)))
            if not text:
                raise SpectraError(f"{path} has no text (only whitespace or Gutenberg boilerplate)")
            yield rel, text
    except OSError as e:
        raise SpectraError(f"cannot read {path}: {e.strerror or e}") from e


def _record_text(value: Any, where: str, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpectraError(f"{where}: text field {field!r} is {type(value).__name__}, not a string")
    return clean_text(value) or None


def _read_jsonl(path: Path, rel: str, field: str) -> Iterator[tuple[str, str]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SpectraError(f"{where} is not valid JSON ({e})") from e
            if not isinstance(record, dict):
                raise SpectraError(f"{where} is a JSON {type(record).__name__}, not an object")
            if field not in record:
                raise SpectraError(
                    f"{where} has no text field {field!r} (fields: {', '.join(map(str, record))});"
                    f" name the field as '{path}:<field>'"
                )
            text = _record_text(record[field], where, field)
            if text:
                yield f"{rel}:{lineno}", text


def _read_parquet(path: Path, rel: str, field: str) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SpectraError(f"{path} is not a readable Parquet file ({e})") from e
    schema = parquet.schema_arrow
    if field not in schema.names:
        raise SpectraError(
            f"{path} has no text column {field!r} (columns: {', '.join(schema.names)}); "
            f"name the column as '{path}:<column>'"
        )
    kind = schema.field(field).type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"
    ):
        raise SpectraError(f"{path}: text column {field!r} holds {kind}, not strings")
    row = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            text = _record_text(value, f"{path} row {row}", field)
            if text:
                yield f"{rel}:{row}", text
            row += 1


def parse_hf_spec(spec: str) -> tuple[str, str | None, str, str]:
    """``hf:<name>[:<config>]:<split>[:<text column>]`` -> (name, config, split, column).

    Three fields read as name:split:column when the middle one is a common split name
    (train, validation, test, valid, dev) and as name:config:split otherwise; four fields
    are name:config:split:column, where an empty config means none.
    """
    fields = spec.removeprefix(HF_PREFIX).split(":")
    usage = f"Hugging Face spec {spec!r} must be 'hf:<name>[:<config>]:<split>[:<text column>]'"
    if len(fields) == 2:
        (name, split), config, column = fields, None, DEFAULT_TEXT_FIELD
    elif len(fields) == 3 and fields[1] in HF_SPLIT_NAMES:
        (name, split, column), config = fields, None
    elif len(fields) == 3:
        (name, config, split), column = fields, DEFAULT_TEXT_FIELD
    elif len(fields) == 4:
        name, config, split, column = fields
        config = config or None
    else:
        raise SpectraError(usage)
    if not (name and split and column):
        raise SpectraError(usage)
    return name, config, split, column


def _hub_unreachable(spec: str) -> SpectraError:
    return SpectraError(
        f"cannot reach the Hugging Face Hub to stream {spec!r} (offline or no network); "
        f"the offline sources are {OFFLINE_SOURCES}"
    )


def _load_hf(spec: str, max_docs: int | None) -> list[Document]:
    name, config, split, column = parse_hf_spec(spec)
    limit = HF_DEFAULT_MAX_DOCS if max_docs is None else max_docs
    if not hub.reachable():
        raise _hub_unreachable(spec)
    import datasets

    docs = []
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        for row, record in enumerate(stream):
            if column not in record:
                raise SpectraError(
                    f"Hugging Face dataset {spec!r} has no text column {column!r} "
                    f"(columns: {', '.join(record)})"
                )
            text = _record_text(record[column], f"{spec} row {row}", column)
            if text:
                docs.append(Document(str(row), spec, text))
            if len(docs) >= limit:
                break
    except SpectraError:
        raise
    except (ConnectionError, TimeoutError) as e:
        raise _hub_unreachable(spec) from e
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpectraError(f"cannot stream Hugging Face dataset {spec!r}: {first_line}") from e
    return docs
