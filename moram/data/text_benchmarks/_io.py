"""Shared pieces of the text-benchmark readers: reading JSON / JSON Lines with clear errors, subsampling."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from moram.data.benchmarks import DatasetCorruptError, DatasetNotFoundError
from moram.data.folder import resolve_root
from moram.errors import ConfigError


def data_root(root: str | None, default_folder: str) -> Path:
    """``root``, or ``$MORAM_DATA/<default_folder>`` when it is None."""
    if root is not None:
        return Path(root).expanduser()
    return resolve_root(None) / default_folder


def missing(benchmark: str, path: Path, layout: str) -> DatasetNotFoundError:
    """The error for a missing file or folder: what was looked for and the layout expected."""
    return DatasetNotFoundError(f"{benchmark}: '{path}' does not exist. Expected layout: {layout}")


def require_dir(benchmark: str, path: Path, layout: str) -> Path:
    """``path`` if it is a folder, else :func:`missing`."""
    if not path.is_dir():
        raise missing(benchmark, path, layout)
    return path


def require_file(benchmark: str, path: Path, layout: str) -> Path:
    """``path`` if it is a file, else :func:`missing`."""
    if not path.is_file():
        raise missing(benchmark, path, layout)
    return path


def _read_text(benchmark: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as err:
        raise DatasetCorruptError(f"{benchmark}: '{path}' is not UTF-8 text ({err})") from err


def read_json(benchmark: str, path: Path) -> Any:
    """One JSON document; a malformed file raises :class:`DatasetCorruptError` naming the file, line and column."""
    try:
        return json.loads(_read_text(benchmark, path))
    except json.JSONDecodeError as err:
        raise DatasetCorruptError(
            f"{benchmark}: '{path}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err


def read_records(benchmark: str, path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON list file (``[{...}, ...]``) or of a JSON Lines file (one object per line).

    A file whose first non-blank character is ``[`` is read as one JSON list, anything else as JSON
    Lines (blank lines skipped). Errors name the file and the line (JSON Lines) or the index (list).
    """
    text = _read_text(benchmark, path)
    if text.lstrip().startswith("["):
        records = read_json(benchmark, path)
        where = "item"
        numbered = list(enumerate(records))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DatasetCorruptError(
                    f"{benchmark}: '{path}' line {number} is not valid JSON: {err.msg} (column {err.colno}); "
                    "a data file is either one JSON list of objects or JSON Lines, one object per line"
                ) from err
        where = "line"
    for index, record in numbered:
        if not isinstance(record, dict):
            raise DatasetCorruptError(
                f"{benchmark}: '{path}' {where} {index} is a {type(record).__name__}, expected a JSON object"
            )
    return [record for _, record in numbered]


def string_field(benchmark: str, path: Path, index: int, record: dict[str, Any], field: str) -> str:
    """``record[field]`` when it is a string, else a corrupt-file error naming the file, item and fields."""
    value = record.get(field)
    if not isinstance(value, str):
        raise DatasetCorruptError(
            f"{benchmark}: '{path}' item {index} has no string {field!r} field (it has {sorted(record)})"
        )
    return value


def subsample(items: list[Any], limit: int | None, seed: int, salt: str) -> list[Any]:
    """At most ``limit`` items, drawn without replacement by a generator seeded with ``(seed, salt)``.

    The chosen items keep their file order. ``limit=None`` (or at least ``len(items)``) keeps all. The
    draw depends only on the seed, the salt (task and split) and the number of items, never on the
    process or ``PYTHONHASHSEED``.
    """
    if limit is None or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(f"{seed}/{salt}").sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def check_limits(max_train: int | None, max_test: int | None) -> None:
    """Raise ``ValueError`` for a non-positive size limit."""
    for name, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 1:
            raise ConfigError(f"data.source.{name} must be positive or null (all examples), got {value}")

