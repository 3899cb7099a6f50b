"""Read CoOp's fixed splits (``split_zhou_<Name>.json``), the splits CLIP few-shot and continual work uses.

A split file is ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}`` with
``relpath`` relative to the dataset's image folder (CoOp's ``DATASETS.md``,
https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md, links every file). Caltech101, EuroSAT and
SUN397 have no official train/test split, so they are read only this way. Training uses ``train``
(CoOp's few-shot pool; ``val`` is left out), evaluation uses ``test``.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import Dataset

from moram.data.benchmarks._common import DatasetCorruptError, check_images, not_found
from moram.data.folder import ImageFileDataset

COOP_SPLITS_URL = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


def find_split_file(dataset: str, filename: str, folders: list[Path], how: str) -> Path:
    """The first ``folders[i] / filename`` that exists, else an error listing every place looked in."""
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    places = ", ".join(f"'{f / filename}'" for f in folders)
    raise not_found(dataset, folders[0] / filename, f"CoOp's split file {filename} in one of {places}", how)


def _entries(dataset: str, path: Path, data: object, split: str) -> list[tuple[str, int]]:
    rows = data.get(split) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DatasetCorruptError(f"{dataset}: '{path}' has no {split!r} list; expected CoOp's split layout")
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) >= 2 and isinstance(row[0], str) and isinstance(row[1], int)):
            raise DatasetCorruptError(
                f"{dataset}: '{path}' {split!r} entry {row!r} is not [relpath, label, classname]"
            )
        out.append((row[0], row[1]))
    return out


def read_coop_split(
    dataset: str, split_file: Path, image_dir: Path, image_size: int, how: str
) -> tuple[Dataset, Dataset]:
    """Training (``train``) and test (``test``) sets of a CoOp split file; images under ``image_dir``."""
    try:
        data = json.loads(split_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetCorruptError(f"{dataset}: '{split_file}' is not valid JSON ({err}); download it again") from err
    if not image_dir.is_dir():
        raise not_found(dataset, image_dir, f"the image folder that the paths of '{split_file}' are relative to", how)
    sets = []
    for split in ("train", "test"):
        rows = _entries(dataset, split_file, data, split)
        files = [image_dir / rel for rel, _ in rows]
        check_images(dataset, files, how)
        sets.append(ImageFileDataset(files, [label for _, label in rows], image_size))
    return sets[0], sets[1]
