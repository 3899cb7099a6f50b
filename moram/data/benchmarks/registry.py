"""The benchmark datasets: where each lives under the data root, how to get it, and how to read it.

Every dataset sits in the folder torchvision's ``download=True`` creates under the root::

    <root>/fgvc-aircraft-2013b/data/...        <root>/caltech101/101_ObjectCategories/<class>/...
    <root>/cifar-100-python/{train,test,meta}   <root>/dtd/dtd/{labels,images}  (or <root>/dtd/{labels,images})
    <root>/eurosat/2750/<class>/*.jpg           <root>/flowers-102/{jpg,imagelabels.mat,setid.mat}
    <root>/food-101/{meta,images}               <root>/MNIST/raw/*-ubyte[.gz]
    <root>/oxford-iiit-pet/{annotations,images} <root>/stanford_cars/{devkit,cars_train,cars_test,...}
    <root>/SUN397/<letter>/<class>/...

CoOp's split files (``split_zhou_<Name>.json``) go in the dataset's folder (or its parent, or the root).
Caltech101, EuroSAT and SUN397 have no official split and need theirs; the others use their official
split unless ``split="coop"`` asks for CoOp's (FGVC-Aircraft, CIFAR-100 and MNIST have no CoOp file
and keep their official split).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from moram.data.benchmarks import official
from moram.data.benchmarks._common import first_existing, not_found
from moram.data.benchmarks.classnames import CLASSNAMES, TEMPLATES
from moram.data.benchmarks.coop import COOP_SPLITS_URL, find_split_file, read_coop_split
from moram.data.folder import resolve_root
from moram.data.tasks import Task
from moram.errors import ConfigError

SplitChoice = Literal["official", "coop"]
Reader = Callable[[Path, int, str], tuple[Dataset, Dataset]]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark dataset.

    Attributes:
        name: Key used in configs and task names, e.g. ``"fgvc_aircraft"``.
        title: Human name used in messages.
        folders: Candidate folders under the root (torchvision's first); the first holding ``marker`` is used.
        marker: A path inside the dataset folder that tells the right candidate.
        torchvision: Class in ``torchvision.datasets`` that downloads it (``moram data prepare``), if any.
        read: Reader of the official split; None when the dataset has none (CoOp's split is required).
        coop_file: Name of CoOp's split file, if CoOp has one.
        coop_images: Folder, relative to the dataset folder, that the CoOp relpaths start from.
    """

    name: str
    title: str
    folders: tuple[str, ...]
    marker: str
    torchvision: str | None
    read: Reader | None
    coop_file: str | None = None
    coop_images: str = ""

    @property
    def classnames(self) -> list[str]:
        return CLASSNAMES[self.name]

    @property
    def template(self) -> str:
        return TEMPLATES[self.name]

    def how_to_get(self, root: Path, coop: bool = False) -> str:
        """One sentence saying how to put this dataset (and, if ``coop``, its CoOp split) under ``root``."""
        steps = []
        if self.name == "stanford_cars":  # torchvision's downloader raises: the original URL is gone
            steps.append(
                "download the Stanford Cars images and devkit .mat files by hand (e.g. the Kaggle mirror of "
                f"torchvision's layout) into '{root / self.folders[0]}'"
            )
        elif self.torchvision is not None:
            steps.append(
                f"run `moram data prepare {self.name} --root {root}` "
                f"(torchvision.datasets.{self.torchvision}(root, download=True))"
            )
        if self.coop_file is not None and (coop or self.read is None):
            why = f"{self.title} has no official train/test split" if self.read is None else "split='coop' asks for it"
            where = root / self.folders[0]
            steps.append(f"put CoOp's {self.coop_file} (linked from {COOP_SPLITS_URL}) in '{where}'; {why}")
        return "; and ".join(steps) + "."

    def locate(self, root: Path, coop: bool = False) -> tuple[Path, str]:
        """The dataset's folder under ``root`` and the how-to-get hint; a clear error if the folder is missing."""
        base, how = first_existing([root / f for f in self.folders], self.marker), self.how_to_get(root, coop)
        if not base.is_dir():
            expected = " or ".join(f"'{root / f}'" for f in self.folders)
            raise not_found(self.title, base, f"the {self.title} folder {expected} under the data root", how)
        return base, how

    def load(self, root: str | Path | None, image_size: int = 224, split: SplitChoice = "official") -> Task:
        """The dataset as one :class:`Task` (CLIP class names and template), read from ``root``.

        ``root`` None reads the ``MORAM_DATA`` environment variable.
        """
        if split not in ("official", "coop"):
            raise ConfigError(f"split must be 'official' or 'coop', got {split!r}")
        root_path = resolve_root(None if root is None else str(root))
        use_coop = self.coop_file is not None and (split == "coop" or self.read is None)
        base, how = self.locate(root_path, use_coop)
        if use_coop:
            assert self.coop_file is not None
            folders = list(dict.fromkeys([base, base.parent, root_path]))
            split_file = find_split_file(self.title, self.coop_file, folders, how)
            train, test = read_coop_split(self.title, split_file, base / self.coop_images, image_size, how)
        else:
            assert self.read is not None  # every dataset without a CoOp file has an official split
            train, test = self.read(base, image_size, how)
        return Task(self.name, list(self.classnames), self.template, train, test).check()


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("fgvc_aircraft", "FGVC-Aircraft", ("fgvc-aircraft-2013b",), "data", "FGVCAircraft",
              official.fgvc_aircraft),
    Benchmark("caltech101", "Caltech101", ("caltech101", "caltech-101"), "101_ObjectCategories", "Caltech101", None,
              "split_zhou_Caltech101.json", "101_ObjectCategories"),
    Benchmark("cifar100", "CIFAR-100", ("cifar-100-python",), "meta", "CIFAR100", official.cifar100),
    Benchmark("dtd", "DTD", ("dtd/dtd", "dtd"), "labels", "DTD", official.dtd, "split_zhou_DescribableTextures.json",
              "images"),
    Benchmark("eurosat", "EuroSAT", ("eurosat",), "2750", "EuroSAT", None, "split_zhou_EuroSAT.json", "2750"),
    Benchmark("flowers102", "Flowers102", ("flowers-102", "oxford_flowers"), "jpg", "Flowers102", official.flowers102,
              "split_zhou_OxfordFlowers.json", "jpg"),
    Benchmark("food101", "Food101", ("food-101",), "meta", "Food101", official.food101, "split_zhou_Food101.json",
              "images"),
    Benchmark("mnist", "MNIST", (".",), "MNIST", "MNIST", official.mnist),
    Benchmark("oxford_pets", "OxfordIIITPet", ("oxford-iiit-pet", "oxford_pets"), "annotations", "OxfordIIITPet",
              official.oxford_pets, "split_zhou_OxfordPets.json", "images"),
    Benchmark("stanford_cars", "StanfordCars", ("stanford_cars",), "devkit", "StanfordCars", official.stanford_cars,
              "split_zhou_StanfordCars.json"),
    Benchmark("sun397", "SUN397", ("SUN397", "sun397/SUN397"), "a", "SUN397", None, "split_zhou_SUN397.json"),
)}


def get_benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` called ``name``; a ValueError listing the valid names otherwise."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark dataset {name!r}; valid names: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(name: str, root: str | Path | None = None, image_size: int = 224,
                   split: SplitChoice = "official") -> Task:
    """Read benchmark ``name`` from ``root`` (None: ``MORAM_DATA``) as a :class:`Task`."""
    return get_benchmark(name).load(root, image_size, split)
