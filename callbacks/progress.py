"""Progress a person can follow: plain lines for logs without a terminal, a per-task bar on a terminal.

A progress bar redraws one line in place, which a log file cannot show. When standard output is
not a terminal, ``moram fit`` adds this callback: it prints one line when a task starts, one every
``every_n_steps`` training steps, and one when a task's training ends::

    [moram] task 2/5 'digits 2-3': started (step 100 of 500)
    [moram] task 2/5 'digits 2-3': step 50/100, loss 0.4120, 12.3 s in this task, 61.0 s in all
    [moram] task 2/5 'digits 2-3': trained (100 steps, 24.1 s)

A resumed run says where it continues (Lightning calls no epoch-start hook when it resumes inside
a task, or right after a task's last batch)::

    [moram] task 3/5 'digits 4-5': resumed at step 50/100 (global step 250)

Only global rank zero prints. Works with any datamodule; task names come from a
:class:`~moram.protocols.TaskStream` when there is one.

On a terminal, ``moram fit`` uses :class:`TaskProgressBar` instead: Lightning's bar, named after the
task (``task 2/5 'digits 2-3'``) and counting that task's steps, with the run's step beside the loss.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from moram.errors import ConfigError
from moram.protocols import current_task


class ProgressLogCallback(Callback):
    """Print a progress line per task and every ``every_n_steps`` steps (see the module docstring).

    Args:
        every_n_steps: steps between two lines within a task (0: task lines only).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 0:
            raise ConfigError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._start = self._task_start = time.monotonic()
        self._task_step0 = 0
        self._announced: int | None = None  # the epoch (task) whose first line was printed

    def _task(self, trainer: pl.Trainer) -> str:
        return task_label(trainer)

    @staticmethod
    @rank_zero_only
    def _print(line: str) -> None:
        print(f"[moram] {line}", flush=True)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._announced = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._task_start, self._task_step0 = time.monotonic(), trainer.global_step
        self._announced = trainer.current_epoch
        total = trainer.estimated_stepping_batches
        self._print(f"{self._task(trainer)}: started (step {trainer.global_step} of {total})")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._announced == trainer.current_epoch:
            return
        if batch_idx == 0:  # resumed right after the previous task's last batch: this task starts now
            self.on_train_epoch_start(trainer, pl_module)
            return
        self._task_start, self._task_step0 = time.monotonic(), trainer.global_step - batch_idx
        self._announced = trainer.current_epoch
        self._print(f"{self._task(trainer)}: resumed at step {batch_idx}/{trainer.num_training_batches} "
                    f"(global step {trainer.global_step})")

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.every_n_steps or (batch_idx + 1) % self.every_n_steps:
            return
        per_task = trainer.num_training_batches
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        shown = f", loss {float(loss):.4f}" if loss is not None else ""
        now = time.monotonic()
        self._print(
            f"{self._task(trainer)}: step {batch_idx + 1}/{per_task}{shown}, "
            f"{now - self._task_start:.1f} s in this task, {now - self._start:.1f} s in all"
        )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.global_step - self._task_step0
        self._print(f"{self._task(trainer)}: trained ({steps} steps, {time.monotonic() - self._task_start:.1f} s)")


def task_label(trainer: pl.Trainer) -> str:
    """``task <i>/<n> '<name>'`` for the task being trained (the epoch when the data is not a task stream)."""
    datamodule: Any = getattr(trainer, "datamodule", None)
    names = list(getattr(datamodule, "task_names", []) or [])
    index = current_task(trainer)
    total = len(names) or trainer.max_epochs or "?"
    name = f" '{names[index]}'" if index < len(names) else ""
    return f"task {index + 1}/{total}{name}"


class TaskProgressBar(TQDMProgressBar):
    """Lightning's progress bar, per task: ``task 2/5 'digits 2-3': 40%|████  | 40/100 [..., step=140/500, ...]``.

    The bar counts the steps of the task being trained; ``step`` is the run's optimizer step out of
    all tasks' (Lightning's ``Epoch N`` would say nothing about which task it is).
    """

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(task_label(trainer))

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.training:
            items = {"step": f"{trainer.global_step}/{trainer.estimated_stepping_batches}", **items}
        return items
