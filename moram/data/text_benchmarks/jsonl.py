r"""Your own language-model tasks, from JSON Lines files: the simplest way to bring a text stream.

Layout (one folder per task under a root)::

    <root>/<task>/train.jsonl     one {"prompt": ..., "answer": ...} object per line
    <root>/<task>/test.jsonl      the same
    <root>/<task>/task.json       optional: {"metric": "rouge_l", "max_new_tokens": 64}

A line may also carry a ``"source"`` string, the text SARI compares against (needed by ``sari``); blank
lines are skipped. The prompt is given to the model verbatim and the answer is what it must generate, so
put any separator (``"\nAnswer:"``, a chat template's turn) in the prompt. Tasks run in the order of
``tasks``, or, without it, of their folder names sorted. A task's metric is ``metrics[task]`` if given,
else its ``task.json``'s ``"metric"``, else ``default_metric``; metrics are those of
:data:`moram.data.text.TEXT_METRICS`.

Without a root, ``files`` maps each task to its files directly, e.g. in a config::

    files:
      summaries: {train: /data/sum/train.jsonl, test: /data/sum/test.jsonl, metric: rouge_l}
      qa: {train: /data/qa/train.jsonl, test: /data/qa/test.jsonl}

(the ``metric`` and ``max_new_tokens`` keys are optional, as in ``task.json``). A ``.json`` file holding
one JSON list of objects is read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moram.data.benchmarks import DatasetCorruptError
from moram.data.text import TEXT_METRICS, TextDataset, TextTask
from moram.data.text_benchmarks._io import (
    check_limits,
    read_json,
    read_records,
    require_dir,
    require_file,
    subsample,
)
from moram.errors import ConfigError, DataError

LAYOUT = (
    "<root>/<task>/train.jsonl and <root>/<task>/test.jsonl, one {\"prompt\": ..., \"answer\": ...} object per "
    "line, and optionally <root>/<task>/task.json with {\"metric\": ..., \"max_new_tokens\": ...}"
)
_SETTINGS = ("metric", "max_new_tokens")


class JsonlTasks:
    """Text tasks from JSON Lines files, in a folder per task (``root``) or listed one by one (``files``).

    Args:
        root: The folder holding one folder per task (see the module docstring).
        tasks: Task names in stream order; None: every task folder of ``root`` (sorted), or every key of ``files``.
        files: Instead of ``root``: task name → ``{"train": path, "test": path}`` with optional ``metric``
            and ``max_new_tokens``.
        metrics: Task name → metric, overriding ``task.json``.
        default_metric: The metric of a task that names none.
        max_train: Training examples kept per task (a seeded random subset in file order); None: all.
        max_test: Test examples kept per task, likewise.
        seed: Seed of the subsets.
        max_new_tokens: Generation budget of tasks that set none; None: the module's.

    Example:
        >>> JsonlTasks(files={"copy": {"train": "a.jsonl", "test": "b.jsonl"}}).num_tasks
        1
    """

    benchmark = "JSON Lines tasks"

    def __init__(
        self,
        root: str | None = None,
        tasks: list[str] | None = None,
        files: dict[str, dict[str, Any]] | None = None,
        metrics: dict[str, str] | None = None,
        default_metric: str = "exact_match",
        max_train: int | None = None,
        max_test: int | None = None,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> None:
        if (root is None) == (files is None):
            raise ConfigError(f"give exactly one of data.source.root or data.source.files; expected layout: {LAYOUT}")
        for name, metric in {**(metrics or {}), "default_metric": default_metric}.items():
            if metric not in TEXT_METRICS:
                raise DataError(f"metric {metric!r} of {name!r} is not one of {list(TEXT_METRICS)}")
        if files is not None:
            self._check_files(files)
        if tasks is not None:
            if not tasks or len(set(tasks)) != len(tasks):
                raise ConfigError(f"data.source.tasks must be non-empty with no repeats, got {tasks}")
            if files is not None and set(tasks) - set(files):
                raise ConfigError(f"data.source.tasks {sorted(set(tasks) - set(files))} are not keys of files")
        check_limits(max_train, max_test)
        self.root, self.tasks, self.files, self.metrics = root, tasks, files, dict(metrics or {})
        self.default_metric, self.max_train, self.max_test = default_metric, max_train, max_test
        self.seed, self.max_new_tokens = seed, max_new_tokens

    @staticmethod
    def _check_files(files: dict[str, dict[str, Any]]) -> None:
        if not files:
            raise ConfigError("data.source.files is empty")
        for task, entry in files.items():
            keys = set(entry) if isinstance(entry, dict) else set()
            if not isinstance(entry, dict) or not {"train", "test"} <= keys or keys - {"train", "test", *_SETTINGS}:
                raise ConfigError(
                    f"data.source.files[{task!r}] must be a mapping with 'train' and 'test' paths and optionally "
                    f"{list(_SETTINGS)}; got {entry!r}"
                )

    def task_names(self) -> list[str]:
        """The tasks in stream order (lists the root's folders when ``tasks`` and ``files`` are not given)."""
        if self.tasks is not None:
            return list(self.tasks)
        if self.files is not None:
            return list(self.files)
        root = require_dir(self.benchmark, Path(str(self.root)).expanduser(), LAYOUT)
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise DataError(f"{self.benchmark}: '{root}' has no task folders. Expected layout: {LAYOUT}")
        return names

    @property
    def num_tasks(self) -> int:
        return len(self.task_names())

    def build(self) -> list[TextTask]:
        return [self._task(name) for name in self.task_names()]

    def _task(self, name: str) -> TextTask:
        if self.files is not None:
            entry = self.files[name]
            train_path, test_path = Path(entry["train"]).expanduser(), Path(entry["test"]).expanduser()
            settings = {k: v for k, v in entry.items() if k in _SETTINGS}
        else:
            folder = require_dir(self.benchmark, Path(str(self.root)).expanduser() / name, LAYOUT)
            train_path, test_path = folder / "train.jsonl", folder / "test.jsonl"
            settings = self._task_json(folder / "task.json")
        metric = self.metrics.get(name, settings.get("metric", self.default_metric))
        max_new_tokens = settings.get("max_new_tokens", self.max_new_tokens)
        train = self._split(train_path, self.max_train, f"{name}/train")
        test = self._split(test_path, self.max_test, f"{name}/test")
        return TextTask(name, train, test, metric=metric, max_new_tokens=max_new_tokens).check()

    def _task_json(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {}
        settings = read_json(self.benchmark, path)
        if not isinstance(settings, dict) or set(settings) - set(_SETTINGS):
            raise DatasetCorruptError(
                f"{self.benchmark}: '{path}' must be a JSON object with keys among {list(_SETTINGS)}, got {settings!r}"
            )
        return settings

    def _split(self, path: Path, limit: int | None, salt: str) -> TextDataset:
        records = read_records(self.benchmark, require_file(self.benchmark, path, LAYOUT))
        data = TextDataset(records, origin=str(path))  # checks every example, not only the kept ones
        return TextDataset(subsample(data.examples, limit, self.seed, salt), origin=str(path))
