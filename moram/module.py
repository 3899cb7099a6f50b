"""The CLIP continual-learning LightningModule: a frozen open_clip model with atom banks.

One ``fit`` runs the whole task sequence (one epoch = one task, DESIGN.md §3). Training uses the
current task's class prompts (DESIGN.md §1 loss); validation after every task scores every task,
seen and unseen, in the configured protocol and logs each score under
:func:`moram.protocols.score_key`, where the continual-metrics callback picks it up.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from moram.adapters.method import AdapterMethod
from moram.atoms.config import AtomConfig
from moram.distributed import gather_batch
from moram.losses import clip_class_loss
from moram.module_base import ContinualModule, LRSchedule
from moram.protocols import score_key

EvalProtocol = Literal["task_aware", "task_agnostic"]
AGNOSTIC_PREFIX = "eval/agnostic/"
AWARE_PREFIX = "eval/aware/"


class CLIPContinualModule(ContinualModule):
    """Continual CLIP with MoRAM atoms in the image tower, the text tower or both.

    Args:
        model_config: a moram-shipped model config name (``moram/assets/models``) or a JSON file;
            exclusive with ``model_name``.
        model_name: an open_clip model name (e.g. ``ViT-B-16``).
        pretrained: weights: an open_clip tag (``openai``), a local file (safetensors / torch), or
            ``packaged`` for the weights moram ships for ``model_config``; None keeps random weights.
        atoms: atom settings (rank, top_k, temperature, threshold, scale, dropout, max_tasks, targets).
        method: the adaptation method (a ``class_path`` from :mod:`moram.baselines`: ``ZeroShot``,
            ``SequentialLoRA``, ``OLoRA``, ``MoELoRA``, ``RankRExperts``); null is MoRAM with ``atoms``.
            Baselines take the targets, ``max_tasks`` and seed from ``atoms``.
        towers: towers that carry atoms: ``image``, ``text`` or both.
        layers: layer groups that carry atoms: ``attn`` (q, k, v, out) and/or ``mlp`` (c_fc, c_proj).
        protocol: how the reported score classifies a test image: ``task_aware`` (among its own
            task's classes, MTIL) or ``task_agnostic`` (among the union of all tasks' classes, X-TAIL).
            Both views are always logged (``eval/aware/*``, ``eval/agnostic/*``).
        lr: AdamW learning rate of the current atoms.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warmup steps at the start of every task (both schedules).
        lr_schedule: the learning rate within each task, restarted at every task: ``cosine`` (warmup,
            then cosine to zero) or ``constant`` (warmup, then ``lr``; the official TRACE setting).
        steps_per_task: length of the per-task schedule; None takes the data's ``steps_per_task``.
    """

    def __init__(
        self,
        model_config: str | None = "moram-tiny-minilm",
        model_name: str | None = None,
        pretrained: str | None = None,
        atoms: AtomConfig | None = None,
        method: AdapterMethod | None = None,
        towers: list[str] | None = None,
        layers: list[str] | None = None,
        protocol: EvalProtocol = "task_aware",
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "cosine",
        steps_per_task: int | None = None,
    ) -> None:
        super().__init__()
        if (model_config is None) == (model_name is None):
            raise ValueError("set exactly one of model.model_config (a moram/JSON config) and model.model_name "
                             "(an open_clip name)")
        if protocol not in ("task_aware", "task_agnostic"):
            raise ValueError(f"model.protocol must be 'task_aware' or 'task_agnostic', got {protocol!r}")
        self.save_hyperparameters()
        self.atoms = atoms if atoms is not None else AtomConfig()
        self.method = method
        self._trains = True  # False once configure_optimizers found nothing to train (zero-shot)
        self.towers = list(towers or ["image", "text"])
        self.layer_groups = list(layers or ["attn", "mlp"])
        self.protocol = protocol
        self.model_config, self.model_name, self.pretrained = model_config, model_name, pretrained
        self.lr, self.weight_decay, self.betas = lr, weight_decay, (float(betas[0]), float(betas[1]))
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"model.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.warmup_steps, self.lr_schedule, self.steps_per_task = warmup_steps, lr_schedule, steps_per_task
        self.model: Any = None  # the open_clip model, built in configure_model()
        self.tokenizer: Any = None
        self.adapted: list[str] = []
        self._prompt_cache: dict[int, Tensor] = {}
        self._eval: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    def _build_model(self) -> None:
        from moram.backbones.clip import build_clip, prepare_clip

        if self.pretrained == "packaged":
            from moram.backbones.tiny_clip import load_tiny_clip

            if self.model_config != "moram-tiny-minilm":
                raise ValueError(
                    "model.pretrained='packaged' means the weights moram ships for model_config "
                    f"'moram-tiny-minilm', not {self.model_config!r}; give a tag or a file instead"
                )
            model, tokenizer = load_tiny_clip()
        else:
            model, tokenizer = build_clip(
                model_name=self.model_name, model_config=self.model_config, pretrained=self.pretrained
            )
        self.adapted = prepare_clip(model, self.atoms, towers=self.towers, layers=self.layer_groups, method=self.method)
        self.model, self.tokenizer = model, tokenizer

    @property
    def clip(self) -> Any:
        """The open_clip model (built on first use)."""
        return self.backbone

    @property
    def score_views(self) -> dict[str, str]:
        """The other protocol's scores, logged beside the primary ones (view name -> metric prefix)."""
        return {"task_agnostic": AGNOSTIC_PREFIX} if self.protocol == "task_aware" else {"task_aware": AWARE_PREFIX}

    # ------------------------------------------------------------------ task bookkeeping
    def _task_prompts(self, task: int) -> Tensor:
        if task not in self._prompt_cache:
            t = self.stream.tasks[task]
            self._prompt_cache[task] = self.tokenizer([t.template.format(c) for c in t.classnames])
        return self._prompt_cache[task].to(self.device)

    def _encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def _encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if not self._trains:  # zero-shot: nothing to train, the step is skipped
            return None
        images, labels = batch
        task = self.current_task_index
        text = self._encode_text(self._task_prompts(task))  # (C, D), with grad: the text tower has atoms
        image = self._encode_image(images)  # (b, D): this rank's share of the global batch
        # the text->image term couples the images of a batch: compute it on the global batch, so that
        # N processes train exactly like one (moram.distributed.gather_batch)
        image, labels = gather_batch(image, labels)  # (B, D), (B,)
        loss = clip_class_loss(image, text, labels, self.clip.logit_scale.exp())
        self.check_loss(loss, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return self.add_adapter_penalty(loss)  # O-LoRA's regulariser; nothing for other methods

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self) -> None:
        tasks = self.stream.tasks
        union: list[str] = []
        prompts: list[str] = []
        for t in tasks:
            for c in t.classnames:
                if c not in union:
                    union.append(c)
                    prompts.append(t.template.format(c))
        text = self._encode_text(self.tokenizer(prompts).to(self.device))  # (U, D)
        to_union = [torch.tensor([union.index(c) for c in t.classnames], device=self.device) for t in tasks]
        self._eval = {
            "text": text,
            "to_union": to_union,
            "counts": torch.zeros(len(tasks), 3, device=self.device, dtype=torch.long),  # aware, agnostic, total
        }

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def _eval_step(self, batch: tuple[Tensor, Tensor], task: int) -> None:
        images, labels = batch
        image = self._encode_image(images)  # (B, D)
        text, to_union = self._eval["text"], self._eval["to_union"][task]
        aware = (image @ text[to_union].T).argmax(dim=1)  # among the task's own classes
        agnostic = (image @ text.T).argmax(dim=1)  # among the union of all class names
        counts = self._eval["counts"][task]
        counts[0] += (aware == labels).sum()
        counts[1] += (agnostic == to_union[labels]).sum()
        counts[2] += len(labels)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        counts = self.trainer.strategy.reduce(self._eval["counts"], reduce_op="sum")  # each sample once
        scores: dict[str, float] = {}
        for task, name in enumerate(self.stream.task_names):
            total = max(int(counts[task, 2]), 1)
            aware = 100.0 * float(counts[task, 0]) / total
            agnostic = 100.0 * float(counts[task, 1]) / total
            primary = aware if self.protocol == "task_aware" else agnostic
            scores[name] = primary
            self.log(f"{prefix}{name}", primary, sync_dist=False)
            self.log(f"{AWARE_PREFIX}{name}", aware, sync_dist=False)
            self.log(f"{AGNOSTIC_PREFIX}{name}", agnostic, sync_dist=False)
        return scores

    def on_validation_epoch_end(self) -> None:
        self._finish_eval(score_key(""))

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test/score/")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Task-agnostic class index (into the union of all tasks' class names) of each image."""
        if not self._eval:
            self._start_eval()
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return (self._encode_image(images) @ self._eval["text"].T).argmax(dim=1)
