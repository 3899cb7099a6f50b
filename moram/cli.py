"""The ``moram`` command: LightningCLI over moram's (or any) LightningModule and DataModule.

``moram fit --config configs/clip_cl.yaml`` runs a whole task sequence (one epoch per task).
Model and data are chosen by ``class_path`` in the YAML; every option shows in ``--help``.

Values that must agree are derived, not written twice: when the data is a task stream
(:class:`moram.protocols.TaskStream`), ``trainer.max_epochs`` left null becomes the number of tasks,
and the LightningModules size their atom banks from the same number (``model.atoms.max_tasks: null``).
A continual run always gets a :class:`~moram.callbacks.task_boundary.TaskBoundaryCallback` and a
:class:`~moram.callbacks.continual_metrics.ContinualMetricsCallback`; list either under
``trainer.callbacks`` to configure it, and the default one is not added.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from moram.protocols import is_task_stream


def continual_callbacks(configured: list[Callback], model: object = None) -> list[Callback]:
    """The callbacks a continual run needs, minus those the user already configured.

    A model may declare other views of its scores as ``score_views`` (view name -> logged metric
    prefix, e.g. the task-agnostic view of a task-aware run); each gets its own metrics callback.
    """
    from moram.callbacks.continual_metrics import ContinualMetricsCallback
    from moram.callbacks.task_boundary import TaskBoundaryCallback

    defaults: list[Callback] = []
    if not any(isinstance(c, TaskBoundaryCallback) for c in configured):
        defaults.append(TaskBoundaryCallback())
    metric_names = {c.name for c in configured if isinstance(c, ContinualMetricsCallback)}
    if "continual_metrics" not in metric_names:
        defaults.append(ContinualMetricsCallback())
    for view, prefix in dict(getattr(model, "score_views", {})).items():
        if f"continual_metrics_{view}" not in metric_names:
            defaults.append(ContinualMetricsCallback(score_prefix=prefix, name=f"continual_metrics_{view}"))
    return defaults


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


class MoramCLI(LightningCLI):
    """LightningCLI with the continual-run defaults described in the module docstring."""

    def _parse_ckpt_path(self) -> None:
        # LightningCLI silently replaces the model options by the checkpoint's hyperparameters;
        # a checkpoint trained with other settings (atoms, towers, backbone) is refused instead.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        before = _flat(self.config[subcommand].model.as_dict())
        super()._parse_ckpt_path()
        after = _flat(self.config[subcommand].model.as_dict())
        keys = sorted(set(before) | set(after))
        diff = {k: (after.get(k), before.get(k)) for k in keys if before.get(k) != after.get(k)}
        if diff:
            detail = "; ".join(f"model.{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"the checkpoint {self.config[subcommand].ckpt_path} was trained with other model settings ({detail}); "
                "use the config it was trained with, or a checkpoint that matches this one"
            )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if is_task_stream(self.datamodule):
            configured = list(config.get("callbacks") or []) + list(callbacks)
            callbacks = list(callbacks) + continual_callbacks(configured, self.model)
            if config.get("max_epochs") is None:
                config = {**config, "max_epochs": self.datamodule.num_tasks}
            elif config["max_epochs"] != self.datamodule.num_tasks:
                raise ValueError(
                    f"trainer.max_epochs={config['max_epochs']} but the task stream has "
                    f"{self.datamodule.num_tasks} tasks (one epoch per task); leave trainer.max_epochs null"
                )
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        # Results are written by then (callbacks save on rank 0 during fit); end every rank together
        # so a multi-process gloo run does not abort at interpreter exit (moram.distributed). Only
        # after success: a rank that failed must not wait in a barrier its peers may never reach.
        from moram.distributed import finish_distributed

        super()._run_subcommand(subcommand)
        finish_distributed()


def main(args: list[str] | None = None, run: bool = True) -> MoramCLI:
    """Entry point of the ``moram`` console script (``args`` defaults to ``sys.argv[1:]``)."""
    return MoramCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def entry() -> None:
    """The ``moram`` console script: ``moram data ...`` for datasets, else the Lightning subcommands."""
    if sys.argv[1:2] == ["data"]:
        from moram.data.benchmarks.prepare import main as data_main

        sys.exit(data_main(sys.argv[2:]))
    main()  # LightningCLI reads sys.argv itself; returning None exits 0


if __name__ == "__main__":  # pragma: no cover
    entry()
