"""A task of the continual-learning stream, and the protocol of anything that builds a task list.

A *task* is one step of the stream: a set of classes with names, the prompt template that turns a
class name into text, and a training and a test set whose items are ``(image, label)`` with the
label an index into the task's own ``classnames``. A *task source* (e.g.
:class:`moram.data.digits.DigitsTasks`) builds the list of tasks; the CLI reads its cheap
``num_tasks`` to size the atom banks before any data is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from moram.errors import DataError


@dataclass
class Task:
    """One task of the stream.

    Attributes:
        name: Unique name of the task, used in logs, metric names and checkpoints.
        classnames: Class names; label ``i`` of either dataset means ``classnames[i]``.
        template: Prompt template with one ``{}`` slot, e.g. ``"a photo of the digit {}."``.
        train: Training set of ``(image (3, H, W) float tensor, label int)`` items.
        test: Test set, same item layout.

    Example:
        >>> from moram.data.transforms import ImageTensorDataset
        >>> data = ImageTensorDataset(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
        >>> task = Task("toy", ["cat", "dog"], "a photo of a {}.", data, data)
        >>> task.check().prompts()
        ['a photo of a cat.', 'a photo of a dog.']
    """

    name: str
    classnames: list[str]
    template: str
    train: Dataset
    test: Dataset

    def prompts(self) -> list[str]:
        """The text prompt of every class, in label order."""
        return [self.template.format(c) for c in self.classnames]

    def check(self) -> Task:
        """Raise ``ValueError`` naming the task if it cannot be trained or evaluated; return ``self``."""
        if not self.classnames:
            raise DataError(f"task {self.name!r} has no class names; its source must give at least one")
        if "{}" not in self.template:
            raise DataError(f"task {self.name!r}: template {self.template!r} has no '{{}}' slot for the class name")
        for split in ("train", "test"):
            data = getattr(self, split)
            if _size(data) == 0:
                what = "training" if split == "train" else "test"
                raise DataError(
                    f"task {self.name!r} has no {what} samples; check the source's options "
                    "(class selection, split fractions, few-shot counts) and the data files"
                )
            labels = getattr(data, "labels", None)
            if isinstance(labels, torch.Tensor) and labels.numel():
                low, high = int(labels.min()), int(labels.max())
                if low < 0 or high >= len(self.classnames):
                    raise DataError(
                        f"task {self.name!r}: {split} labels span {low}..{high} but the task has "
                        f"{len(self.classnames)} class names; labels must index the task's own classes"
                    )
        return self


def _size(data: Dataset) -> int:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return 1  # not sized (iterable): cannot check cheaply


class TaskLike(Protocol):
    """What the stream needs of a task: :class:`Task` (images) and :class:`moram.data.text.TextTask` both fit."""

    name: str
    train: Dataset
    test: Dataset

    def check(self) -> Any:
        """Raise ``ValueError`` naming the task if it cannot be trained or evaluated."""
        ...


@runtime_checkable
class TaskSource(Protocol):
    """Anything that builds the task list; LightningCLI fills it by ``class_path``."""

    @property
    def num_tasks(self) -> int:
        """Number of tasks, known without loading any data (sizes the atom banks)."""
        ...

    def build(self) -> Any:  # Any: jsonargparse matches return annotations exactly when checking the protocol
        """Load the data and return the tasks (a list of :class:`Task` or of :class:`~moram.data.text.TextTask`)."""
        ...


def check_tasks(tasks: Sequence[TaskLike], expected: int | None = None) -> list[Any]:
    """Check every task and that names are unique (and, if given, that there are ``expected`` tasks)."""
    for task in tasks:
        task.check()
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"task names must be unique; repeated: {duplicates}")
    if expected is not None and len(tasks) != expected:
        raise DataError(f"the task source announced {expected} tasks (num_tasks) but built {len(tasks)}")
    if not tasks:
        raise DataError("the task source built no tasks")
    return list(tasks)
