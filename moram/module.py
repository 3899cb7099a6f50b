r"""moram's continual LightningModule: one module, composed of a backbone plugin and an adaptation method.

One ``fit`` runs the whole task sequence (one epoch = one task, docs/design.md §3). :class:`ContinualModule`
owns everything a continual run shares; a :class:`~moram.backbones.base.Backbone` provides what differs
between kinds of models (build, default targets, loss, per-example scores, predictions):

* the method (a :class:`~moram.adapters.method.MethodConfig`: MoRAM's by default, or a baseline's from
  :mod:`moram.baselines`, or a user's) and the run-level settings every method shares: ``targets``
  (null: the backbone's default targets), ``max_tasks`` (null: taken from the task stream) and ``seed``;
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

import io
import json
import math
import warnings
from pathlib import Path
from typing import IO, Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from moram.adapters.method import MethodConfig, method_from_dict
from moram.atoms.config import AtomConfig
from moram.backbones.base import Backbone, TaskInfo
from moram.errors import CheckpointError, ConfigError, NonFiniteLossError
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
        raise ConfigError(f"model.lr_schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
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


class ContinualModule(LightningModule):
    """Continual learning of a frozen pre-trained model: a backbone plugin, a method, an optimiser.

    Args:
        backbone: the kind of model (``class_path``): :class:`moram.backbones.clip.CLIPBackbone` (open_clip),
            :class:`moram.backbones.lm.LMBackbone` (transformers), or your own
            :class:`~moram.backbones.base.Backbone` subclass.
        method: the adaptation method, a config of its own hyperparameters (``class_path``):
            :class:`moram.atoms.MoRAMConfig` (``MoRAMConfig.llm()`` is the paper's LLM setting), one of
            :mod:`moram.baselines` (``ZeroShotConfig``, ``SequentialLoRAConfig``, ``OLoRAConfig``,
            ``MoELoRAConfig``, ``RankRExpertsConfig``), or your own. null (the default): MoRAM with the
            backbone's paper settings (``backbone.default_method()``: ``MoRAMConfig()`` for CLIP,
            ``MoRAMConfig.llm()`` for language models).
        targets: modules to adapt, for every method: exact names, dotted suffixes ("q_proj") or
            "re:<regex>"; null: the backbone's default targets.
        max_tasks: tasks every adapted layer holds (its capacity, allocated once); null: the task stream's
            number of tasks.
        seed: seed of the adapters' initialisation; each layer and task draws from its own generator.
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
        method: MethodConfig | None = None,
        targets: list[str] | None = None,
        max_tasks: int | None = None,
        seed: int = 0,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "cosine",
        steps_per_task: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise ConfigError(f"model.backbone must be a moram.backbones.base.Backbone, got {type(backbone).__name__}")
        if lr_schedule not in SCHEDULES:
            raise ConfigError(f"model.lr_schedule must be one of {sorted(SCHEDULES)}, got {lr_schedule!r}")
        if max_tasks is not None and max_tasks < 1:
            raise ConfigError(f"model.max_tasks must be null or an integer >= 1, got {max_tasks!r}")
        if isinstance(targets, str) or (targets is not None and not targets):
            raise ConfigError(f"model.targets must be null or a non-empty list of patterns, got {targets!r}")
        self.save_hyperparameters()
        if isinstance(method, dict):  # hyperparameters stored without their classes
            method = method_from_dict(method)
        if isinstance(method, AtomConfig):  # the Python API's one-object form: its run-level settings too
            targets = method.targets if targets is None else targets
            max_tasks = method.max_tasks if max_tasks is None else max_tasks
            seed = method.seed if seed == 0 else seed
            method = method.method
        if method is None:
            method = backbone.default_method()
        if not isinstance(method, MethodConfig):
            raise ConfigError(f"model.method must be a method config (moram.adapters.MethodConfig), got "
                              f"{type(method).__name__}")
        self.backbone = backbone
        self.method: MethodConfig = method
        self.targets = list(targets) if targets is not None else None
        self.max_tasks = max_tasks
        self.seed = seed
        # checkpoints hold no frozen backbone: moram.checkpoint checks the adapter keys itself
        self.strict_loading = False
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
            self.max_tasks = self.resolve_max_tasks()
            self._build_rng = torch.get_rng_state()  # a backbone of random weights is rebuilt from it
            model = self.backbone.build()
            self.adapted = self.backbone.adapt(
                model, self.method, max_tasks=self.max_tasks, targets=self.targets, seed=self.seed
            )
            self.model = model
        if self.device_mesh is not None:
            from moram.distributed import shard_atom_model

            shard_atom_model(self.model, self.device_mesh)

    def build(self) -> Any:
        """The adapted model, built on first use."""
        if self.model is None:
            self.configure_model()
        return self.model

    def resolve_max_tasks(self) -> int:
        """``max_tasks``, taken from the trainer's task stream when it is null."""
        if self.max_tasks is not None:
            return int(self.max_tasks)
        stream = self._trainer_attribute("datamodule")
        if stream is None or not is_task_stream(stream):
            raise ConfigError("model.max_tasks is null and there is no task stream to take it from; set it")
        return int(stream.num_tasks)

    def _trainer_attribute(self, name: str) -> Any:
        """``self.trainer.<name>`` (the datamodule, the checkpoint being restored), or None outside a Trainer."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (Lightning's message)
            return None
        return getattr(trainer, name, None)

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

    def continual_layers(self) -> list[tuple[str, ContinualLayer]]:
        """Every continual layer, atoms or baseline (the :class:`moram.protocols.ContinualHost` protocol)."""
        return continual_layers(self.model) if self.model is not None else []

    def export_adapters(self, directory: Path) -> bool:
        """Write the adapters (the :class:`~moram.protocols.AdapterExporter` protocol); every rank calls it.

        One format for every method (:func:`moram.adapters.save_adapters`, ready for
        :func:`moram.adapters.load_adapters` on a plain backbone); False (nothing written) when the model
        adapts nothing.
        """
        if self.model is None or not self.continual_layers():
            return False
        from moram.adapters.files import save_adapters

        save_adapters(self.model, directory, seed=self.seed)
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
            cost = adapter_cost(self.build(), num_tasks=int(self.max_tasks or 1))
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "adapter_cost.json").write_text(json.dumps(cost, indent=1) + "\n")

    # ------------------------------------------------------------------ checkpoints
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
        from moram.checkpoint import KEY
        from moram.upgrades import stored_task_count, upgrade_hparams

        if not isinstance(checkpoint_path, (str, Path)):  # a file object: read it once, hand Lightning a copy
            checkpoint_path = io.BytesIO(checkpoint_path.read())
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if isinstance(checkpoint_path, io.BytesIO):
            checkpoint_path.seek(0)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{checkpoint_path} is not a Lightning checkpoint (no state_dict)")
        # the stored hyperparameters in today's form, given as overrides (Lightning's own kwargs mechanism)
        overrides = upgrade_hparams(dict(checkpoint.get("hyper_parameters") or {}))
        overrides.pop("_instantiator", None)
        if overrides.get("max_tasks") is None:  # it came from the run's task stream: the file records it
            overrides["max_tasks"] = stored_task_count(checkpoint)
        overrides.update(kwargs)
        build_rng = (checkpoint.get(KEY) or {}).get("build_rng")
        # a backbone of random weights is rebuilt from the RNG state it was first built under; the caller's
        # RNG state is left as it was
        with torch.random.fork_rng(devices=[], enabled=build_rng is not None), warnings.catch_warnings():
            if build_rng is not None:
                torch.set_rng_state(build_rng)
            # the frozen backbone is rebuilt, not stored: on_load_checkpoint checks the adapter keys itself
            warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in")
            module = super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **overrides
            )
        assert isinstance(module, ContinualModule)
        return module.eval()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen backbone and fingerprint it (:mod:`moram.checkpoint`); keep the global RNG state.

        The RNG state: atom dropout draws from it, and Lightning does not restore it.
        """
        from moram.checkpoint import KEY, strip_backbone

        strip_backbone(self, checkpoint)
        checkpoint[KEY]["max_tasks"] = self.max_tasks  # for load_from_checkpoint: the layers' capacity,
        checkpoint[KEY]["build_rng"] = self._build_rng  # and the RNG state of a backbone built from random weights
        state: dict[str, Tensor] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["moram_rng"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another backbone or model; take its RNG state (set at the next training batch)."""
        from moram.checkpoint import check_resume
        from moram.upgrades import upgrade_model_state

        if isinstance(checkpoint.get("state_dict"), dict):  # entries of earlier versions, before keys are checked
            upgrade_model_state(self, checkpoint["state_dict"])
        check_resume(self, checkpoint, self._trainer_attribute("ckpt_path"))
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
            raise ConfigError(
                f"{type(self).__name__} needs a task-stream datamodule with `tasks`, "
                "e.g. moram.data.stream.TaskStreamDataModule"
            )
        return stream

    def task_info(self, index: int) -> TaskInfo:
        """Task ``index`` of the stream as the backbone hooks receive it (index, name, the stream's spec)."""
        stream = self.stream
        return TaskInfo(index, stream.task_names[index], stream.tasks[index])

    def task_infos(self) -> list[TaskInfo]:
        """Every task of the stream, in order (what :meth:`Backbone.start_eval` receives)."""
        return [self.task_info(i) for i in range(len(self.stream.tasks))]

    @property
    def current_task_index(self) -> int:
        """Index of the task being trained: the stream's ``current_task`` (:func:`moram.protocols.current_task`)."""
        return current_task(self.trainer)

    def check_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Raise naming ``model.lr`` and the task when ``loss`` is NaN or infinite (nothing is updated)."""
        if not torch.isfinite(loss):
            task = self.current_task_index
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at task {task} step {batch_idx}; lower model.lr "
                f"(now {self.lr}) or check the data of task '{self.stream.task_names[task]}'"
            )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if not self._trains:  # zero-shot: nothing to train, the step is skipped
            return None
        step = self.backbone.training_loss(self, batch, self.task_info(self.current_task_index))
        self.check_loss(step.loss, batch_idx)
        self.log("train/loss", step.logged, prog_bar=True, batch_size=step.batch_size)
        penalty = adapter_penalty(self.model)  # O-LoRA's regulariser; nothing for other methods
        if penalty is None:
            return step.loss
        self.log("train/penalty", penalty.detach())
        return step.loss + penalty.to(step.loss.dtype)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The present task's units have been trained: from now on they take part in inference.

        (Layers also learn it from a gradient reaching their Parameters; under FSDP, whose sharding
        replaces the Parameters, this hook is what tells them.)
        """
        for _, layer in self.continual_layers():
            mark = getattr(layer, "mark_trained", None)
            if callable(mark):
                mark()

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self, keep_records: bool = False) -> None:
        tasks = len(self.stream.tasks)
        views = dict.fromkeys([self.backbone.primary_view, *self.backbone.views])  # the primary may be a view
        self._scores = TaskScores(tasks, list(views), self.device)
        self._records = [[] for _ in range(tasks)] if keep_records else None
        self.backbone.start_eval(self, self.task_infos())

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval(keep_records=True)

    def _eval_step(self, batch: Any, task: int) -> None:
        assert self._scores is not None
        result = self.backbone.eval_scores(self, batch, self.task_info(task), keep_records=self._records is not None)
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
        return self.backbone.predict(self, batch, self.task_info(dataloader_idx))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for _, layer in continual_layers(self.build()) for p in layer.current_parameters()]
        self._trains = bool(params)
        if not params:
            if not self.adapted:
                return None  # a method that adapts nothing (zero-shot)
            raise ConfigError(f"{type(self.method).__name__} adapted {len(self.adapted)} modules but none has a "
                              "trainable parameter; check model.targets and model.method's options")
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        fixed, warmup = self.steps_per_task, self.warmup_steps
        data = self._trainer_attribute("datamodule")
        per_task = getattr(data, "steps_for", None) if fixed is None else None
        if fixed is None and not callable(per_task):
            fixed = getattr(data, "steps_per_task", None)
            if fixed is None:
                raise ConfigError("model.steps_per_task is null and the datamodule has no steps_per_task; set it")

        def total() -> int:  # the present task's length: streams may give one per task (data.steps_per_task)
            return per_task(current_task(self.trainer)) if callable(per_task) else int(fixed)  # type: ignore[arg-type]

        schedule = self.lr_schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(schedule, s, total(), warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
