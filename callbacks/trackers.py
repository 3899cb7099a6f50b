"""What a run sends to the experiment trackers it is configured with, beyond Lightning's scalars.

Lightning already forwards every value logged with ``self.log`` to every configured logger: the
per-task scores of each validation (``eval/score/<task>``, one row of the accuracy matrix per task),
the summary scalars :class:`~moram.callbacks.ContinualMetricsCallback` logs after every row
(``continual/last``, ``continual/average``, ``continual/bwt``, ``continual/forgetting``, ...), and
:class:`~moram.callbacks.AtomUsageCallback`'s routing leakage (``atom_usage/leakage/<task>``). Two
things have no logger-independent API, and this module sends them to the loggers that can take them:

* the **accuracy matrix as a figure** (:func:`log_figure`), after every task: TensorBoard
  ``add_figure`` (an image summary under the tag), MLflow ``log_figure`` (an artifact
  ``<tag>/step_<step>.png``), W&B an image under the key (``trainer/global_step`` beside it);
* the **resolved config** of a ``moram`` command (:class:`TrackerConfigCallback`, the CLI's config
  saver): TensorBoard a text summary ``config``, MLflow the artifact ``config.yaml``, W&B the run's
  config (nested, as in the YAML). ``config.yaml`` in the run folder is written as before.

A CSV logger (the default) takes neither: its run folder already holds ``accuracy_matrix.png`` and
``config.yaml``. Other loggers are left out silently. The tracker packages are optional
(``pip install "moram[trackers]"``); nothing here imports them unless such a logger is configured.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from typing_extensions import override

from moram.run_folder import RunFolderConfig


def log_figure(trainer: pl.Trainer, tag: str, figure: Any, step: int) -> list[str]:
    """Send a matplotlib ``figure`` to every logger of ``trainer`` that stores images (global rank zero only).

    Returns the class names of the loggers that took it. The caller keeps (and closes) the figure.
    """
    if not trainer.is_global_zero:
        return []
    took = []
    for logger in trainer.loggers:
        if _log_figure(logger, tag, figure, step):
            took.append(type(logger).__name__)
    return took


def takes_figures(logger: Logger) -> bool:
    """Whether :func:`log_figure` sends figures to ``logger`` (TensorBoard, MLflow, W&B)."""
    return isinstance(logger, (TensorBoardLogger, MLFlowLogger, WandbLogger))


def _log_figure(logger: Logger, tag: str, figure: Any, step: int) -> bool:
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_figure(tag, figure, global_step=step, close=False)
        logger.experiment.flush()
    elif isinstance(logger, MLFlowLogger):
        if logger.run_id is None:  # pragma: no cover - MLFlowLogger creates its run on first use
            return False
        logger.experiment.log_figure(logger.run_id, figure, f"{tag}/step_{step:07d}.png")
    elif isinstance(logger, WandbLogger):
        import wandb

        logger.experiment.log({tag: wandb.Image(figure), "trainer/global_step": step})
    else:
        return False
    return True


def log_config(trainer: pl.Trainer, config: dict[str, Any], text: str) -> list[str]:
    """Send a run's resolved ``config`` (as a dict and as YAML ``text``) to every logger that keeps one.

    Global rank zero only; returns the class names of the loggers that took it.
    """
    if not trainer.is_global_zero:
        return []
    took = []
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # TensorBoard renders text summaries as Markdown: indented lines are a code block
            text_md = "\n".join("    " + line for line in text.splitlines())
            logger.experiment.add_text("config", text_md, trainer.global_step)
            logger.experiment.flush()
        elif isinstance(logger, MLFlowLogger):
            if logger.run_id is None:  # pragma: no cover
                continue
            logger.experiment.log_text(logger.run_id, text, "config.yaml")
        elif isinstance(logger, WandbLogger):
            logger.experiment.config.update({"config": config}, allow_val_change=True)
        else:
            continue
        took.append(type(logger).__name__)
    return took


class TrackerConfigCallback(RunFolderConfig):
    """The ``moram`` command's config saver: the run folder's config files, and the config in the trackers.

    :class:`moram.run_folder.RunFolderConfig` keeps ``config.yaml`` (and ``history.jsonl``) in the run
    folder; once training starts (a resumed run too: a tracker may start a new run then), the
    resolved config (every option with its value, defaults included) goes to the trackers.
    """

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.is_global_zero:
            log_config(trainer, _plain(self.config), str(self.parser.dump(self.config, skip_none=False)))


def _plain(value: Any) -> Any:
    """``value`` with jsonargparse namespaces turned into dicts and other leaves into JSON-friendly values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
