"""IDX reader and (Fashion-)MNIST loaders, against files written here in the exact IDX format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from moram.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist, load_mnist, read_idx

CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
         np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic 00 00 <code> <ndim>, big-endian int32 dims, big-endian data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, CODES[big.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + big.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_split(root: Path, split: str, n: int, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8),
        np.array([[-1, 2], [-128, 127]], dtype=np.int8),
        np.array([[-30000, 7], [1, 2]], dtype=np.int16),
        np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
        np.linspace(-1.5, 2.5, 12, dtype=np.float32).reshape(3, 4),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=["ubyte-3d", "ubyte-1d", "byte", "short", "int", "float", "double"],
)
def test_read_idx_round_trip(tmp_path, array, gz):
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), array, gz)
    out = read_idx(path)
    assert out.shape == array.shape
    assert out.dtype == array.dtype
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">i", 1) + b"\x00")
    with pytest.raises(ValueError, match=r"bad\.idx.*magic"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">i", 1) + b"\x00")  # unknown dtype code
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_names_file(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8))[:-3]
    path = tmp_path / "short.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match=r"short\.idx.*truncated"):
        read_idx(path)
    path.write_bytes(data[:9])  # header cut short
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_fashion_mnist_both_splits(tmp_path, gz):
    train = write_split(tmp_path, "train", 12, gz=gz, seed=1)
    test = write_split(tmp_path, "test", 5, gz=gz, seed=2)
    for split, (images, labels) in (("train", train), ("test", test)):
        got_images, got_labels = load_fashion_mnist(tmp_path, split)
        assert got_images.dtype == np.uint8
        assert got_images.shape == (len(labels), 28, 28)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)


def test_torchvision_layout(tmp_path):
    images, labels = write_split(tmp_path / "FashionMNIST" / "raw", "test", 3, gz=False)
    np.testing.assert_array_equal(load_fashion_mnist(tmp_path, "test")[1], labels)
    write_split(tmp_path / "MNIST" / "raw", "train", 4)
    assert load_mnist(tmp_path, "train")[0].shape == (4, 28, 28)


def test_missing_root_message(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(root, "train")
    message = str(info.value)
    for part in ("Fashion-MNIST", str(root), "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                 "apt-get install dataset-fashion-mnist", "torchvision"):  # fmt: skip
        assert part in message
    with pytest.raises(FileNotFoundError, match=r"MNIST not found.*t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "test")


def test_missing_label_file_names_it(tmp_path):
    write_split(tmp_path, "train", 3)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte\[\.gz\]"):
        load_fashion_mnist(tmp_path, "train")


def test_count_mismatch(tmp_path):
    write_split(tmp_path, "train", 6)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8), gz=True)
    with pytest.raises(ValueError, match="6 images.*5 labels"):
        load_fashion_mnist(tmp_path, "train")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist(tmp_path, "validation")


def test_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "t-shirt/top"
    assert FASHION_MNIST_CLASSES[9] == "ankle boot"
