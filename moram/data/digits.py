"""Class-incremental handwritten digits from scikit-learn's bundled ``load_digits`` (no download).

1,797 grayscale 8×8 images with values 0..16, split once (stratified, seeded) into train and test,
then cut into tasks of ``classes_per_task`` digits each: ``digits 0-1``, ``digits 2-3``, ...
Images are kept small in memory and turned into CLIP tensors on access.
"""

from __future__ import annotations

import torch

from moram.data.tasks import Task
from moram.data.transforms import ClipImageTransform, ImageTensorDataset
from moram.errors import ConfigError

DIGIT_NAMES: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_MAX_VALUE = 16.0  # load_digits' pixel range is 0..16


def _task_name(classes: list[int]) -> str:
    if len(classes) > 1 and classes == list(range(classes[0], classes[-1] + 1)):
        return f"digits {classes[0]}-{classes[-1]}"
    return "digits " + ",".join(str(c) for c in classes)


class DigitsTasks:
    """Tasks of ``classes_per_task`` digits each, from scikit-learn's digits.

    Args:
        classes_per_task: Digits per task; must divide the number of classes in ``class_order``.
        image_size: Side of the square CLIP input (8×8 images are upsampled bilinearly).
        test_fraction: Fraction of each class held out for testing, in (0, 1).
        split_seed: Seed of the stratified train/test split.
        template: Prompt template with one ``{}`` slot for the digit's name.
        class_order: Digits in stream order (a subset is allowed); default ``0..9``.

    Example:
        >>> source = DigitsTasks(classes_per_task=5, image_size=16)
        >>> source.num_tasks, [t.name for t in source.build()]
        (2, ['digits 0-4', 'digits 5-9'])
    """

    def __init__(
        self,
        classes_per_task: int = 2,
        image_size: int = 32,
        test_fraction: float = 0.3,
        split_seed: int = 0,
        template: str = "a photo of the handwritten digit {}.",
        class_order: list[int] | None = None,
    ) -> None:
        order = list(range(10)) if class_order is None else list(class_order)
        if not order or len(set(order)) != len(order) or not set(order) <= set(range(10)):
            raise ConfigError(f"data.source.class_order must list distinct digits from 0..9, got {class_order}")
        if classes_per_task < 1 or len(order) % classes_per_task:
            raise ConfigError(
                f"data.source.classes_per_task ({classes_per_task}) must be a positive divisor of the number of "
                f"classes ({len(order)}), e.g. 1, 2 or 5 for all ten digits"
            )
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"data.source.test_fraction must be in (0, 1), got {test_fraction}")
        if image_size < 1:
            raise ConfigError(f"data.source.image_size must be positive, got {image_size}")
        if "{}" not in template:
            raise ConfigError(f"data.source.template must contain '{{}}' for the class name, got {template!r}")
        self.classes_per_task, self.image_size = classes_per_task, image_size
        self.test_fraction, self.split_seed, self.template = test_fraction, split_seed, template
        self.class_order = order

    @property
    def num_tasks(self) -> int:
        return len(self.class_order) // self.classes_per_task

    def build(self) -> list[Task]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32)  # (1797, 8, 8)
        targets = torch.as_tensor(digits.target, dtype=torch.long)
        train_idx, test_idx = train_test_split(
            range(len(targets)), test_size=self.test_fraction, stratify=digits.target, random_state=self.split_seed
        )
        transform = ClipImageTransform(self.image_size, max_value=DIGITS_MAX_VALUE)
        tasks = []
        for t in range(self.num_tasks):
            classes = self.class_order[t * self.classes_per_task : (t + 1) * self.classes_per_task]
            splits = []
            for idx in (torch.as_tensor(train_idx), torch.as_tensor(test_idx)):
                idx = idx[torch.isin(targets[idx], torch.as_tensor(classes))].sort().values
                label_of = {c: i for i, c in enumerate(classes)}
                labels = torch.tensor([label_of[int(c)] for c in targets[idx]], dtype=torch.long)
                splits.append(ImageTensorDataset(images[idx], labels, transform=transform))
            names = [DIGIT_NAMES[c] for c in classes]
            tasks.append(Task(_task_name(classes), names, self.template, splits[0], splits[1]).check())
        return tasks
