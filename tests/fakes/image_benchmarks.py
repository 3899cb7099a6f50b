"""Write tiny fake copies of the benchmark datasets in their exact distributed layouts (for tests and smoke runs).

Each writer puts ``train`` and ``test`` images for the first ``classes`` classes of a dataset under
``root``, in the folder, split-file, annotation (.mat / pickle / IDX / JSON) and image layout that the
real archive unpacks to, so the readers of :mod:`moram.data.benchmarks` read them as they would the
real data. Images are flat 8x8 colours; class ``c`` gets the value ``20 * c + i`` (``i``: image index).

Example:
    >>> import tempfile
    >>> from moram.data.benchmarks import load_benchmark
    >>> root = tempfile.mkdtemp()
    >>> write_fake("dtd", root, classes=2)
    >>> task = load_benchmark("dtd", root, image_size=8)
    >>> len(task.train), len(task.test), len(task.classnames)
    (4, 2, 47)
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moram.data.benchmarks.classnames import CLASSNAMES, DTD, FGVC_AIRCRAFT, FOOD101, OXFORD_PETS

Counts = tuple[int, int]  # images per class in (train, test)


def _image(path: Path, value: int, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(path)


def _samples(classes: int, counts: Counts) -> dict[str, list[tuple[int, int]]]:
    """(class, image index) pairs of each split; image indices are unique across splits."""
    train = [(c, i) for c in range(classes) for i in range(counts[0])]
    test = [(c, counts[0] + i) for c in range(classes) for i in range(counts[1])]
    return {"train": train, "test": test}


def _coop(split_file: Path, image_dir: Path, folder_of: Callable[[int], str], classes: int,
          counts: Counts) -> None:
    splits: dict[str, list[list]] = {"train": [], "val": [], "test": []}
    for split, samples in _samples(classes, counts).items():
        for c, i in samples:
            rel = f"{folder_of(c)}/image_{i + 1:04d}.jpg"
            _image(image_dir / rel, 20 * c + i)
            splits[split].append([rel, c, folder_of(c).split("/")[-1].replace("_", " ")])
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(splits))


def fgvc_aircraft(root: Path, classes: int, counts: Counts) -> None:
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(FGVC_AIRCRAFT) + "\n")
    for split, samples in _samples(classes, counts).items():
        name = "trainval" if split == "train" else "test"
        lines = [f"{1000000 + 100 * c + i} {FGVC_AIRCRAFT[c]}" for c, i in samples]
        for (c, i), line in zip(samples, lines, strict=True):
            _image(data / "images" / f"{line.split()[0]}.jpg", 20 * c + i)
        (data / f"images_variant_{name}.txt").write_text("\n".join(lines) + "\n")
    for name in ("train", "val"):  # present in the real archive; not read
        (data / f"images_variant_{name}.txt").write_text("")


def caltech101(root: Path, classes: int, counts: Counts) -> None:
    base = root / "caltech101"
    _coop(base / "split_zhou_Caltech101.json", base / "101_ObjectCategories", lambda c: f"category_{c:03d}",
          classes, counts)


def cifar100(root: Path, classes: int, counts: Counts) -> None:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    names = [n.replace(" ", "_") for n in CLASSNAMES["cifar100"]]
    with (base / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"super_{k}" for k in range(20)]}, f)
    for split, samples in _samples(classes, counts).items():
        data = np.stack([np.full(3072, (20 * c + i) % 256, dtype=np.uint8) for c, i in samples])
        record = {"data": data, "fine_labels": [c for c, _ in samples], "coarse_labels": [c % 20 for c, _ in samples],
                  "filenames": [f"img_{c}_{i}.png" for c, i in samples], "batch_label": f"{split} batch"}
        with (base / split).open("wb") as f:
            pickle.dump(record, f)


def dtd(root: Path, classes: int, counts: Counts) -> None:
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True, exist_ok=True)
    samples = _samples(classes, counts)
    for split, file in (("train", "train1.txt"), ("test", "test1.txt")):
        lines = [f"{DTD[c]}/{DTD[c]}_{i + 1:04d}.jpg" for c, i in samples[split]]
        for (c, i), line in zip(samples[split], lines, strict=True):
            _image(data / "images" / line, 20 * c + i)
        (data / "labels" / file).write_text("\n".join(lines) + "\n")
    (data / "labels" / "val1.txt").write_text("")


def eurosat(root: Path, classes: int, counts: Counts) -> None:
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    base = root / "eurosat"
    _coop(base / "split_zhou_EuroSAT.json", base / "2750", lambda c: folders[c], classes, counts)


def flowers102(root: Path, classes: int, counts: Counts) -> None:
    import scipy.io

    base = root / "flowers-102"
    labels: list[int] = []
    ids: dict[str, list[int]] = {}
    for split, samples in _samples(classes, counts).items():
        ids[split] = []
        for c, i in samples:
            labels.append(c + 1)
            ids[split].append(len(labels))
            _image(base / "jpg" / f"image_{len(labels):05d}.jpg", 20 * c + i)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([ids["train"]], dtype=np.uint16),
                                          "valid": np.zeros((1, 0), dtype=np.uint16),
                                          "tstid": np.array([ids["test"]], dtype=np.uint16)})


def food101(root: Path, classes: int, counts: Counts) -> None:
    base = root / "food-101"
    folders = [n.replace(" ", "_") for n in FOOD101]
    (base / "meta").mkdir(parents=True, exist_ok=True)
    (base / "meta" / "classes.txt").write_text("\n".join(folders) + "\n")
    for split, samples in _samples(classes, counts).items():
        listing: dict[str, list[str]] = {}
        for c, i in samples:
            stem = f"{folders[c]}/{100000 + i}"
            listing.setdefault(folders[c], []).append(stem)
            _image(base / "images" / f"{stem}.jpg", 20 * c + i)
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))


def _idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist(root: Path, classes: int, counts: Counts) -> None:
    raw = root / "MNIST" / "raw"
    for split, (images, labels) in (("train", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                    ("test", ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        samples = _samples(classes, counts)[split]
        _idx(raw / images, np.stack([np.full((28, 28), 20 * c + i) for c, i in samples]))
        _idx(raw / labels, np.array([c for c, _ in samples]))


def oxford_pets(root: Path, classes: int, counts: Counts) -> None:
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    for split, samples in _samples(classes, counts).items():
        lines = []
        for c, i in samples:
            stem = f"{OXFORD_PETS[c].replace(' ', '_')}_{i + 1}"
            lines.append(f"{stem} {c + 1} {1 + c % 2} {c + 1}")
            _image(base / "images" / f"{stem}.jpg", 20 * c + i)
        (base / "annotations" / ("trainval.txt" if split == "train" else "test.txt")).write_text("\n".join(lines))


def stanford_cars(root: Path, classes: int, counts: Counts) -> None:
    import scipy.io

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.array(CLASSNAMES["stanford_cars"], dtype=object)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names.reshape(1, -1)})
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, samples in _samples(classes, counts).items():
        records = np.zeros((1, len(samples)), dtype=fields)
        for k, (c, i) in enumerate(samples):
            fname = f"{k + 1:05d}.jpg"
            records[0, k] = (1, 1, 7, 7, c + 1, fname)
            _image(base / f"cars_{split}" / fname, 20 * c + i)
        path = base / "devkit" / "cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
        scipy.io.savemat(path, {"annotations": records})


def sun397(root: Path, classes: int, counts: Counts) -> None:
    base = root / "SUN397"
    folders = [n.replace(" ", "_") for n in CLASSNAMES["sun397"]]
    _coop(base / "split_zhou_SUN397.json", base, lambda c: f"{folders[c][0]}/{folders[c]}", classes, counts)


WRITERS: dict[str, Callable[[Path, int, Counts], None]] = {
    "fgvc_aircraft": fgvc_aircraft, "caltech101": caltech101, "cifar100": cifar100, "dtd": dtd, "eurosat": eurosat,
    "flowers102": flowers102, "food101": food101, "mnist": mnist, "oxford_pets": oxford_pets,
    "stanford_cars": stanford_cars, "sun397": sun397,
}


def write_fake(name: str, root: str | Path, classes: int = 2, counts: Counts = (2, 1)) -> None:
    """Write a fake ``name`` under ``root``: ``counts`` = (train, test) images for each of the first ``classes``."""
    if name not in WRITERS:
        raise ValueError(f"no fake writer for {name!r}; valid names: {sorted(WRITERS)}")
    if not 1 <= classes <= len(CLASSNAMES[name]):
        raise ValueError(f"classes must be in 1..{len(CLASSNAMES[name])} for {name}, got {classes}")
    WRITERS[name](Path(root), classes, counts)
