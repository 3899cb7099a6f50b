"""Text tasks for language-model continual learning: prompt/answer examples and a per-task metric.

A :class:`TextTask` is the language-model counterpart of :class:`moram.data.tasks.Task`: the same
task-stream machinery (:class:`moram.data.stream.TaskStreamDataModule`, the task-boundary and
continual-metrics callbacks) serves both. Its datasets hold examples as dicts with a ``prompt``
and an ``answer`` string (and, for SARI, optionally the ``source`` sentence being simplified);
the default collate turns a batch into a dict of lists of strings, tokenised by the LM module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from moram.errors import ConfigError, DataError

#: Per-task scores a text task may name (see :mod:`moram.backbones.lm.metrics`).
TEXT_METRICS = ("accuracy", "choice_accuracy", "exact_match", "rouge_l", "edit_similarity", "sari")


class TextDataset(Dataset):
    """A list of ``{"prompt": str, "answer": str[, "source": str]}`` examples.

    Args:
        examples: The examples; each needs string ``prompt`` and ``answer`` fields.
        origin: Where the examples came from (a file path), named in error messages.

    Example:
        >>> data = TextDataset([{"prompt": "2+2=", "answer": "4"}])
        >>> len(data), data[0]["answer"]
        (1, '4')
    """

    def __init__(self, examples: Iterable[Mapping[str, Any]], origin: str = "<memory>") -> None:
        self.origin = origin
        self.examples: list[dict[str, str]] = []
        for i, example in enumerate(examples):
            for field in ("prompt", "answer"):
                if not isinstance(example.get(field), str):
                    raise DataError(
                        f"{origin}: example {i} has no string {field!r} field (it has {sorted(example)}); "
                        "every example needs 'prompt' and 'answer' strings"
                    )
            item = {"prompt": example["prompt"], "answer": example["answer"]}
            if isinstance(example.get("source"), str):
                item["source"] = example["source"]
            self.examples.append(item)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, str]:
        return self.examples[index]


@dataclass
class TextTask:
    """One task of a language-model stream.

    Attributes:
        name: Unique name of the task (logs, metric names, checkpoints).
        train: Training examples.
        test: Evaluation examples.
        metric: How a generated answer is scored against the reference: one of :data:`TEXT_METRICS`.
        max_new_tokens: Generation budget for this task's answers; None takes the module's setting.
        max_length: Longest training sequence (prompt and answer, in tokens) of this task; a generated
            answer's prompt is cut to ``max_length - max_new_tokens``. None takes the backbone's
            ``max_length``. (TRACE gives MeetingBank 4096 prompt tokens, the other tasks 1024.)

    Example:
        >>> data = TextDataset([{"prompt": "copy: ab =", "answer": "ab"}])
        >>> TextTask("copy", data, data, metric="exact_match").check().name
        'copy'
    """

    name: str
    train: Dataset
    test: Dataset
    metric: str = "exact_match"
    max_new_tokens: int | None = None
    max_length: int | None = None

    def check(self) -> TextTask:
        """Raise ``ValueError`` naming the task if it cannot be trained or evaluated; return ``self``."""
        if self.metric not in TEXT_METRICS:
            raise DataError(f"task {self.name!r}: metric {self.metric!r} is not one of {list(TEXT_METRICS)}")
        for split in ("train", "test"):
            data = getattr(self, split)
            if len(data) == 0:
                origin = getattr(data, "origin", None)
                where = f" ({origin})" if origin else ""
                raise DataError(
                    f"task {self.name!r} has no {'training' if split == 'train' else 'test'} examples{where}; "
                    "check the data files and the source's size options"
                )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"task {self.name!r}: max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"task {self.name!r}: max_length must be at least 2, got {self.max_length}")
        return self
