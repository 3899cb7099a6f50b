"""Readers of the benchmark datasets' official splits, in the layout their archives unpack to.

Each reader takes the dataset's folder (the one torchvision's ``download=True`` creates under the
data root), the side of the CLIP input and a how-to-get hint for errors, and returns the training and
test sets: :class:`~moram.data.folder.ImageFileDataset` over the image files (loaded on access) or, for
CIFAR-100 and MNIST, :class:`~moram.data.transforms.ImageTensorDataset` over the arrays. Labels follow
the datasets' own class order, which is the order of :mod:`moram.data.benchmarks.classnames`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from moram.data.benchmarks._common import (
    DatasetCorruptError,
    check_images,
    load_mat,
    mat_field,
    read_lines,
    require,
)
from moram.data.benchmarks.classnames import DTD
from moram.data.folder import ImageFileDataset
from moram.data.transforms import ClipImageTransform, ImageTensorDataset

Split = tuple[list[Path], list[int]]
Sets = tuple[Dataset, Dataset]


def _files(dataset: str, split: Split, image_size: int, how: str) -> ImageFileDataset:
    check_images(dataset, split[0], how)
    return ImageFileDataset(split[0], split[1], image_size)


def _sets(dataset: str, train: Split, test: Split, image_size: int, how: str) -> Sets:
    return _files(dataset, train, image_size, how), _files(dataset, test, image_size, how)


def fgvc_aircraft(base: Path, image_size: int, how: str) -> Sets:
    """``data/images_variant_{trainval,test}.txt`` (``<image id> <variant>``), ``variants.txt``, ``images/``."""
    name, data = "FGVC-Aircraft", base / "data"
    split_files = {s: data / f"images_variant_{s}.txt" for s in ("trainval", "test")}
    expected = "fgvc-aircraft-2013b/data/{variants.txt, images_variant_trainval.txt, images_variant_test.txt, images/}"
    require(name, [data / "variants.txt", *split_files.values(), data / "images"], expected, how)
    index = {v: i for i, v in enumerate(read_lines(name, data / "variants.txt"))}

    def split(path: Path) -> Split:
        files, labels = [], []
        for line in read_lines(name, path):
            image_id, _, variant = line.partition(" ")
            if variant not in index:
                raise DatasetCorruptError(f"{name}: '{path}' names variant {variant!r}, which variants.txt lacks")
            files.append(data / "images" / f"{image_id}.jpg")
            labels.append(index[variant])
        return files, labels

    return _sets(name, split(split_files["trainval"]), split(split_files["test"]), image_size, how)


def dtd(base: Path, image_size: int, how: str) -> Sets:
    """``labels/{train,val,test}1.txt`` (``<class>/<file>.jpg``) and ``images/``; train = train1 + val1."""
    name = "DTD"
    labels_dir = base / "labels"
    split_files = [labels_dir / f"{s}1.txt" for s in ("train", "val", "test")]
    require(name, [*split_files, base / "images"], "dtd/labels/{train1,val1,test1}.txt and dtd/images/", how)
    index = {c: i for i, c in enumerate(DTD)}

    def split(paths: list[Path]) -> Split:
        files, labels = [], []
        for path in paths:
            for line in read_lines(name, path):
                texture = line.split("/")[0]
                if texture not in index:
                    raise DatasetCorruptError(f"{name}: '{path}' lists {line!r}, not of any of the 47 DTD classes")
                files.append(base / "images" / line)
                labels.append(index[texture])
        return files, labels

    return _sets(name, split(split_files[:2]), split(split_files[2:]), image_size, how)


def flowers102(base: Path, image_size: int, how: str) -> Sets:
    """``jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (labels 1..102), ``setid.mat``; train = trnid + valid."""
    name = "Flowers102"
    label_file, setid_file = base / "imagelabels.mat", base / "setid.mat"
    require(name, [label_file, setid_file, base / "jpg"], "flowers-102/{jpg/, imagelabels.mat, setid.mat}", how)
    labels = np.atleast_1d(mat_field(name, label_file, load_mat(name, label_file), "labels")).astype(np.int64)
    setid = load_mat(name, setid_file)

    def split(*keys: str) -> Split:
        ids = np.concatenate([np.atleast_1d(mat_field(name, setid_file, setid, k)) for k in keys]).astype(np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
            raise DatasetCorruptError(
                f"{name}: '{setid_file}' lists images up to {ids.max()} but '{label_file}' labels {len(labels)}"
            )
        return [base / "jpg" / f"image_{i:05d}.jpg" for i in ids], [int(labels[i - 1]) - 1 for i in ids]

    return _sets(name, split("trnid", "valid"), split("tstid"), image_size, how)


def food101(base: Path, image_size: int, how: str) -> Sets:
    """``meta/{train,test}.json`` (class -> ``<class>/<id>``), ``meta/classes.txt`` and ``images/``."""
    name, meta = "Food101", base / "meta"
    require(name, [meta / "classes.txt", meta / "train.json", meta / "test.json", base / "images"],
            "food-101/meta/{classes.txt, train.json, test.json} and food-101/images/", how)
    index = {c: i for i, c in enumerate(read_lines(name, meta / "classes.txt"))}

    def split(path: Path) -> Split:
        try:
            listing = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetCorruptError(f"{name}: '{path}' is not valid JSON ({err}); download it again") from err
        files, labels = [], []
        for food, stems in listing.items():
            if food not in index:
                raise DatasetCorruptError(f"{name}: '{path}' has class {food!r}, which meta/classes.txt lacks")
            files += [base / "images" / f"{stem}.jpg" for stem in stems]
            labels += [index[food]] * len(stems)
        return files, labels

    return _sets(name, split(meta / "train.json"), split(meta / "test.json"), image_size, how)


def oxford_pets(base: Path, image_size: int, how: str) -> Sets:
    """``annotations/{trainval,test}.txt`` (``<image> <class 1..37> <species> <breed>``) and ``images/``."""
    name, notes = "OxfordIIITPet", base / "annotations"
    require(name, [notes / "trainval.txt", notes / "test.txt", base / "images"],
            "oxford-iiit-pet/annotations/{trainval,test}.txt and oxford-iiit-pet/images/", how)

    def split(path: Path) -> Split:
        files, labels = [], []
        for line in read_lines(name, path):
            if line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise DatasetCorruptError(f"{name}: '{path}' has a malformed line {line!r}; download it again")
            files.append(base / "images" / f"{fields[0]}.jpg")
            labels.append(int(fields[1]) - 1)
        return files, labels

    return _sets(name, split(notes / "trainval.txt"), split(notes / "test.txt"), image_size, how)


def stanford_cars(base: Path, image_size: int, how: str) -> Sets:
    """The devkit layout of torchvision: ``devkit/cars_{meta,train_annos}.mat``, ``cars_test_annos_withlabels.mat``."""
    name, devkit = "StanfordCars", base / "devkit"
    annos = {"train": devkit / "cars_train_annos.mat", "test": base / "cars_test_annos_withlabels.mat"}
    require(name, [devkit / "cars_meta.mat", *annos.values(), base / "cars_train", base / "cars_test"],
            "stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
            "cars_train/, cars_test/}", how)

    meta = devkit / "cars_meta.mat"
    names = np.atleast_1d(mat_field(name, meta, load_mat(name, meta), "class_names"))
    if len(names) != 196:
        raise DatasetCorruptError(f"{name}: '{meta}' lists {len(names)} class names, not Stanford Cars' 196")

    def split(which: str) -> Split:
        path = annos[which]
        records = np.atleast_1d(mat_field(name, path, load_mat(name, path), "annotations"))
        if records.dtype.names is None or not {"fname", "class"} <= set(records.dtype.names):
            raise DatasetCorruptError(f"{name}: '{path}' annotations lack the fields 'fname' and 'class'")
        images = base / f"cars_{which}"
        return [images / str(r["fname"]) for r in records], [int(r["class"]) - 1 for r in records]

    return _sets(name, split("train"), split("test"), image_size, how)


def _unpickle(name: str, path: Path) -> dict:
    try:
        with path.open("rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as err:  # truncated or foreign files raise any of several unpickling errors
        raise DatasetCorruptError(f"{name}: cannot unpickle '{path}' ({err}); download it again") from err
    if not isinstance(data, dict):
        raise DatasetCorruptError(f"{name}: '{path}' holds a {type(data).__name__}, not CIFAR's dict")
    return data


def cifar100_arrays(base: Path, split: str, how: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 fine labels (N,) of ``cifar-100-python/{train,test}``."""
    name = "CIFAR-100"
    path = base / split
    require(name, [path, base / "meta"], "cifar-100-python/{train, test, meta}", how)
    data = _unpickle(name, path)
    if "data" not in data or "fine_labels" not in data:
        raise DatasetCorruptError(f"{name}: '{path}' lacks 'data' or 'fine_labels' (has {sorted(data)})")
    images = np.asarray(data["data"], dtype=np.uint8)
    labels = np.asarray(data["fine_labels"], dtype=np.int64)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise DatasetCorruptError(
            f"{name}: '{path}' has data of shape {images.shape} and {len(labels)} labels; expected (N, 3072) and N"
        )
    return images.reshape(-1, 3, 32, 32), labels


def cifar100_names(base: Path, how: str) -> list[str]:
    """CIFAR-100's ``fine_label_names`` from ``cifar-100-python/meta``."""
    require("CIFAR-100", [base / "meta"], "cifar-100-python/{train, test, meta}", how)
    meta = _unpickle("CIFAR-100", base / "meta")
    if "fine_label_names" not in meta:
        raise DatasetCorruptError(f"CIFAR-100: '{base / 'meta'}' lacks 'fine_label_names'")
    return [str(n) for n in meta["fine_label_names"]]


def cifar100(base: Path, image_size: int, how: str) -> Sets:
    """``cifar-100-python/{train,test,meta}`` pickles (CIFAR's Python version)."""
    transform = ClipImageTransform(image_size)
    sets = []
    for split in ("train", "test"):
        images, labels = cifar100_arrays(base, split, how)
        sets.append(ImageTensorDataset(torch.from_numpy(images), torch.from_numpy(labels), transform=transform))
    return sets[0], sets[1]


def mnist(base: Path, image_size: int, how: str) -> Sets:
    """The four IDX files under ``MNIST/raw`` (or directly in ``base``), read by :func:`moram.data.idx.load_mnist`."""
    from moram.data.idx import load_mnist

    transform = ClipImageTransform(image_size)
    sets = []
    for split in ("train", "test"):
        images, labels = load_mnist(base, split)
        sets.append(ImageTensorDataset(torch.from_numpy(images), torch.from_numpy(labels), transform=transform))
    return sets[0], sets[1]
