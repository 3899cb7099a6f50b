"""Shared pieces of the benchmark readers: clear errors for missing or broken files, and file helpers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moram.data.folder import ImageFileDataset
from moram.data.tasks import Task
from moram.errors import DataError, DataNotFoundError


class DatasetNotFoundError(DataNotFoundError):
    """A benchmark dataset is missing or incomplete under its root; the message says what to fetch and how."""


class DatasetCorruptError(DataError):
    """A benchmark dataset's file exists but cannot be read (truncated download, wrong file)."""


def not_found(dataset: str, path: Path, expected: str, how: str) -> DatasetNotFoundError:
    """The error for a missing ``path`` of ``dataset``: what was looked for, what is expected, how to get it."""
    where = "does not exist" if not path.exists() else "is incomplete"
    return DatasetNotFoundError(
        f"{dataset}: '{path}' {where}. Expected {expected}. To get it: {how}"
    )


def require(dataset: str, paths: Sequence[Path], expected: str, how: str) -> None:
    """Raise :class:`DatasetNotFoundError` naming the first of ``paths`` that is missing."""
    for path in paths:
        if not path.exists():
            raise not_found(dataset, path, expected, how)


def first_existing(candidates: Sequence[Path], marker: str) -> Path:
    """The first folder of ``candidates`` that holds ``marker``; the first candidate when none does."""
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    return candidates[0]


def read_lines(dataset: str, path: Path) -> list[str]:
    """Non-empty stripped lines of a text file, as a corrupt-file error when it is not text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetCorruptError(f"{dataset}: '{path}' is not a text file ({err}); download it again") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_mat(dataset: str, path: Path) -> dict[str, Any]:
    """``scipy.io.loadmat(path, squeeze_me=True)``, with a corrupt-file error that names the file."""
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises ValueError, TypeError or OSError on a damaged file
        message = f"{dataset}: cannot read the MATLAB file '{path}' ({err}); download it again"
        raise DatasetCorruptError(message) from err


def mat_field(dataset: str, path: Path, data: dict[str, Any], key: str) -> Any:
    """``data[key]`` of a loaded .mat file, or a corrupt-file error listing the keys it has."""
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DatasetCorruptError(f"{dataset}: '{path}' has no variable {key!r} (it has {keys}); download it again")
    return data[key]


def check_images(dataset: str, files: Sequence[Path], how: str) -> None:
    """Cheap partial-download check: the first and last image of a split must exist."""
    for path in (files[0], files[-1]) if files else ():
        if not path.is_file():
            raise not_found(dataset, path, "every image listed by the dataset's split files", how)


def image_task(
    name: str,
    classnames: list[str],
    template: str,
    train: tuple[list[Path], list[int]],
    test: tuple[list[Path], list[int]],
    image_size: int,
) -> Task:
    """A :class:`Task` over image files, loaded lazily and preprocessed like CLIP."""
    return Task(
        name=name,
        classnames=list(classnames),
        template=template,
        train=ImageFileDataset(train[0], train[1], image_size),
        test=ImageFileDataset(test[0], test[1], image_size),
    ).check()
