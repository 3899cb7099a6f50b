"""Benchmark readers on tiny fakes written in each dataset's real layout; clear errors; `moram data`."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
from fakes.image_benchmarks import write_fake

from moram.data.benchmarks import BENCHMARKS, DatasetCorruptError, DatasetNotFoundError, load_benchmark
from moram.data.benchmarks import prepare as prepare_cli
from moram.data.benchmarks.classnames import CLASSNAMES, TEMPLATES
from moram.data.transforms import CLIP_MEAN, CLIP_STD

NAMES = sorted(BENCHMARKS)
CLASS_COUNTS = {
    "fgvc_aircraft": 100, "caltech101": 100, "cifar100": 100, "dtd": 47, "eurosat": 10, "flowers102": 102,
    "food101": 101, "mnist": 10, "oxford_pets": 37, "stanford_cars": 196, "sun397": 397,
}


def test_class_name_lists_and_templates_are_pinned():
    assert {k: len(v) for k, v in CLASSNAMES.items()} == CLASS_COUNTS
    assert all(len(set(v)) == len(v) for v in CLASSNAMES.values())  # no duplicate names within a dataset
    assert all(t.count("{}") == 1 for t in TEMPLATES.values())
    assert TEMPLATES["fgvc_aircraft"] == "a photo of a {}, a type of aircraft."
    assert TEMPLATES["mnist"].format("7") == 'a photo of the number: "7".'
    assert CLASSNAMES["flowers102"][0] == "pink primrose"
    assert CLASSNAMES["sun397"][-1] == "youth hostel"
    assert CLASSNAMES["stanford_cars"][0] == "AM General Hummer SUV 2000"
    assert "background" not in CLASSNAMES["caltech101"]  # CoOp's 100 classes


@pytest.mark.parametrize("name", NAMES)
def test_reads_the_real_layout(tmp_path, name):
    write_fake(name, tmp_path, classes=3, counts=(2, 1))
    task = load_benchmark(name, str(tmp_path), image_size=8)
    assert task.name == name
    assert task.classnames == CLASSNAMES[name]
    assert task.template == TEMPLATES[name]
    assert task.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert task.test.labels.tolist() == [0, 1, 2]
    image, label = task.train[3]  # class 1, image 1: a flat picture of value 20 * 1 + 1
    assert image.shape == (3, 8, 8)
    assert label == 1
    expected = (21 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(image[:, 4, 4], expected, atol=0.05, rtol=0)  # JPEG may move a flat value by ~1


def test_data_root_from_environment_and_dtd_without_nested_folder(tmp_path, monkeypatch):
    write_fake("dtd", tmp_path, classes=2)
    (tmp_path / "dtd" / "dtd").rename(tmp_path / "flat")  # the layout dtd/{labels,images} is read too
    (tmp_path / "dtd").rmdir()
    (tmp_path / "flat").rename(tmp_path / "dtd")
    monkeypatch.setenv("MORAM_DATA", str(tmp_path))
    assert len(load_benchmark("dtd", image_size=8).train) == 4


def test_coop_split_on_request(tmp_path):
    write_fake("oxford_pets", tmp_path, classes=2, counts=(2, 1))  # images Abyssinian_{1,2,3}, American_Bulldog_...
    pets = tmp_path / "oxford-iiit-pet"
    split = {"train": [["Abyssinian_3.jpg", 0, "abyssinian"]], "val": [],
             "test": [["Abyssinian_1.jpg", 0, "abyssinian"], ["American_Bulldog_2.jpg", 1, "american_bulldog"]]}
    (pets / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    task = load_benchmark("oxford_pets", tmp_path, image_size=8, split="coop")
    assert [f.name for f in task.train.files] == ["Abyssinian_3.jpg"]
    assert task.test.labels.tolist() == [0, 1]
    assert len(load_benchmark("oxford_pets", tmp_path).train) == 4  # the official split is the default
    (pets / "split_zhou_OxfordPets.json").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"split_zhou_OxfordPets\.json.*split='coop'"):
        load_benchmark("oxford_pets", tmp_path, split="coop")


@pytest.mark.parametrize("name", NAMES)
def test_missing_root_names_dataset_path_and_fix(tmp_path, name):
    benchmark = BENCHMARKS[name]
    with pytest.raises(FileNotFoundError) as info:
        load_benchmark(name, tmp_path / "nowhere")
    message = str(info.value)
    assert benchmark.title in message
    assert str(tmp_path / "nowhere") in message
    assert f"moram data prepare {name}" in message or "torchvision" in message


PARTIAL = {
    "fgvc_aircraft": "fgvc-aircraft-2013b/data/images_variant_test.txt",
    "caltech101": "caltech101/split_zhou_Caltech101.json",
    "cifar100": "cifar-100-python/test",
    "dtd": "dtd/dtd/labels/test1.txt",
    "eurosat": "eurosat/split_zhou_EuroSAT.json",
    "flowers102": "flowers-102/setid.mat",
    "food101": "food-101/meta/test.json",
    "mnist": "MNIST/raw/t10k-labels-idx1-ubyte",
    "oxford_pets": "oxford-iiit-pet/annotations/test.txt",
    "stanford_cars": "stanford_cars/cars_test_annos_withlabels.mat",
    "sun397": "SUN397/split_zhou_SUN397.json",
}


@pytest.mark.parametrize("name", NAMES)
def test_partial_download_names_the_missing_file(tmp_path, name):
    write_fake(name, tmp_path, classes=1, counts=(1, 1))
    (tmp_path / PARTIAL[name]).unlink()
    with pytest.raises(FileNotFoundError, match=PARTIAL[name].rsplit("/", 1)[-1].replace(".", r"\.")) as info:
        load_benchmark(name, tmp_path)
    if BENCHMARKS[name].read is None:  # no official split: say so, and where CoOp's file goes
        assert "no official train/test split" in str(info.value)
        assert "CoOp" in str(info.value)


def test_missing_images_are_a_partial_download(tmp_path):
    write_fake("food101", tmp_path, classes=2)
    (tmp_path / "food-101" / "images" / "baby_back_ribs" / "100002.jpg").unlink()  # the last test image
    with pytest.raises(DatasetNotFoundError, match=r"Food101: '.*100002\.jpg' does not exist"):
        load_benchmark("food101", tmp_path)


CORRUPT = {
    "cifar100": ("cifar-100-python/test", b"\x80\x04truncated", r"cannot unpickle"),
    "flowers102": ("flowers-102/imagelabels.mat", b"not a mat file", r"cannot read the MATLAB file"),
    "food101": ("food-101/meta/train.json", b"{not json", r"not valid JSON"),
    "caltech101": ("caltech101/split_zhou_Caltech101.json", b'{"train": 3}', r"has no 'train' list"),
    "oxford_pets": ("oxford-iiit-pet/annotations/test.txt", b"Abyssinian_1 x", r"malformed line"),
    "fgvc_aircraft": ("fgvc-aircraft-2013b/data/images_variant_test.txt", b"1 Concorde", r"Concorde"),
    "stanford_cars": ("stanford_cars/devkit/cars_train_annos.mat", b"\x00" * 200, r"MATLAB file"),
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00", r"truncated IDX"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_file_is_named(tmp_path, name):
    relpath, content, message = CORRUPT[name]
    write_fake(name, tmp_path, classes=1, counts=(1, 1))
    (tmp_path / relpath).write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_benchmark(name, tmp_path)
    assert relpath.rsplit("/", 1)[-1] in str(info.value)
    assert name == "mnist" or isinstance(info.value, DatasetCorruptError)


def test_unreadable_image_names_the_file(tmp_path):
    write_fake("oxford_pets", tmp_path, classes=1, counts=(1, 1))
    (tmp_path / "oxford-iiit-pet" / "images" / "Abyssinian_1.jpg").write_bytes(b"not a jpeg")
    task = load_benchmark("oxford_pets", tmp_path)
    with pytest.raises(OSError, match=r"cannot read image '.*Abyssinian_1\.jpg'"):
        task.train[0]


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark dataset 'imagenet'.*'sun397'"):
        load_benchmark("imagenet", tmp_path)


class _Offline:
    def __init__(self, root, download=False, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_prepare_fails_clearly_without_network(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _Offline)
    assert prepare_cli.main(["prepare", "cifar100", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"could not download CIFAR-100 (cifar100) into '{tmp_path}'" in err
    assert "URLError" in err
    assert "Traceback" not in err


def test_prepare_reminds_of_coop_split_and_check_reads_back(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "EuroSAT", lambda root, download: write_fake("eurosat", root))
    assert prepare_cli.main(["prepare", "eurosat", "--root", str(tmp_path)]) == 0
    assert "needs CoOp's split" in capsys.readouterr().out
    assert prepare_cli.main(["check", "eurosat", "dtd", "--root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "eurosat: 4 train, 2 test, 10 classes" in captured.out
    assert "dtd: NOT READY" in captured.err


def test_prepare_needs_a_root(monkeypatch, capsys):
    monkeypatch.delenv("MORAM_DATA", raising=False)
    assert prepare_cli.main(["prepare", "mnist"]) == 2
    assert "MORAM_DATA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_cli.main(["prepare", "imagenet", "--root", "x"])
