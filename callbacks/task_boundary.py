"""Freeze and grow the atom banks between tasks (one epoch = one task).

At the start of task ``t`` (:func:`moram.protocols.current_task`: the stream's ``current_task``), every
bank is consolidated until it holds ``t × rank`` frozen atoms; whenever that happens the optimizer
state of the current atoms is zeroed in place and the per-task learning-rate schedule restarts. The check runs in
``on_train_epoch_start`` *and* ``on_train_batch_start``: Lightning skips the former when it resumes
from a checkpoint written at the last batch of an epoch, and consolidating only at epoch end lost a
whole task after such a resume (docs/design.md §4). The decision is counter-driven, hence idempotent
and identical on every rank.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from moram.errors import ConfigError
from moram.protocols import (
    ContinualHost,
    ShardedHost,
    continual_layers,
    current_task,
    is_routed_layer,
    is_task_stream,
)


class TaskBoundaryCallback(Callback):
    """Consolidate atoms, reset their optimizer state and restart the LR schedule at task boundaries.

    Works with any LightningModule that has continual layers (:class:`moram.protocols.ContinualLayer`:
    MoRAM's ``AtomLinear``, the baselines of :mod:`moram.baselines`, a layer of your own), ours or
    not; it talks to the model only through :mod:`moram.protocols`. A
    :class:`~moram.protocols.ContinualHost` that lists no layers (zero-shot) is left alone. Layers
    read and write their own sharded (FSDP2) Parameters; a module whose Parameters must be gathered
    first (FSDP1) says so by being a :class:`~moram.protocols.ShardedHost`.

    Args:
        reset_optimizer_state: zero the optimizer state (e.g. Adam's step, exp_avg, exp_avg_sq) of the
            current atoms at each boundary, in place (removing entries breaks sharded checkpoints).
        restart_lr_schedule: put every LR scheduler back to its first step at each boundary.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[TaskBoundaryCallback()], max_epochs=3, reload_dataloaders_every_n_epochs=1)
    """

    def __init__(self, reset_optimizer_state: bool = True, restart_lr_schedule: bool = True) -> None:
        self.reset_optimizer_state = reset_optimizer_state
        self.restart_lr_schedule = restart_lr_schedule
        self.boundary_steps: list[int] = []  # global step at which each boundary was crossed

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Checked here, not in setup(): models built in configure_model() exist only after setup.
        layers = continual_layers(pl_module)
        if not layers and isinstance(pl_module, ContinualHost):
            return  # the module declares it adapts nothing (zero-shot): nothing to consolidate
        if not layers:
            raise ValueError(
                f"TaskBoundaryCallback found no continual layers in {type(pl_module).__name__}; "
                "inject a method (e.g. moram.inject_atoms) before fitting"
            )
        stream = getattr(trainer, "datamodule", None)
        if is_task_stream(stream):
            max_tasks = layers[0][1].max_tasks
            if stream.num_tasks > max_tasks:
                raise ConfigError(
                    f"the task stream has {stream.num_tasks} tasks but the layers hold max_tasks={max_tasks}; "
                    f"set model.max_tasks to at least {stream.num_tasks} (or null: the stream's number)"
                )
            if getattr(trainer, "reload_dataloaders_every_n_epochs", 1) != 1:
                raise ConfigError(
                    "one epoch is one task: set trainer.reload_dataloaders_every_n_epochs=1 so each epoch "
                    "serves its own task"
                )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._cross_boundaries(trainer, pl_module)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._cross_boundaries(trainer, pl_module)

    def _cross_boundaries(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layers = continual_layers(pl_module)
        if not layers:
            return
        done = {layer.task_index for _, layer in layers}
        if len(done) != 1:
            raise RuntimeError(f"continual layers disagree on the task they are in: {sorted(done)}")
        task, consolidated = current_task(trainer), done.pop()
        if consolidated >= task:
            return
        gathered = pl_module.full_parameters() if isinstance(pl_module, ShardedHost) else nullcontext()
        with gathered:  # FSDP1's flat parameters are gathered; FSDP2 layers read their DTensors themselves
            while consolidated < task:
                for _, layer in layers:
                    layer.consolidate()
                consolidated += 1
        if self.reset_optimizer_state:
            reset_atom_optimizer_state(trainer, pl_module)
        if self.restart_lr_schedule:
            restart_lr_schedules(trainer)
        self.boundary_steps.append(trainer.global_step)
        first = layers[0][1]
        held = f"consolidated {task} tasks"
        if is_routed_layer(first):
            held += f", {task * first.units_per_task} frozen units each"  # type: ignore[attr-defined]
        rank_zero_info(
            f"moram: task {task + 1} starts at step {trainer.global_step}: {len(layers)} continual layers {held} "
            f"({layers[0][0]} ...)"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"boundary_steps": list(self.boundary_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.boundary_steps = list(state_dict.get("boundary_steps", []))


def reset_atom_optimizer_state(trainer: Trainer, pl_module: LightningModule) -> int:
    """Zero, in place, every optimizer state tensor of the current atoms; returns how many were reset."""
    layers = continual_layers(pl_module)
    params = {id(p) for _, layer in layers for p in layer.current_parameters()}
    count = 0
    for optimizer in trainer.optimizers:
        for param, state in optimizer.state.items():
            if id(param) not in params:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    value.zero_()
                else:
                    state[key] = type(value)(0)
            count += 1
    return count


def restart_lr_schedules(trainer: Trainer) -> None:
    """Put every scheduler at its first step and set the groups' learning rates accordingly."""
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        scheduler.last_epoch = 0  # type: ignore[attr-defined]
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        with warnings.catch_warnings():  # get_lr() outside step() warns; at last_epoch=0 it is what we want
            warnings.simplefilter("ignore", UserWarning)
            lrs = closed_form() if callable(closed_form) else scheduler.get_lr()  # type: ignore[attr-defined]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):  # type: ignore[attr-defined]
            group["lr"] = lr
        scheduler._last_lr = list(lrs)  # type: ignore[attr-defined]  # private, no setter: test_lightning_internals.py
