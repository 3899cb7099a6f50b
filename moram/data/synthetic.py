"""A tiny in-memory task stream for tests and examples: separable random images, no files."""

from __future__ import annotations

import torch

from moram.data.sampler import mix_seed
from moram.data.tasks import Task
from moram.data.transforms import ImageTensorDataset
from moram.errors import ConfigError


class SyntheticTasks:
    """``num_tasks`` tasks of ``classes_per_task`` classes; each class is a fixed random pattern plus noise.

    Args:
        num_tasks: Number of tasks.
        classes_per_task: Classes in each task.
        samples_per_class: Training samples per class (the test set has as many, with fresh noise).
        image_size: Side of the square (3, S, S) images.
        seed: Seed of the patterns and the noise.

    Example:
        >>> tasks = SyntheticTasks(num_tasks=2, image_size=4).build()
        >>> [t.name for t in tasks], len(tasks[0].train), tuple(tasks[0].train[0][0].shape)
        (['synthetic 0', 'synthetic 1'], 16, (3, 4, 4))
    """

    def __init__(
        self,
        num_tasks: int = 2,
        classes_per_task: int = 2,
        samples_per_class: int = 8,
        image_size: int = 16,
        seed: int = 0,
    ) -> None:
        for option, value in (
            ("num_tasks", num_tasks),
            ("classes_per_task", classes_per_task),
            ("samples_per_class", samples_per_class),
            ("image_size", image_size),
        ):
            if value < 1:
                raise ConfigError(f"data.source.{option} must be a positive integer, got {value}")
        self._num_tasks, self.classes_per_task = num_tasks, classes_per_task
        self.samples_per_class, self.image_size, self.seed = samples_per_class, image_size, seed

    @property
    def num_tasks(self) -> int:
        return self._num_tasks

    def _split(self, patterns: torch.Tensor, generator: torch.Generator) -> ImageTensorDataset:
        labels = torch.arange(self.classes_per_task).repeat_interleave(self.samples_per_class)  # (C·n,)
        noise = 0.5 * torch.randn(len(labels), *patterns.shape[1:], generator=generator)
        return ImageTensorDataset(patterns[labels] + noise, labels)

    def build(self) -> list[Task]:
        tasks = []
        for t in range(self.num_tasks):
            generator = torch.Generator().manual_seed(mix_seed(self.seed, "synthetic", t))
            size = (self.classes_per_task, 3, self.image_size, self.image_size)
            patterns = torch.randn(size, generator=generator)  # (C, 3, S, S)
            names = [f"pattern {t}.{c}" for c in range(self.classes_per_task)]
            train, test = self._split(patterns, generator), self._split(patterns, generator)
            tasks.append(Task(f"synthetic {t}", names, "a photo of a {}.", train, test).check())
        return tasks
