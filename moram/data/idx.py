"""Read the IDX files of MNIST and Fashion-MNIST (plain or gzipped), with no download.

IDX layout (http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``,
then ``ndim`` big-endian int32 sizes, then the values in big-endian row-major order.

Fashion-MNIST ships as a Debian package: ``apt-get install dataset-fashion-mnist`` puts the four
gzipped files in ``/usr/share/datasets/fashion-mnist``. torchvision's ``download=True`` puts them in
``<root>/FashionMNIST/raw`` (``<root>/MNIST/raw`` for MNIST); both layouts are found.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from moram.errors import ConfigError, DataError, DataNotFoundError

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_CLASSES: list[str] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]

_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_HOW_TO_GET = {
    "Fashion-MNIST": (
        "install the Debian package (`apt-get install dataset-fashion-mnist`, files in "
        "/usr/share/datasets/fashion-mnist) or download with torchvision "
        "(`torchvision.datasets.FashionMNIST(root, download=True)`, files in <root>/FashionMNIST/raw)"
    ),
    "MNIST": "download with torchvision (`torchvision.datasets.MNIST(root, download=True)`, files in <root>/MNIST/raw)",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a native-endian numpy array of its stored shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected 0000<dtype><ndim> "
            f"with dtype code one of {[hex(c) for c in IDX_DTYPES]})"
        )
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX file (header declares {ndim} dims but the file has {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        kind = "truncated" if len(raw) - header < expected else "oversized"
        raise DataError(
            f"{path}: {kind} IDX file: dims {shape} of {dtype.name} need {expected} data bytes, "
            f"found {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find_file(root: Path, stem: str, dataset: str, torchvision_dir: str) -> Path:
    folders = (root, root / torchvision_dir / "raw")
    for folder in folders:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    expected = ", ".join(f"{s}[.gz]" for pair in _SPLIT_STEMS.values() for s in pair)
    where = "does not exist" if not root.exists() else f"has no {stem}[.gz] (nor {folders[1]})"
    raise DataNotFoundError(
        f"{dataset} not found: {root} {where}. Expected the IDX files {expected} in that folder. "
        f"To get them, {_HOW_TO_GET[dataset]}."
    )


def _load_split(root: str | Path, split: str, dataset: str, torchvision_dir: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _SPLIT_STEMS:
        raise ConfigError(f"{dataset} split must be one of {sorted(_SPLIT_STEMS)}, got {split!r}")
    image_stem, label_stem = _SPLIT_STEMS[split]
    root = Path(root)
    image_file = _find_file(root, image_stem, dataset, torchvision_dir)
    label_file = _find_file(root, label_stem, dataset, torchvision_dir)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{image_file}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{label_file}: expected 1-D labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{dataset} {split}: {len(images)} images in {image_file} but {len(labels)} labels in {label_file}"
        )
    return images, labels.astype(np.int64)


def load_fashion_mnist(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train" or "test") from ``root``: uint8 images (N, 28, 28), int64 labels (N,)."""
    return _load_split(root, split, "Fashion-MNIST", "FashionMNIST")


def load_mnist(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ("train" or "test") from ``root``: uint8 images (N, 28, 28), int64 labels (N,)."""
    return _load_split(root, split, "MNIST", "MNIST")
