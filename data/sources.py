"""Reading documents out of a source (stdlib, text files, jsonl[.zst], parquet, HF datasets dir).

A document is ``(doc_id, text)``. ``doc_id`` is stable across machines (paths relative to the
root given in the config, plus a record number) because the validation split hashes it.
Text problems never stop a run: non-UTF-8 files or records, empty documents and malformed records
are skipped, counted in :class:`SkipStats` and reported with a warning naming the first offender.
A missing path or a source yielding no document at all is an error.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import sysconfig
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from recurlm.data.config import SourceConfig

log = logging.getLogger(__name__)

_JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".json", ".json.zst")
_PARQUET_SUFFIXES = (".parquet",)
_EXCLUDED_STDLIB_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class Document(NamedTuple):
    """One document: a stable id (for the validation hash and error messages) and its text."""

    doc_id: str
    text: str


@dataclass
class SkipStats:
    """Counts of input that was skipped, by reason, with the first example of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        """Record one skipped document (``where`` names the file/record)."""
        if reason not in self.counts:
            log.warning("skipping %s: %s (further cases are only counted)", where, reason)
            self.examples[reason] = where
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        return ", ".join(f"{n} {r} (e.g. {self.examples.get(r, '?')})" for r, n in sorted(self.counts.items()))


def stdlib_root() -> str:
    """The running interpreter's standard library directory."""
    return sysconfig.get_paths()["stdlib"]


def _walk(root: str, suffixes: tuple[str, ...], excluded: set[str]) -> list[str]:
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in excluded and not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in files if f.endswith(suffixes))
    return found


def _default_suffixes(src: SourceConfig) -> tuple[str, ...]:
    if src.kind == "jsonl":
        return _JSONL_SUFFIXES
    if src.kind == "parquet":
        return _PARQUET_SUFFIXES
    return tuple(src.suffixes)


def source_files(src: SourceConfig) -> list[tuple[str, str]]:
    """Sorted ``(absolute path, stable id)`` of every input file of a file-based source.

    Directories are searched recursively for the kind's file endings; globs are expanded. The id is
    the path relative to the directory it was found in (or the path as given), so it does not
    depend on where the corpus lives. ``hf_disk`` sources return their directories."""
    if src.kind == "stdlib":
        root = stdlib_root()
        files = _walk(root, tuple(src.suffixes), _EXCLUDED_STDLIB_DIRS)
        return sorted((f, os.path.relpath(f, root)) for f in files)
    out: list[tuple[str, str]] = []
    for given in src.paths:
        path = os.path.expanduser(given)
        if src.kind == "hf_disk":
            if not os.path.isdir(path):
                raise FileNotFoundError(f"source {src.name!r}: datasets directory {given!r} does not exist")
            out.append((os.path.abspath(path), given))
        elif os.path.isdir(path):
            found = _walk(path, _default_suffixes(src), {"__pycache__"})
            if not found:
                raise FileNotFoundError(
                    f"source {src.name!r}: directory {given!r} holds no file ending in {_default_suffixes(src)}")
            out.extend((os.path.abspath(f), os.path.join(given, os.path.relpath(f, path))) for f in sorted(found))
        elif os.path.isfile(path):
            out.append((os.path.abspath(path), given))
        else:
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise FileNotFoundError(f"source {src.name!r}: {given!r} matches no file")
            out.extend((os.path.abspath(m), m) for m in matches if os.path.isfile(m))
    return sorted(set(out))


def fingerprint(src: SourceConfig) -> dict:
    """Everything about a source that changes its documents: settings plus (id, size, mtime) of
    every input file. Cheap (stat only); used to key the cache."""
    files = []
    for path, file_id in source_files(src):
        st = os.stat(path)
        if os.path.isdir(path):  # an HF datasets dir: stat the arrow files inside
            for f in sorted(_walk(path, (".arrow", ".json"), set())):
                fst = os.stat(f)
                files.append([os.path.relpath(f, path), fst.st_size, fst.st_mtime_ns])
        else:
            files.append([file_id, st.st_size, st.st_mtime_ns])
    return {"kind": src.kind, "text_field": src.text_field, "max_bytes": src.max_bytes,
            "max_docs": src.max_docs, "suffixes": list(src.suffixes), "files": files,
            **({"synthetic": _synthetic_options(src)} if src.kind == "synthetic" else {})}


def _synthetic_options(src: SourceConfig) -> dict:
    from recurlm.data.synthetic import plain_options

    return plain_options(src.synthetic)


def _decode(raw: bytes, where: str, stats: SkipStats) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.skip("non-UTF-8 bytes", f"{where} (byte {e.start})")
        return None
    return _non_empty(text, where, stats)


def _non_empty(text: object, where: str, stats: SkipStats) -> str | None:
    if not isinstance(text, str):
        stats.skip("text field missing or not a string", where)
        return None
    if not text.strip():
        stats.skip("empty document", where)
        return None
    return text


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _iter_jsonl(path: str, file_id: str, field_name: str, stats: SkipStats) -> Iterator[Document]:
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{file_id}:{line_no}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as e:
                stats.skip("non-UTF-8 bytes", f"{where} (byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                stats.skip("malformed JSON", f"{where} ({e.msg})")
                continue
            text = _non_empty(record.get(field_name) if isinstance(record, dict) else None, where, stats)
            if text is not None:
                yield Document(where, text)


def _iter_parquet(path: str, file_id: str, field_name: str, stats: SkipStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field_name not in pf.schema_arrow.names:
        raise KeyError(f"{path}: parquet file has no column {field_name!r} (columns: {pf.schema_arrow.names})")
    row = 0
    for batch in pf.iter_batches(columns=[field_name], batch_size=1024):
        for value in batch.column(0).to_pylist():
            text = _non_empty(value, f"{file_id}:{row}", stats)
            if text is not None:
                yield Document(f"{file_id}:{row}", text)
            row += 1


def _iter_hf_disk(path: str, file_id: str, field_name: str, stats: SkipStats) -> Iterator[Document]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise KeyError(f"{path}: DatasetDict has no 'train' split (splits: {list(ds)})")
        ds = ds["train"]
    if field_name not in ds.column_names:
        raise KeyError(f"{path}: dataset has no column {field_name!r} (columns: {ds.column_names})")
    for row, value in enumerate(ds.select_columns([field_name]).to_iterable_dataset()):
        text = _non_empty(value[field_name], f"{file_id}:{row}", stats)
        if text is not None:
            yield Document(f"{file_id}:{row}", text)


def _iter_unbounded(src: SourceConfig, stats: SkipStats) -> Iterator[Document]:
    if src.kind == "synthetic":
        from recurlm.data.synthetic import iter_texts

        yield from (Document(f"{src.name}:{i}", text) for i, text in iter_texts(src.synthetic))
        return
    for path, file_id in source_files(src):
        if src.kind in ("stdlib", "text"):
            with open(path, "rb") as f:
                text = _decode(f.read(), file_id, stats)
            if text is not None:
                yield Document(file_id, text)
        elif src.kind == "jsonl":
            yield from _iter_jsonl(path, file_id, src.text_field, stats)
        elif src.kind == "parquet":
            yield from _iter_parquet(path, file_id, src.text_field, stats)
        elif src.kind == "hf_disk":
            yield from _iter_hf_disk(path, file_id, src.text_field, stats)
        else:
            raise ValueError(f"source {src.name!r}: unknown kind {src.kind!r}")


def iter_documents(src: SourceConfig, stats: SkipStats | None = None) -> Iterator[Document]:
    """Yield the documents of ``src`` in a deterministic order, honouring ``max_bytes`` /
    ``max_docs`` (the document that crosses ``max_bytes`` is the last one taken).

    Raises ValueError naming the source if it yields no document at all."""
    stats = SkipStats() if stats is None else stats
    n_docs = n_bytes = 0
    for doc in _iter_unbounded(src, stats):
        if (src.max_docs is not None and n_docs >= src.max_docs) or (
                src.max_bytes is not None and n_bytes >= src.max_bytes):
            break
        n_docs += 1
        n_bytes += len(doc.text.encode("utf-8"))
        yield doc
    if n_docs == 0:
        where = stdlib_root() if src.kind == "stdlib" else src.paths
        raise ValueError(f"source {src.name!r}: empty corpus, no usable document in {where} ({stats.summary()})")


def estimated_bytes(src: SourceConfig) -> int | None:
    """Upper estimate of the text bytes a source yields (for progress bars); None if unknown."""
    if src.kind not in ("stdlib", "text", "jsonl"):
        return None
    files = source_files(src)
    if any(p.endswith(".zst") for p, _ in files):
        return None
    total = sum(os.path.getsize(p) for p, _ in files)
    return min(total, src.max_bytes) if src.max_bytes is not None else total
