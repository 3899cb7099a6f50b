"""What every moram continual LightningModule shares: bank sizing, layer discovery, optimiser, cost file.

:class:`ContinualModule` is the common base of :class:`moram.module.CLIPContinualModule` and
:class:`moram.lm_module.LMContinualModule`. Subclasses build their backbone in ``_build_model()``
(setting ``self.model``) and implement the steps; the base provides:

* ``atoms.max_tasks: null`` taken from the task stream (one source of truth for the bank size);
* the :class:`~moram.protocols.ContinualHost` protocol the callbacks use, so one
  :class:`~moram.callbacks.TaskBoundaryCallback` and one metrics callback serve CLIP and LM runs alike;
* AdamW over the current task's parameters with a per-task schedule (``model.lr_schedule``: warmup
  then cosine or constant; restarted by the task-boundary callback), an adapter's own loss term
  (:func:`adapter_penalty`), and the adapters' cost written to ``adapter_cost.json`` at fit start;
* FSDP2 sharding of the built model in ``configure_model()`` when the strategy has a device mesh.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from moram.atoms.config import AtomConfig
from moram.atoms.inject import atom_layers
from moram.atoms.linear import AtomLinear
from moram.protocols import ContinualLayer, continual_layers, is_task_stream

LRSchedule = Literal["cosine", "constant"]
"""The per-task learning-rate schedules: warmup then cosine to zero, or warmup then constant."""


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR factor at ``step`` of a task of ``total`` steps: linear warmup, then cosine to zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def constant_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR factor at ``step`` of a task: linear warmup, then 1 (``total`` is unused; the same signature)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return 1.0


SCHEDULES = {"cosine": cosine_with_warmup, "constant": constant_with_warmup}


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """LR factor of ``schedule`` (:data:`LRSchedule`) at ``step`` within a task of ``total`` steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"model.lr_schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    return SCHEDULES[schedule](step, total, warmup)


def adapter_penalty(model: torch.nn.Module) -> Tensor | None:
    """Sum of ``layer.penalty()`` over the continual layers that have one (O-LoRA's regulariser), or None.

    A method whose layers carry a loss term of their own (:class:`moram.baselines.olora.OLoRALinear`)
    has it added to the training loss of every moram module through this one function.
    """
    penalties = [getattr(layer, "penalty", None) for _, layer in continual_layers(model)]
    terms = [penalty().float() for penalty in penalties if callable(penalty)]
    return torch.stack(terms).sum() if terms else None


class ContinualModule(LightningModule):
    """Base of moram's continual LightningModules (see the module docstring).

    Subclasses set ``self.atoms``, ``self.method``, ``self.lr``, ``self.betas``, ``self.weight_decay``,
    ``self.warmup_steps``, ``self.lr_schedule`` and ``self.steps_per_task`` in ``__init__``, and implement
    ``_build_model()``.
    """

    model: Any
    atoms: AtomConfig
    method: Any
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    lr_schedule: str = "cosine"
    steps_per_task: int | None
    _trains: bool = True
    _pending_rng: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ construction
    def configure_model(self) -> None:
        """Build the backbone once; shard it under FSDP2 (a strategy with a device mesh). Idempotent."""
        if self.model is None:
            self.atoms = self.resolve_max_tasks(self.atoms)
            self._build_model()
        if self.device_mesh is not None:
            from moram.distributed import shard_atom_model

            shard_atom_model(self.model, self.device_mesh)

    def _build_model(self) -> None:
        raise NotImplementedError

    def resolve_max_tasks(self, atoms: AtomConfig) -> AtomConfig:
        """``atoms`` with ``max_tasks`` taken from the task stream when it is null."""
        if atoms.max_tasks is not None:
            return atoms
        stream: Any = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if stream is None or not is_task_stream(stream):
            raise ValueError("model.atoms.max_tasks is null and there is no task stream to take it from; set it")
        return dataclasses.replace(atoms, max_tasks=stream.num_tasks)

    @property
    def backbone(self) -> Any:
        """The adapted model (built on first use)."""
        if self.model is None:
            self.configure_model()
        return self.model

    def atom_layers(self) -> list[tuple[str, AtomLinear]]:
        """MoRAM's layers of the model (none under a baseline ``method``)."""
        return atom_layers(self.model) if self.model is not None else []

    def continual_layers(self) -> list[tuple[str, ContinualLayer]]:
        """Every continual layer, atoms or baseline (the :class:`moram.protocols.ContinualHost` protocol)."""
        return continual_layers(self.model) if self.model is not None else []

    def export_adapters(self, directory: Path) -> bool:
        """Write the adapters (the :class:`~moram.protocols.AdapterExporter` protocol); every rank calls it.

        MoRAM's atoms as :func:`moram.save_atoms` files (``load_atoms``-ready), a baseline's layers as
        :func:`moram.adapters.save_adapters` files; False (nothing written) when the model adapts nothing.
        """
        if self.model is None or not self.continual_layers():
            return False
        if self.atom_layers():
            from moram.atoms.state import save_atoms

            save_atoms(self.model, directory, self.atoms)
        else:
            from moram.adapters.files import save_adapters

            save_adapters(self.model, directory)
        return True

    def full_parameters(self) -> Any:
        """Parameters readable and writable in full inside the block (:class:`~moram.protocols.ShardedHost`).

        FSDP1 gathers its flat parameters; FSDP2 units are resharded so layers see DTensors, which they
        read and write themselves (:func:`moram.distributed.full_value`, :func:`~moram.distributed.assign_full`).
        """
        from moram.distributed import full_parameters

        return full_parameters(self)

    def on_fit_start(self) -> None:
        """Write the adapters' parameter and FLOP accounting (:mod:`moram.accounting`) to ``adapter_cost.json``."""
        from moram.accounting import adapter_cost

        log_dir = self.trainer.log_dir  # a collective: every rank
        if self.trainer.is_global_zero and log_dir is not None:
            cost = adapter_cost(self.backbone, num_tasks=int(self.atoms.max_tasks or 1))
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "adapter_cost.json").write_text(json.dumps(cost, indent=1) + "\n")

    # ------------------------------------------------------------------ checkpoints
    @property
    def strict_loading(self) -> bool:
        """False: checkpoints hold no frozen backbone (:mod:`moram.checkpoint` checks the keys itself)."""
        return False if self._strict_loading is None else bool(self._strict_loading)

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen backbone and fingerprint it (:mod:`moram.checkpoint`); keep the global RNG state.

        The RNG state: atom dropout draws from it, and Lightning does not restore it.
        """
        from moram.checkpoint import strip_backbone

        strip_backbone(self, checkpoint)
        state: dict[str, Tensor] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["moram_rng"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another backbone or model; take its RNG state (set at the next training batch)."""
        from moram.checkpoint import check_resume

        check_resume(self, checkpoint, getattr(self._trainer, "ckpt_path", None) if self._trainer else None)
        self._pending_rng = checkpoint.get("moram_rng")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set the RNG state of a resumed run, so it draws the dropout masks the uninterrupted run drew."""
        state, self._pending_rng = self._pending_rng, None
        if state:
            torch.set_rng_state(state["cpu"])
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], self.device)

    # ------------------------------------------------------------------ task bookkeeping
    @property
    def stream(self) -> Any:
        """The trainer's task-stream datamodule (it must list its ``tasks``)."""
        stream = getattr(self.trainer, "datamodule", None)
        if stream is None or not hasattr(stream, "tasks"):
            raise ValueError(
                f"{type(self).__name__} needs a task-stream datamodule with `tasks`, "
                "e.g. moram.data.stream.TaskStreamDataModule"
            )
        return stream

    @property
    def current_task_index(self) -> int:
        """Index of the task being trained: the epoch, capped at the last task."""
        return min(self.current_epoch, self.stream.num_tasks - 1)

    def add_adapter_penalty(self, loss: Tensor) -> Tensor:
        """``loss`` plus the adapters' own loss term (:func:`adapter_penalty`), logged as ``train/penalty``."""
        penalty = adapter_penalty(self.backbone)
        if penalty is None:
            return loss
        self.log("train/penalty", penalty.detach())
        return loss + penalty.to(loss.dtype)

    def check_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Raise naming ``model.lr`` and the task when ``loss`` is NaN or infinite (nothing is updated)."""
        if not torch.isfinite(loss):
            task = self.current_task_index
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at task {task} step {batch_idx}; lower model.lr "
                f"(now {self.lr}) or check the data of task '{self.stream.task_names[task]}'"
            )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for _, layer in continual_layers(self.backbone) for p in layer.current_parameters()]
        self._trains = bool(params)
        if not params:
            if self.method is not None:
                return None  # a method that adapts nothing (zero-shot)
            raise ValueError("no trainable atom parameters; check model.atoms.targets and the layer options")
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        total, warmup = self.steps_per_task, self.warmup_steps
        if total is None:
            total = getattr(getattr(self._trainer, "datamodule", None), "steps_per_task", None)
            if total is None:
                raise ValueError("model.steps_per_task is null and the datamodule has no steps_per_task; set it")
        schedule = self.lr_schedule
        lr_factor(schedule, 0, total, warmup)  # refuse an unknown schedule before training starts
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(schedule, s, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
