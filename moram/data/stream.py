"""The task stream as a LightningDataModule: one ``fit`` runs every task, one epoch is one task.

``train_dataloader()`` serves task ``trainer.current_epoch`` for its optimizer steps (``steps_per_task``:
one number for every task or a list with one per task; or ``epochs_per_task``, likewise)
(run the Trainer with ``reload_dataloaders_every_n_epochs=1`` and ``max_epochs=num_tasks``);
``val_dataloader()`` / ``test_dataloader()`` return one loader per task, in task order, so
``dataloader_idx`` is the task index. Resuming mid-task is ordinary Lightning resume: the train
loader's position is in the checkpoint (see :class:`moram.data.sampler.TaskLoader`) and this
module's own state (seed, few-shot indices, task names) in ``state_dict()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from moram.data.sampler import ContiguousShardSampler, TaskBatchSampler, TaskLoader, loader_generator, mix_seed
from moram.data.tasks import Task, TaskSource, check_tasks
from moram.errors import ConfigError

SHOTS_FILE = "shot_indices.json"


def _labels_of(data: Dataset) -> torch.Tensor:
    labels = getattr(data, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels.long()
    return torch.tensor([int(data[i][1]) for i in range(len(data))])  # type: ignore[arg-type]


def _schedule(option: str, value: Any, integer: bool) -> list[Any]:
    """``value`` (one number or a list with one per task) as a list, each checked positive."""
    values = list(value) if isinstance(value, Sequence) else [value]
    kind = "integer" if integer else "number"
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0]
    if not values or bad or (integer and any(not isinstance(v, int) for v in values)):
        raise ConfigError(f"data.{option} must be a positive {kind} or a list of them (one per task), got {value}")
    return values


def select_shots(task: Task, shots: int, seed: int, task_index: int) -> list[int]:
    """``shots`` training indices per class of ``task``, drawn with a generator seeded by (seed, task)."""
    if not getattr(task, "classnames", None):
        raise ConfigError(
            f"data.shots draws samples per class, but task {task.name!r} has no classes (a text task); "
            "leave data.shots unset and size text tasks with the source's own options (e.g. max_train)"
        )
    labels = _labels_of(task.train)
    generator = torch.Generator().manual_seed(mix_seed(seed, "shots", task_index))
    chosen: list[int] = []
    for c, name in enumerate(task.classnames):
        members = (labels == c).nonzero().flatten()
        if len(members) < shots:
            raise ConfigError(
                f"task {task.name!r}: class {name!r} has {len(members)} training samples but data.shots is "
                f"{shots}; lower data.shots or leave it unset to train on every sample"
            )
        chosen += members[torch.randperm(len(members), generator=generator)[:shots]].tolist()
    return sorted(chosen)


class TaskStreamDataModule(LightningDataModule):
    """Serves a :class:`~moram.data.tasks.TaskSource` as a continual-learning stream.

    Args:
        source: Builds the tasks, e.g. ``moram.data.digits.DigitsTasks``.
        batch_size: Global training batch size (all processes together); divisible by the world size.
        eval_batch_size: Batch size of each validation / test loader, per process.
        steps_per_task: Optimizer steps (global batches) per task: one number for every task, or a list
            with one number per task in stream order.
        epochs_per_task: Instead of ``steps_per_task``: passes over each task's training set, one number
            or a list with one per task (TRACE's runner gives ``2,1,3,2,1,2,2,3``). A task of n examples
            then trains for ``ceil(epochs * n / batch_size)`` steps: exactly ``epochs * n`` examples are
            drawn (each pass a fresh permutation), so with n not a multiple of the batch a batch may
            straddle two passes. When set, ``steps_per_task`` is ignored.
        shots: If set, train each task on this many samples per class, drawn with ``seed``; the chosen
            indices are kept in ``shot_indices``, in checkpoints and in ``shot_indices.json`` in the
            trainer's log dir.
        seed: Seed of the sample order and the few-shot draw; the global RNG is never used.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        source: TaskSource,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        steps_per_task: int | list[int] = 100,
        shots: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        epochs_per_task: float | list[float] | None = None,
    ) -> None:
        super().__init__()
        for option, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{option} must be a positive integer, got {value}")
        steps = _schedule("steps_per_task", steps_per_task, integer=True)
        epochs = None if epochs_per_task is None else _schedule("epochs_per_task", epochs_per_task, integer=False)
        if shots is not None and shots < 1:
            raise ConfigError(f"data.shots must be a positive integer or null (all samples), got {shots}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.source = source
        self.batch_size, self.eval_batch_size, self.steps_per_task = batch_size, eval_batch_size, steps_per_task
        self.shots, self.seed, self.num_workers = shots, seed, num_workers
        self._num_tasks = int(source.num_tasks)
        if self._num_tasks < 1:
            raise ConfigError(f"data.source announces {self._num_tasks} tasks; it must give at least one")
        for option, values in (("steps_per_task", steps), ("epochs_per_task", epochs)):
            if values is not None and len(values) not in (1, self._num_tasks):
                raise ConfigError(
                    f"data.{option} lists {len(values)} values but the stream has {self._num_tasks} tasks; "
                    "give one number or one per task"
                )
        self.epochs_per_task = epochs_per_task
        self._steps, self._epochs = steps, epochs
        self._tasks: list[Any] | None = None
        self.shot_indices: dict[str, list[int]] | None = None
        self._shots_written = False

    # -- the TaskStream protocol -------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self._num_tasks

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def current_task(self) -> int:
        """``min(trainer.current_epoch, num_tasks - 1)``; 0 without a trainer."""
        if self.trainer is None:
            return 0
        return min(self.trainer.current_epoch, self.num_tasks - 1)

    @property
    def tasks(self) -> list[Any]:
        """The tasks, built (and checked) once on first access."""
        if self._tasks is None:
            self._tasks = check_tasks(self.source.build(), expected=self.num_tasks)
        if self.shots is not None and self.shot_indices is None:
            self.shot_indices = {t.name: select_shots(t, self.shots, self.seed, i) for i, t in enumerate(self._tasks)}
        return self._tasks

    def steps_for(self, task_index: int) -> int:
        """Optimizer steps of task ``task_index`` (from ``epochs_per_task`` when set, else ``steps_per_task``)."""
        if self._epochs is not None:
            epochs = self._epochs[task_index if len(self._epochs) > 1 else 0]
            size = len(self.train_set(task_index))  # type: ignore[arg-type]
            return max(1, math.ceil(epochs * size / self.batch_size - 1e-9))
        return self._steps[task_index if len(self._steps) > 1 else 0]

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.tasks  # noqa: B018 - build and check the tasks now, on every rank
        trainer = self.trainer
        if stage == "fit" and trainer is not None and trainer.max_epochs not in (None, -1, self.num_tasks):
            rank_zero_warn(
                f"Trainer max_epochs is {trainer.max_epochs} but the stream has {self.num_tasks} tasks (one epoch "
                f"per task); epochs past the last task repeat it. Set trainer.max_epochs={self.num_tasks}."
            )

    def train_set(self, task_index: int) -> Dataset:
        """The training set of a task (its few-shot subset when ``shots`` is set)."""
        task = self.tasks[task_index]
        if self.shot_indices is None:
            return task.train
        return Subset(task.train, self.shot_indices[task.name])

    def train_dataloader(self) -> TaskLoader:
        rank, world = self._rank_and_world()
        reload = getattr(self.trainer, "reload_dataloaders_every_n_epochs", 1)  # set by Lightning's data connector
        if reload != 1:
            raise ConfigError(
                "TaskStreamDataModule serves one task per epoch: set trainer.reload_dataloaders_every_n_epochs=1 "
                f"(it is {reload})"
            )
        index = self.current_task
        data = self.train_set(index)
        sampler = TaskBatchSampler(len(data), self.batch_size, self.steps_for(index), self.seed, index, rank, world)  # type: ignore[arg-type]
        self._write_shots()
        return TaskLoader(data, sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def predict_dataloader(self) -> list[DataLoader]:
        """Every task's test set, in task order (``moram predict``)."""
        return self._eval_loaders()

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_names": self.task_names,
            "seed": self.seed,
            "shots": self.shots,
            "shot_indices": self.shot_indices,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("task_names")
        if saved is not None and list(saved) != self.task_names:
            raise ConfigError(
                f"the checkpoint was written for the tasks {list(saved)} but data.source now gives "
                f"{self.task_names}; resume with the same data.source options or start a new run"
            )
        for option in ("seed", "shots"):
            if option in state_dict and state_dict[option] != getattr(self, option):
                rank_zero_warn(
                    f"data.{option} is {getattr(self, option)} but the checkpoint used {state_dict[option]}; "
                    "continuing with the checkpoint's value so the run resumes exactly"
                )
                setattr(self, option, state_dict[option])
        if "shot_indices" in state_dict:
            self.shot_indices = state_dict["shot_indices"]
            self._shots_written = False

    # -- helpers -----------------------------------------------------------------------------
    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _eval_loaders(self) -> list[DataLoader]:
        rank, world = self._rank_and_world()
        return [
            DataLoader(
                task.test,
                batch_size=self.eval_batch_size,
                sampler=ContiguousShardSampler(len(task.test), rank, world),  # type: ignore[arg-type]
                num_workers=self.num_workers,
                generator=loader_generator(),  # not the global RNG (see moram.data.sampler)
            )
            for task in self.tasks
        ]

    def _write_shots(self) -> None:
        """Write the few-shot indices to ``<log_dir>/shot_indices.json`` (once, from global rank 0)."""
        if self.shot_indices is None or self._shots_written or self.trainer is None:
            return
        log_dir = self.trainer.log_dir  # a collective: every rank calls it
        self._shots_written = True
        if log_dir is None or not self.trainer.is_global_zero:
            return
        path = Path(log_dir) / SHOTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"seed": self.seed, "shots": self.shots, "indices": self.shot_indices}
        path.write_text(json.dumps(record, indent=1))
