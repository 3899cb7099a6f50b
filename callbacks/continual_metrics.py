"""Fill the accuracy matrix of a continual-learning run from validation, and save it after every task.

Works with any LightningModule and any datamodule, under two small contracts (:mod:`moram.protocols`):

* the datamodule is a :class:`~moram.protocols.TaskStream` (``task_names``, ``num_tasks``,
  ``current_task``: the 0-based index of the task being trained);
* during validation the module logs its score (percent, 0–100) on every task ``name`` under
  :func:`~moram.protocols.score_key`, e.g. ``self.log(score_key(name), acc, add_dataloader_idx=False)``
  with one validation dataloader per task.

Row ``i`` of the matrix is the validation run that ends while task ``i`` is trained (the datamodule's
``current_task``): with one epoch per task, the end-of-epoch validation; with one ``fit`` per task,
the same. The zero-shot row is the sanity check, when it is a full validation pass before any
training: ``Trainer(num_sanity_val_steps=-1)``; with a partial or no sanity check it stays empty.

Reading the sanity check's scores (checked on Lightning 2.6.6): outside the sanity check,
``trainer.callback_metrics`` holds the epoch values of the pass that just ran when
``on_validation_end`` is called. During the sanity check it does not for values logged from one of
several dataloaders (``dataloader_idx`` set), the usual way of logging one score per task: Lightning
moves those into ``callback_metrics`` per dataloader only outside the sanity check. They are still
in the trainer's result collection until ``on_validation_end`` returns, so the sanity check's
scores are computed from there (:func:`_sanity_check_metrics`: a private field of the trainer, kept
because no public hook gives them; ``tests/test_lightning_internals.py`` fails when Lightning changes it).

A run resumed from a checkpoint written on a task's last batch: Lightning counts that task's
validation as done and skips it, so its row would be missing. When the module can score every task
on demand (:class:`~moram.protocols.TaskEvaluator`, as :class:`moram.module.ContinualModule` does),
the callback asks it for that row in ``on_train_start``, before the next task changes the model.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from moram.callbacks.trackers import log_figure, takes_figures
from moram.errors import CheckpointError, ConfigError
from moram.metrics import AccuracyMatrix, format_table, heatmap_figure, save_all, scalar_metrics, summary
from moram.protocols import SCORE_PREFIX, TaskEvaluator, TaskStream, current_task

METRIC_PREFIX = "continual/"

# The scores of a resumed run's skipped validation, computed once per trainer and step, shared by every
# metrics callback (one per view) so the module evaluates once.
_RESUME_SCORES: weakref.WeakKeyDictionary[pl.Trainer, tuple[int, dict[str, float]]] = weakref.WeakKeyDictionary()


class ContinualMetricsCallback(Callback):
    """Record the accuracy matrix ``R[i, j]`` during ``fit`` and write it out after every row.

    After every row, on global rank zero, ``continual_metrics.json`` (:func:`moram.metrics.summary`) and
    ``continual_metrics.csv`` are (re)written into ``output_dir`` (``accuracy_matrix.png`` at most every
    ``heatmap_interval`` seconds, and always when the fit ends or fails), and
    the scalar metrics are sent to the trainer's loggers as ``continual/<name>`` (``acc``, ``bwt``,
    ``fwt``, ``forgetting``, ``op``, ``trace_bwt`` and the means of ``transfer``, ``average``,
    ``last``). ``trainer.validate`` outside ``fit`` records nothing; it prints the scores.

    Args:
        output_dir: where to write the files; ``None`` means ``trainer.log_dir`` (the logger's
            version folder, or ``default_root_dir`` without a logger).
        heatmap: also draw ``accuracy_matrix.png``.

    Example::

        trainer = Trainer(max_epochs=dm.num_tasks, reload_dataloaders_every_n_epochs=1,
                          num_sanity_val_steps=-1, callbacks=[ContinualMetricsCallback()])
        trainer.fit(module, datamodule=dm)
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        heatmap: bool = True,
        score_prefix: str = SCORE_PREFIX,
        name: str = "continual_metrics",
        heatmap_interval: float = 30.0,
    ) -> None:
        """Create the callback.

        Args:
            output_dir: where the files go; None uses the trainer's log directory.
            heatmap: also write the heatmap PNG.
            heatmap_interval: seconds between two redraws of the PNG while the run goes on (drawing takes
                about 0.1 s; the JSON and CSV are rewritten after every row); it is always drawn when
                the fit ends or stops on an error. 0 redraws it after every row.
            score_prefix: the module logs task ``t``'s score as ``score_prefix + t`` (default
                :func:`moram.protocols.score_key`); another prefix tracks another view of the scores.
            name: stem of the files (``<name>.json``, ``<name>.csv``) and of the logged metrics; the
                default writes ``continual_metrics.json`` and ``accuracy_matrix.png``.
        """
        self.output_dir = output_dir
        self.heatmap = heatmap
        self.heatmap_interval = heatmap_interval
        self._drawn_at: float | None = None  # time.monotonic() of the last heatmap drawn
        self.score_prefix = score_prefix
        self.name = name
        self.task_names: list[str] | None = None
        self.zero_shot: list[float] | None = None
        self.rows: dict[int, list[float]] = {}
        self.json_path: Path | None = None
        self.finished = False
        self._dir: Path | None = None
        self._view = ""
        self._restored = False  # load_state_dict ran: this fit resumes a checkpoint holding the matrix so far

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)  # several views can track side by side

    def _key(self, task_name: str) -> str:
        return f"{self.score_prefix}{task_name}"

    def _save(self, final: bool = False) -> Path:
        assert self._dir is not None, "set in setup()"
        default = self.name == "continual_metrics"
        now = time.monotonic()
        draw = self.heatmap and (final or self._drawn_at is None or now - self._drawn_at >= self.heatmap_interval)
        if draw:
            self._drawn_at = now
        # "finished": false while the run goes on or after it was killed, so a partial file never reads as a result
        paths = save_all(self._dir, self.matrix, heatmap=draw, stem=self.name,
                         heatmap_name="accuracy_matrix.png" if default else f"{self.name}_matrix.png",
                         view=self._view, extra={"finished": self.finished})
        return paths["json"]

    # ----------------------------------------------------------------------------------- the matrix

    @property
    def matrix(self) -> AccuracyMatrix:
        """The matrix so far: the zero-shot row and the rows ``0..k-1`` recorded without a gap."""
        if self.task_names is None:
            raise RuntimeError("ContinualMetricsCallback has no task names yet: it learns them in setup()")
        k = 0
        while k in self.rows:
            k += 1
        return AccuracyMatrix(list(self.task_names), [self.rows[i] for i in range(k)], self.zero_shot)

    def summary(self) -> dict[str, Any]:
        """:func:`moram.metrics.summary` of :attr:`matrix`."""
        return summary(self.matrix)

    def record(self, row: int | None, scores: dict[str, float]) -> None:
        """Store ``scores`` (one per task name) as row ``row``, or as the zero-shot row when ``row`` is None."""
        names = self._require_names()
        if set(scores) != set(names):
            raise ValueError(f"scores must have one entry per task {names}, got {sorted(scores)}")
        values = [float(scores[n]) for n in names]
        if row is None:
            self.zero_shot = values
        elif 0 <= row < len(names):
            self.rows[row] = values
        else:
            raise ConfigError(
                f"row {row} is not a task index in [0, {len(names)}): check the datamodule's current_task "
                "and that Trainer(max_epochs=...) is at most its num_tasks"
            )

    # ------------------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stream = _task_stream(trainer)
        if self.task_names is None:
            self.task_names = list(stream.task_names)
        # trainer.log_dir is a collective (it broadcasts), so resolve it here on every rank
        self._dir = Path(self.output_dir) if self.output_dir is not None else Path(trainer.log_dir or ".")
        view = self.name.removeprefix("continual_metrics").strip("_") or str(getattr(pl_module, "protocol", ""))
        self._view = view.replace("_", "-")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.zero_shot is None and not self.rows:
            rank_zero_info(
                "ContinualMetricsCallback: no zero-shot row (FWT will be empty); run a full validation before "
                "training with Trainer(num_sanity_val_steps=-1) to get one."
            )
        self._fill_row_skipped_by_resume(trainer, pl_module)

    def _fill_row_skipped_by_resume(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the finished task's row now if the run resumed from a checkpoint written on its last batch.

        Lightning then counts that task's validation as done and skips it, and the checkpoint was
        written before it ran, so the restored matrix lacks the row. The model is still exactly as it
        was at the end of that task (atoms are consolidated when the next task starts), so the module's
        own evaluation (:meth:`~moram.protocols.TaskEvaluator.evaluate_tasks`) gives the values an
        uninterrupted run records. Only public hooks and attributes are used.
        """
        finished = current_task(trainer) - 1
        if not self._restored or finished < 0 or finished in self.rows or not _validates_after(trainer, finished):
            return
        if not isinstance(pl_module, TaskEvaluator):
            rank_zero_warn(
                f"ContinualMetricsCallback: the run resumed after task {finished} ended, whose validation Lightning "
                f"skips; {type(pl_module).__name__} has no evaluate_tasks() (moram.protocols.TaskEvaluator), so "
                "that row stays empty."
            )
            return
        step, scores = _RESUME_SCORES.get(trainer, (-1, {}))
        if step != trainer.global_step:
            rank_zero_info(f"ContinualMetricsCallback: resumed after task {finished} ended; evaluating to fill its row")
            scores = pl_module.evaluate_tasks()  # every rank: the scores are synced across ranks
            _RESUME_SCORES[trainer] = (trainer.global_step, scores)
        names = self._require_names()
        missing = [self._key(n) for n in names if self._key(n) not in scores]
        if missing:
            raise KeyError(f"ContinualMetricsCallback: {type(pl_module).__name__}.evaluate_tasks() gave no {missing}")
        row = {n: float(scores[self._key(n)]) for n in names}
        self.record(finished, trainer.strategy.broadcast(row, src=0))
        self._publish(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stream = _task_stream(trainer)
        if list(stream.task_names) != self._require_names():
            raise CheckpointError(
                f"the datamodule's tasks {list(stream.task_names)} differ from the recorded matrix's "
                f"{self.task_names} (restored from a checkpoint of another task sequence?)"
            )
        scores = self._read_scores(trainer)  # in the sanity check too: a module that logs no scores fails early
        if scores is None:
            return
        if trainer.sanity_checking:
            if not self._is_zero_shot_pass(trainer):
                return
            row = None
        elif trainer.state.fn == TrainerFn.FITTING:
            row = current_task(trainer)  # the task being trained (validated twice during a task: the last pass wins)
        else:
            rank_zero_info("ContinualMetricsCallback (not recorded outside fit): " + _format_scores(scores))
            return
        # the scores rank zero saw, on every rank, so every rank holds the same matrix
        self.record(row, trainer.strategy.broadcast(scores, src=0))
        self._publish(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.task_names is None:
            return
        self.finished = self.matrix.num_trained == len(self.task_names) and not trainer.interrupted
        if trainer.is_global_zero and (self.rows or self.zero_shot is not None):
            self.json_path = self._save(final=True)  # now with "finished": true, and the heatmap drawn
        table = format_table(self.summary())
        view = f", {self._view}" if self._view else ""
        rank_zero_info(f"Continual-learning metrics (scores in %{view}):\n{table}\nSaved to {self.json_path}")
        gaps = [i for i in range(max(self.rows, default=-1)) if i not in self.rows]
        if gaps:
            rank_zero_warn(
                f"ContinualMetricsCallback: no scores were recorded after tasks {gaps}, so the matrix stops "
                "before them; run a validation pass at those task boundaries (record() fills a row)."
            )

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Draw the heatmap of the rows recorded so far (the JSON and CSV are current already)."""
        if trainer.is_global_zero and self._dir is not None and self.task_names is not None and (
            self.rows or self.zero_shot is not None
        ):
            self.json_path = self._save(final=True)

    # --------------------------------------------------------------------------------- resume

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"task_names": self.task_names, "zero_shot": self.zero_shot, "rows": dict(self.rows)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.task_names = state_dict.get("task_names", self.task_names)
        self.zero_shot = state_dict.get("zero_shot", self.zero_shot)
        self.rows = {int(i): [float(v) for v in row] for i, row in state_dict.get("rows", self.rows).items()}
        self._restored = True

    # -------------------------------------------------------------------------------- helpers

    def _require_names(self) -> list[str]:
        if self.task_names is None:
            raise RuntimeError("ContinualMetricsCallback has no task names yet: it learns them in setup()")
        return self.task_names

    def _is_zero_shot_pass(self, trainer: pl.Trainer) -> bool:
        # a resumed or second fit has rows already: its sanity check is not the model before training
        if self.zero_shot is not None or self.rows or trainer.global_step > 0:
            return False
        if list(trainer.num_sanity_val_batches) != list(trainer.num_val_batches):
            rank_zero_warn(
                f"ContinualMetricsCallback: the sanity check ran {trainer.num_sanity_val_batches} of "
                f"{trainer.num_val_batches} validation batches, so it is not recorded as the zero-shot row; "
                "set Trainer(num_sanity_val_steps=-1) for a full pass."
            )
            return False
        return True

    def _read_scores(self, trainer: pl.Trainer) -> dict[str, float] | None:
        metrics = dict(trainer.callback_metrics)
        names = self._require_names()
        if trainer.sanity_checking:
            extra = _sanity_check_metrics(trainer)
            if extra is None and any(self._key(n) not in metrics for n in names):
                return None  # Lightning's internals changed (warned): no zero-shot row rather than a crash
            metrics.update(extra or {})
        missing = [self._key(n) for n in names if self._key(n) not in metrics]
        if missing:
            raise KeyError(
                f"ContinualMetricsCallback: no validation score logged under {missing}. In validation, log each "
                "task's score (0-100) with self.log(moram.protocols.score_key(task_name), score, "
                "add_dataloader_idx=False); see moram.protocols."
            )
        return {n: float(metrics[self._key(n)]) for n in names}

    def _publish(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        matrix = self.matrix
        if not trainer.sanity_checking:
            prefix = METRIC_PREFIX if self.name == "continual_metrics" else f"{self.name}/"
            scalars = {prefix + k: v for k, v in scalar_metrics(summary(matrix)).items()}
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
            self._log_figure(trainer, prefix + "accuracy_matrix", matrix)
        self.json_path = self._save()

    def _log_figure(self, trainer: pl.Trainer, tag: str, matrix: AccuracyMatrix) -> None:
        """The matrix so far as a figure, to the loggers that store images (:mod:`moram.callbacks.trackers`)."""
        if not self.heatmap or not any(takes_figures(logger) for logger in trainer.loggers):
            return
        figure = heatmap_figure(matrix, self._view)
        log_figure(trainer, tag, figure, trainer.global_step)


def _task_stream(trainer: pl.Trainer) -> TaskStream:
    datamodule = getattr(trainer, "datamodule", None)
    missing = [a for a in ("task_names", "num_tasks", "current_task") if not hasattr(datamodule, a)]
    if datamodule is None or missing:
        raise TypeError(
            f"ContinualMetricsCallback needs trainer.datamodule to be a moram.protocols.TaskStream; "
            f"{type(datamodule).__name__} lacks {missing}. Pass trainer.fit(model, datamodule=...) with a "
            "datamodule that has task_names, num_tasks and current_task."
        )
    return datamodule


def _sanity_check_metrics(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The epoch values logged during the sanity check, as ``callback_metrics`` would hold them outside it.

    Lightning 2.x keeps them in ``trainer._results``; its ``metrics(on_step=False)`` yields the
    values of one dataloader at a time (``results.dataloader_idx``), as Lightning itself does at each
    dataloader's end. Computing them is a collective where ``sync_dist=True``; every rank runs it.
    ``None`` (with a warning) when those internals are not there.
    """
    results: Any = getattr(trainer, "_results", None)
    try:
        indices = {metric.meta.dataloader_idx for metric in results.values()}
        saved, metrics = results.dataloader_idx, {}
        try:
            for idx in sorted(indices, key=lambda i: -1 if i is None else i):
                results.dataloader_idx = idx
                metrics.update(results.metrics(False)["callback"])
        finally:
            results.dataloader_idx = saved
    except AttributeError as err:
        rank_zero_warn(f"ContinualMetricsCallback: cannot read the sanity check's scores ({err}); no zero-shot row.")
        return None
    return metrics


def _validates_after(trainer: pl.Trainer, task: int) -> bool:
    """Whether ``fit`` runs a full validation pass at the end of task (epoch) ``task`` (public Trainer settings)."""
    full = isinstance(trainer.limit_val_batches, float) and trainer.limit_val_batches == 1.0
    every = trainer.check_val_every_n_epoch
    return bool(trainer.enable_validation) and full and (every is None or (task + 1) % every == 0)


def _format_scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in scores.items())
