r"""moram's continual LightningModule: one module, composed of a backbone plugin and an adaptation method.

One ``fit`` runs the whole task sequence (one epoch = one task, DESIGN.md §3). :class:`ContinualModule`
owns everything a continual run shares; a :class:`~moram.backbones.base.Backbone` provides what differs
between kinds of models (build, default targets, loss, per-example scores, predictions):

* bank capacity: ``atoms.max_tasks: null`` is taken from the task stream;
* the method: MoRAM with ``atoms`` (``method: null``), or a baseline from :mod:`moram.baselines`;
* AdamW over the current task's parameters with a per-task schedule (``lr_schedule``: warmup then
  cosine or constant; restarted by the task-boundary callback) and an adapter's own loss term
  (:func:`adapter_penalty`, O-LoRA's);
* evaluation of every task after every task: per-example scores are accumulated per task and view in
  torchmetrics ``MeanMetric``\\ s (synced across ranks by torchmetrics) and logged under
  :func:`moram.protocols.score_key`, where the continual-metrics callback builds the accuracy matrix;
* the :class:`~moram.protocols.ContinualHost`, :class:`~moram.protocols.ShardedHost` and
  :class:`~moram.protocols.AdapterExporter` protocols the callbacks use;
* adapter-only checkpoints with a backbone fingerprint (:mod:`moram.checkpoint`), the RNG state for
  exact resume, the adapters' cost written to ``adapter_cost.json``, FSDP2 sharding of the built model.

The adapted model is ``module.model`` (built in ``configure_model()``, or by :meth:`ContinualModule.build`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import io
import json
import math
import warnings
from pathlib import Path
from typing import IO, Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from moram.adapters.method import AdapterMethod
from moram.atoms.config import AtomConfig
from moram.backbones.base import Backbone
from moram.protocols import ContinualLayer, continual_layers, current_task, is_task_stream, score_key

LRSchedule = Literal["cosine", "constant"]
"""The per-task learning-rate schedules: warmup then cosine to zero, or warmup then constant."""

PREDICTIONS_DIR = "predictions"
TEST_PREFIX = "test/score/"


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
    """Sum of ``layer.penalty()`` over the continual layers that have one (O-LoRA's regulariser), or None."""
    penalties = [getattr(layer, "penalty", None) for _, layer in continual_layers(model)]
    terms = [penalty().float() for penalty in penalties if callable(penalty)]
    return torch.stack(terms).sum() if terms else None


class TaskScores:
    """Per-task, per-view means of per-example scores, one torchmetrics ``MeanMetric`` each.

    ``compute()`` syncs each metric across ranks (torchmetrics' own all-gather), so every example
    counts once whatever the number of processes. Float64, and a NaN score raises instead of being
    dropped. Not a module: the metrics live for one evaluation pass and are never checkpointed.
    """

    def __init__(self, num_tasks: int, views: list[str], device: torch.device) -> None:
        from torchmetrics.aggregation import MeanMetric

        def metric() -> MeanMetric:
            m = MeanMetric(nan_strategy="error").to(device)
            m.set_dtype(torch.float64)
            return m

        self.metrics = {view: [metric() for _ in range(num_tasks)] for view in views}

    def update(self, task: int, scores: dict[str, Tensor]) -> None:
        for view, values in scores.items():
            self.metrics[view][task].update(values.detach().to(torch.float64).reshape(-1))

    def compute(self, view: str, task: int) -> float:
        """The mean score of ``task`` under ``view`` over every rank's examples (0 for a task with none)."""
        metric = self.metrics[view][task]
        value = float(metric.compute()) if metric.update_count or torch.distributed.is_initialized() else 0.0
        return 0.0 if math.isnan(value) else value  # NaN here only means no examples: NaN scores raise


_LOADED_TASKS: contextvars.ContextVar[int | None] = contextvars.ContextVar("moram_loaded_tasks", default=None)
"""The bank capacity of the checkpoint :meth:`ContinualModule.load_from_checkpoint` is reading (no stream there)."""


class ContinualModule(LightningModule):
    """Continual learning of a frozen pre-trained model: a backbone plugin, a method, an optimiser.

    Args:
        backbone: the kind of model (``class_path``): :class:`moram.backbones.clip.CLIPBackbone` (open_clip),
            :class:`moram.backbones.lm.LMBackbone` (transformers), or your own
            :class:`~moram.backbones.base.Backbone` subclass.
        method: the adaptation method (a ``class_path`` from :mod:`moram.baselines`: ``ZeroShot``,
            ``SequentialLoRA``, ``OLoRA``, ``MoELoRA``, ``RankRExperts``); null is MoRAM with ``atoms``.
            Baselines take the targets, ``max_tasks`` and seed from ``atoms``.
        atoms: atom settings (rank, top_k, temperature, threshold, scale, dropout, max_tasks, targets);
            null: the backbone's default (the paper's CLIP or LLM settings).
        lr: AdamW learning rate of the current task's parameters.
        weight_decay: AdamW weight decay.
        betas: AdamW betas (the paper's LLM runs use (0.9, 0.95), its CLIP runs (0.9, 0.9999): see the configs).
        warmup_steps: linear warmup steps at the start of every task (both schedules).
        lr_schedule: the learning rate within each task, restarted at every task: ``cosine`` (warmup,
            then cosine to zero) or ``constant`` (warmup, then ``lr``; the official TRACE setting).
        steps_per_task: length of the per-task schedule; null takes the data's ``steps_per_task``.
    """

    def __init__(
        self,
        backbone: Backbone,
        method: AdapterMethod | None = None,
        atoms: AtomConfig | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "cosine",
        steps_per_task: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"model.backbone must be a moram.backbones.base.Backbone, got {type(backbone).__name__}")
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"model.lr_schedule must be one of {sorted(SCHEDULES)}, got {lr_schedule!r}")
        self.save_hyperparameters()
        self.backbone = backbone
        self.method = method
        self.atoms = atoms if atoms is not None else backbone.default_atoms()
        self.lr, self.weight_decay = lr, weight_decay
        self.betas = (float(betas[0]), float(betas[1]))
        self.warmup_steps, self.lr_schedule, self.steps_per_task = warmup_steps, lr_schedule, steps_per_task
        self.model: Any = None  # the adapted model, built in configure_model()
        self.adapted: list[str] = []
        self._trains = True  # False once configure_optimizers found nothing to train (zero-shot)
        self._scores: TaskScores | None = None
        self._records: list[list[dict[str, Any]]] | None = None
        self._pending_rng: dict[str, Tensor] | None = None
        self._build_rng: Tensor | None = None  # the CPU RNG state the backbone was built under

    # ------------------------------------------------------------------ construction
    def configure_model(self) -> None:
        """Build and adapt the backbone once; shard it under FSDP2 (a strategy with a device mesh). Idempotent."""
        if self.model is None:
            self.atoms = self.resolve_max_tasks(self.atoms)
            self._build_rng = torch.get_rng_state()  # a backbone of random weights is rebuilt from it
            model = self.backbone.build()
            self.adapted = self.backbone.adapt(model, self.atoms, self.method)
            self.model = model
        if self.device_mesh is not None:
            from moram.distributed import shard_atom_model

            shard_atom_model(self.model, self.device_mesh)

    def build(self) -> Any:
        """The adapted model, built on first use."""
        if self.model is None:
            self.configure_model()
        return self.model

    def resolve_max_tasks(self, atoms: AtomConfig) -> AtomConfig:
        """``atoms`` with ``max_tasks`` taken from the task stream when it is null."""
        if atoms.max_tasks is not None:
            return atoms
        stream: Any = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if stream is None or not is_task_stream(stream):
            loaded = _LOADED_TASKS.get()
            if loaded is not None:  # load_from_checkpoint: the capacity the file was written with
                return dataclasses.replace(atoms, max_tasks=loaded)
            raise ValueError("model.atoms.max_tasks is null and there is no task stream to take it from; set it")
        return dataclasses.replace(atoms, max_tasks=stream.num_tasks)

    def backbone_options(self) -> dict[str, Any]:
        """The backbone's build options, recorded in checkpoints (:mod:`moram.checkpoint`)."""
        return self.backbone.build_options()

    @property
    def score_views(self) -> dict[str, str]:
        """Views of the scores beside the primary one (view name -> metric prefix); each gets a metrics file."""
        return {v: p for v, p in self.backbone.views.items() if v != self.backbone.primary_view}

    @property
    def protocol(self) -> str:
        """Name of the view the primary score is (e.g. ``task_aware``), ``""`` when the backbone has one view."""
        return self.backbone.primary_view

    def atom_layers(self) -> list[tuple[str, Any]]:
        """MoRAM's layers of the model (none under a baseline ``method``)."""
        from moram.atoms.inject import atom_layers

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
            cost = adapter_cost(self.build(), num_tasks=int(self.atoms.max_tasks or 1))
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

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | IO[bytes], map_location: Any = None, hparams_file: str | Path | None = None,
        strict: bool | None = None, **kwargs: Any,
    ) -> ContinualModule:
        """The trained module of a moram checkpoint, outside a Trainer (inference, inspection, export).

        The backbone is rebuilt from the options stored in the file and checked against its fingerprint,
        as on resume; the atoms (every task's memory, current and frozen, and their counters) are loaded
        from it. ``atoms.max_tasks: null`` (taken from the stream in the run) is read from the file.
        Checkpoints of moram 0.1 (``CLIPContinualModule`` / ``LMContinualModule``) are read in the
        composed form. ``kwargs`` override stored hyperparameters, as in Lightning.

        Example::

            module = ContinualModule.load_from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
            module.model  # the adapted backbone, ready for module.backbone.predict or your own loop
        """
        from moram.checkpoint import KEY, stored_task_count, upgrade_hparams

        checkpoint = torch.load(checkpoint_path, map_location=map_location or "cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{checkpoint_path} is not a Lightning checkpoint (no state_dict)")
        checkpoint["hyper_parameters"] = upgrade_hparams(dict(checkpoint.get("hyper_parameters") or {}))
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        build_rng = (checkpoint.get(KEY) or {}).get("build_rng")
        token = _LOADED_TASKS.set(stored_task_count(checkpoint))
        try:
            with torch.random.fork_rng(devices=[], enabled=build_rng is not None), warnings.catch_warnings():
                if build_rng is not None:
                    torch.set_rng_state(build_rng)
                # the frozen backbone is rebuilt, not stored: on_load_checkpoint checks the adapter keys itself
                warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in")
                module = super().load_from_checkpoint(
                    buffer, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
                )
        finally:
            _LOADED_TASKS.reset(token)
        assert isinstance(module, ContinualModule)
        return module.eval()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen backbone and fingerprint it (:mod:`moram.checkpoint`); keep the global RNG state.

        The RNG state: atom dropout draws from it, and Lightning does not restore it.
        """
        from moram.checkpoint import KEY, strip_backbone

        strip_backbone(self, checkpoint)
        checkpoint[KEY]["max_tasks"] = self.atoms.max_tasks  # for load_from_checkpoint: the banks' capacity,
        checkpoint[KEY]["build_rng"] = self._build_rng  # and the RNG state of a backbone built from random weights
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
        """Index of the task being trained: the stream's ``current_task`` (:func:`moram.protocols.current_task`)."""
        return current_task(self.trainer)

    def check_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Raise naming ``model.lr`` and the task when ``loss`` is NaN or infinite (nothing is updated)."""
        if not torch.isfinite(loss):
            task = self.current_task_index
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at task {task} step {batch_idx}; lower model.lr "
                f"(now {self.lr}) or check the data of task '{self.stream.task_names[task]}'"
            )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if not self._trains:  # zero-shot: nothing to train, the step is skipped
            return None
        step = self.backbone.training_loss(self, batch, self.current_task_index)
        self.check_loss(step.loss, batch_idx)
        self.log("train/loss", step.logged, prog_bar=True, batch_size=step.batch_size)
        penalty = adapter_penalty(self.model)  # O-LoRA's regulariser; nothing for other methods
        if penalty is None:
            return step.loss
        self.log("train/penalty", penalty.detach())
        return step.loss + penalty.to(step.loss.dtype)

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self, keep_records: bool = False) -> None:
        tasks = len(self.stream.tasks)
        views = dict.fromkeys([self.backbone.primary_view, *self.backbone.views])  # the primary may be a view
        self._scores = TaskScores(tasks, list(views), self.device)
        self._records = [[] for _ in range(tasks)] if keep_records else None
        self.backbone.start_eval(self)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval(keep_records=True)

    def _eval_step(self, batch: Any, task: int) -> None:
        assert self._scores is not None
        result = self.backbone.eval_scores(self, batch, task, keep_records=self._records is not None)
        self._scores.update(task, result.scores)
        if self._records is not None and result.records is not None:
            self._records[task] += result.records

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def _computed_scores(self, prefix: str) -> dict[str, float]:
        """Every task's mean score (synced across ranks) under ``prefix`` and under each view's prefix."""
        assert self._scores is not None
        scores: dict[str, float] = {}
        for task, name in enumerate(self.stream.task_names):
            scores[f"{prefix}{name}"] = self._scores.compute(self.backbone.primary_view, task)
            for view, view_prefix in self.backbone.views.items():
                scores[f"{view_prefix}{name}"] = self._scores.compute(view, task)
        return scores

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        """Log every task's mean score (synced across ranks) under ``prefix`` and each view's prefix."""
        computed = self._computed_scores(prefix)
        for key, value in computed.items():
            self.log(key, value, sync_dist=False)  # synced by torchmetrics already
        return {name: computed[f"{prefix}{name}"] for name in self.stream.task_names}

    @torch.no_grad()
    def evaluate_tasks(self) -> dict[str, float]:
        """Every task's validation score now, as validation logs it (:class:`moram.protocols.TaskEvaluator`).

        The same pass as a validation epoch (the stream's validation loaders, the batch-transfer hooks, the
        trainer's precision context), run by the module itself and logging nothing: the continual-metrics
        callback calls it to fill the row of a run resumed right after a task ended, whose validation
        Lightning skips. Every rank calls it; each submodule's train/eval mode is restored afterwards.
        """
        modes = [(m, m.training) for m in self.modules()]
        precision = self.trainer.precision_plugin.val_step_context()
        self.eval()
        self._start_eval()
        try:
            with precision:
                for task, loader in enumerate(self.stream.val_dataloader()):
                    for batch in loader:
                        batch = self.on_before_batch_transfer(batch, task)
                        batch = self.transfer_batch_to_device(batch, self.device, task)
                        self._eval_step(self.on_after_batch_transfer(batch, task), task)
            return self._computed_scores(score_key(""))
        finally:
            self._scores = None
            for module, training in modes:
                module.training = training

    def on_validation_epoch_end(self) -> None:
        self._finish_eval(score_key(""))

    def on_test_epoch_end(self) -> None:
        self._finish_eval(TEST_PREFIX)
        self._write_records()

    def _write_records(self) -> None:
        """This process's test predictions, one JSONL file per task under ``<log_dir>/predictions``."""
        kept, log_dir = self._records, self.trainer.log_dir
        if not kept or not any(kept) or log_dir is None:
            return
        folder = Path(log_dir) / PREDICTIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{self.trainer.global_rank}" if self.trainer.world_size > 1 else ""
        for name, rows in zip(self.stream.task_names, kept, strict=True):
            with open(folder / f"{name}{suffix}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.backbone.predict(self, batch, dataloader_idx)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for _, layer in continual_layers(self.build()) for p in layer.current_parameters()]
        self._trains = bool(params)
        if not params:
            if self.method is not None:
                return None  # a method that adapts nothing (zero-shot)
            raise ValueError("no trainable atom parameters; check model.atoms.targets and the layer options")
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        fixed, warmup = self.steps_per_task, self.warmup_steps
        data = getattr(self._trainer, "datamodule", None)
        per_task = getattr(data, "steps_for", None) if fixed is None else None
        if fixed is None and not callable(per_task):
            fixed = getattr(data, "steps_per_task", None)
            if fixed is None:
                raise ValueError("model.steps_per_task is null and the datamodule has no steps_per_task; set it")

        def total() -> int:  # the present task's length: streams may give one per task (data.steps_per_task)
            return per_task(getattr(data, "current_task", 0)) if callable(per_task) else int(fixed)  # type: ignore[arg-type]

        schedule = self.lr_schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(schedule, s, total(), warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
