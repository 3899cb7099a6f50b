"""The CLIP continual-learning protocols as task sources (docs/design.md §2).

- :class:`XTailTasks`: X-TAIL, ten domains scored task-agnostically (``model.backbone.protocol: task_agnostic``,
  each test image against the union of every domain's class names); few-shot training comes from
  :class:`~moram.data.stream.TaskStreamDataModule` (``data.shots: 16``).
- :class:`MTILTasks`: MTIL, eleven datasets in order I or II, scored task-aware.
- :class:`CIFAR100CILTasks`: class-incremental CIFAR-100 in 10, 20 or 50 steps over a seeded class order.

Each takes one data ``root`` (None: the ``MORAM_DATA`` environment variable); see
:mod:`moram.data.benchmarks.registry` for the layout under it. ``num_tasks`` reads no data.
Training images go through open_clip's training preprocessing (``train_transform: clip_train``, a
random resized crop of scale 0.9-1, as the code that defines each protocol does:
:class:`~moram.data.transforms.ClipTrainTransform`); ``eval`` trains on the evaluation transform.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from moram.data.benchmarks import official
from moram.data.benchmarks._common import DatasetCorruptError
from moram.data.benchmarks.classnames import CIFAR100, TEMPLATES
from moram.data.benchmarks.registry import BENCHMARKS, SplitChoice, get_benchmark
from moram.data.folder import resolve_root
from moram.data.tasks import Task
from moram.data.transforms import (
    ClipImageTransform,
    ClipTrainTransform,
    ImageTensorDataset,
    TrainTransform,
    use_train_transform,
)
from moram.errors import ConfigError

XTAIL_ORDER: list[str] = [
    "fgvc_aircraft", "caltech101", "dtd", "eurosat", "flowers102",
    "food101", "mnist", "oxford_pets", "stanford_cars", "sun397",
]
MTIL_ORDERS: dict[str, list[str]] = {
    "I": ["fgvc_aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers102", "food101", "mnist",
          "oxford_pets", "stanford_cars", "sun397"],
    "II": ["stanford_cars", "food101", "mnist", "oxford_pets", "flowers102", "sun397", "fgvc_aircraft",
           "caltech101", "dtd", "eurosat", "cifar100"],
}


class BenchmarkTasks:
    """One task per benchmark dataset, in the given order.

    Args:
        datasets: Dataset names in task order (keys of :data:`moram.data.benchmarks.registry.BENCHMARKS`).
        root: The data root; None reads the ``MORAM_DATA`` environment variable.
        image_size: Side of the square CLIP input.
        split: ``official`` splits where a dataset has one, or CoOp's ``split_zhou_*.json`` splits;
            Caltech101, EuroSAT and SUN397 always use CoOp's (they have no official split).
        train_transform: training images through open_clip's training preprocessing (``clip_train``:
            random resized crop, scale 0.9-1) or the evaluation transform (``eval``: resize, centre crop).
    """

    option = "data.source.datasets"

    def __init__(
        self,
        datasets: list[str],
        root: str | None = None,
        image_size: int = 224,
        split: SplitChoice = "official",
        train_transform: TrainTransform = "clip_train",
    ) -> None:
        unknown = [d for d in datasets if d not in BENCHMARKS]
        if not datasets or unknown:
            raise ConfigError(f"{self.option} must list datasets from {sorted(BENCHMARKS)}; got unknown {unknown}")
        if len(set(datasets)) != len(datasets):
            raise ConfigError(f"{self.option} lists a dataset twice: {datasets}")
        if image_size < 1:
            raise ConfigError(f"data.source.image_size must be positive, got {image_size}")
        if split not in ("official", "coop"):
            raise ConfigError(f"data.source.split must be 'official' or 'coop', got {split!r}")
        self.datasets, self.root, self.image_size, self.split = list(datasets), root, image_size, split
        self.train_transform = _check_train_transform(train_transform)

    @property
    def num_tasks(self) -> int:
        return len(self.datasets)

    def build(self) -> list[Task]:
        root = resolve_root(self.root)
        tasks = [get_benchmark(d).load(root, self.image_size, self.split) for d in self.datasets]
        if self.train_transform == "clip_train":
            for task in tasks:
                use_train_transform(task.train, ClipTrainTransform(self.image_size))
        return tasks


def _check_train_transform(value: str) -> TrainTransform:
    if value not in ("clip_train", "eval"):
        raise ConfigError(f"data.source.train_transform must be 'clip_train' or 'eval', got {value!r}")
    return value  # type: ignore[return-value]


class XTailTasks(BenchmarkTasks):
    """X-TAIL: Aircraft, Caltech101, DTD, EuroSAT, Flowers, Food101, MNIST, OxfordPet, StanfordCars, SUN397.

    Args:
        root: The data root; None reads the ``MORAM_DATA`` environment variable.
        image_size: Side of the square CLIP input.
        split: ``coop`` (default: CoOp's few-shot splits, as CLIP few-shot work prepares these domains) or
            ``official``.
        datasets: A sub-sequence of the ten domains (default: all ten, in the protocol's order).
        train_transform: ``clip_train`` (default: open_clip's training preprocessing, as the official
            X-TAIL trainer) or ``eval`` (the evaluation transform for training too).

    Example:
        >>> XTailTasks(root="/data").num_tasks
        10
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 224,
        split: SplitChoice = "coop",
        datasets: list[str] | None = None,
        train_transform: TrainTransform = "clip_train",
    ) -> None:
        super().__init__(list(XTAIL_ORDER if datasets is None else datasets), root, image_size, split, train_transform)


class MTILTasks(BenchmarkTasks):
    """MTIL: eleven datasets in order ``I`` or ``II`` (ZSCL's Multi-domain Task-Incremental Learning).

    Args:
        order: ``I`` (Aircraft, Caltech101, CIFAR100, DTD, EuroSAT, Flowers, Food, MNIST, OxfordPet, Cars,
            SUN397) or ``II`` (Cars, Food, MNIST, OxfordPet, Flowers, SUN397, Aircraft, Caltech101, DTD,
            EuroSAT, CIFAR100).
        root: The data root; None reads the ``MORAM_DATA`` environment variable.
        image_size: Side of the square CLIP input.
        split: ``official`` (default) or ``coop`` (see :class:`BenchmarkTasks`).
        datasets: Override the order's list (e.g. a shorter run); default: the order's eleven datasets.
        train_transform: ``clip_train`` (default: open_clip's training preprocessing, as MoE-Adapters4CL's
            MTIL trainer) or ``eval``.

    Example:
        >>> MTILTasks(order="II", root="/data").datasets[:3]
        ['stanford_cars', 'food101', 'mnist']
    """

    def __init__(
        self,
        order: Literal["I", "II"] = "I",
        root: str | None = None,
        image_size: int = 224,
        split: SplitChoice = "official",
        datasets: list[str] | None = None,
        train_transform: TrainTransform = "clip_train",
    ) -> None:
        if order not in MTIL_ORDERS:
            raise ConfigError(f"data.source.order must be one of {sorted(MTIL_ORDERS)}, got {order!r}")
        self.order = order
        names = list(MTIL_ORDERS[order] if datasets is None else datasets)
        super().__init__(names, root, image_size, split, train_transform)


class CIFAR100CILTasks:
    """Class-incremental CIFAR-100: ``100 / steps`` classes per task over a seeded class order.

    The class order is ``numpy.random.RandomState(class_order_seed).permutation(100)``; 1993 gives the
    order of iCaRL / PyCIL. Labels are task-local (``classnames`` of each task), and the union of all
    tasks' class names is CIFAR-100's 100 classes (score with ``model.backbone.protocol: task_agnostic``).

    Args:
        steps: Number of tasks; a divisor of 100 (10, 20 and 50 are the usual ones).
        class_order_seed: Seed of the class order.
        root: The data root holding ``cifar-100-python/``; None reads ``MORAM_DATA``.
        image_size: Side of the square CLIP input (32x32 images are upsampled bilinearly for testing).
        train_transform: ``clip_train`` (default: open_clip's training preprocessing, bicubic random
            resized crop of the 32x32 image) or ``eval`` (the test transform).

    Example:
        >>> CIFAR100CILTasks(steps=20, root="/data").num_tasks
        20
    """

    def __init__(
        self,
        steps: int = 10,
        class_order_seed: int = 1993,
        root: str | None = None,
        image_size: int = 224,
        train_transform: TrainTransform = "clip_train",
    ) -> None:
        if steps < 1 or 100 % steps:
            raise ConfigError(f"data.source.steps must divide CIFAR-100's 100 classes (e.g. 10, 20, 50), got {steps}")
        if image_size < 1:
            raise ConfigError(f"data.source.image_size must be positive, got {image_size}")
        self.steps, self.class_order_seed, self.root, self.image_size = steps, class_order_seed, root, image_size
        self.train_transform = _check_train_transform(train_transform)

    @property
    def num_tasks(self) -> int:
        return self.steps

    @property
    def class_order(self) -> list[int]:
        return [int(c) for c in np.random.RandomState(self.class_order_seed).permutation(100)]

    def build(self) -> list[Task]:
        base, how = BENCHMARKS["cifar100"].locate(resolve_root(self.root))
        names = official.cifar100_names(base, how)
        if len(names) != len(CIFAR100):
            raise DatasetCorruptError(f"CIFAR-100: '{base / 'meta'}' has {len(names)} fine label names, not 100")
        arrays = [official.cifar100_arrays(base, split, how) for split in ("train", "test")]
        transform = ClipImageTransform(self.image_size)
        train: Any = ClipTrainTransform(self.image_size) if self.train_transform == "clip_train" else transform
        order, per_task = self.class_order, 100 // self.steps
        tasks = []
        for t in range(self.steps):
            classes = order[t * per_task : (t + 1) * per_task]
            local = np.full(100, -1, dtype=np.int64)
            local[classes] = np.arange(per_task)
            sets = []
            for (images, labels), view in zip(arrays, (train, transform), strict=True):
                keep = np.isin(labels, classes)
                sets.append(ImageTensorDataset(torch.from_numpy(images[keep]), torch.from_numpy(local[labels[keep]]),
                                               transform=view))
            task = Task(f"cifar100 step {t + 1}", [CIFAR100[c] for c in classes], TEMPLATES["cifar100"], *sets)
            tasks.append(task.check())
        return tasks
