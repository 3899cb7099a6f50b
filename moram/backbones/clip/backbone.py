"""The CLIP backbone plugin: a frozen open_clip model, trained on the current task's class prompts.

Training uses the docs/design.md §1 loss over the current task's classes, computed on the global batch
(so N processes train like one). Evaluation scores every image two ways — among its own task's
classes (task-aware, MTIL) and among the union of all tasks' class names (task-agnostic, X-TAIL) —
and reports ``protocol``'s view as the primary score, the other beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.backbones.base import Backbone, EvalScores, StepLoss, TaskInfo
from moram.errors import ConfigError

if TYPE_CHECKING:
    from moram.module import ContinualModule

EvalProtocol = Literal["task_aware", "task_agnostic"]
AGNOSTIC_PREFIX = "eval/agnostic/"
AWARE_PREFIX = "eval/aware/"
_VIEW_PREFIX = {"task_aware": AWARE_PREFIX, "task_agnostic": AGNOSTIC_PREFIX}


def _encode_normalized(model: Any, tokens: Tensor) -> Tensor:
    return F.normalize(model.encode_text(tokens), dim=-1)


def encode_text_chunked(model: Any, tokens: Tensor, chunk: int | None) -> Tensor:
    """``normalize(model.encode_text(tokens))`` ``(C, D)``, encoded ``chunk`` prompts at a time (None: at once).

    With gradients enabled each chunk runs under non-reentrant ``torch.utils.checkpoint``: its
    activations are dropped after the forward and recomputed, one chunk at a time, in the backward
    pass, so the activation memory of the text tower is that of one chunk (plus the ``(C, D)``
    features); without gradients the chunks are simply encoded one after the other. The values and
    gradients are those of one call, up to the rounding of products over fewer rows.
    """
    if chunk is None or tokens.shape[0] <= chunk:
        return _encode_normalized(model, tokens)
    parts = tokens.split(chunk)
    if not torch.is_grad_enabled():
        return torch.cat([_encode_normalized(model, part) for part in parts])
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(_encode_normalized, model, part, use_reentrant=False) for part in parts])


class CLIPBackbone(Backbone):
    """Continual CLIP (open_clip) with continual layers in the image tower, the text tower or both.

    Args:
        model_config: a moram-shipped model config name (``moram/assets/models``) or a JSON file;
            exclusive with ``model_name``.
        model_name: an open_clip model name (e.g. ``ViT-B-16``).
        pretrained: weights: an open_clip tag (``openai``), a local file (safetensors / torch), or
            ``packaged`` for the weights moram ships for ``model_config``; None keeps random weights.
        towers: towers that carry atoms: ``image``, ``text`` or both.
        layers: layer groups that carry atoms: ``attn`` (q, k, v, out) and/or ``mlp`` (c_fc, c_proj).
        protocol: how the reported score classifies a test image: ``task_aware`` (among its own
            task's classes, MTIL) or ``task_agnostic`` (among the union of all tasks' classes, X-TAIL).
            Both views are always logged (``eval/aware/*``, ``eval/agnostic/*``).
        checkpointing: activation checkpointing per tower: ``true`` (both), ``false`` (none, the
            default) or a list of ``image`` / ``text``. Each transformer block keeps only its input
            in a training step and is recomputed in the backward pass: the same numbers, less memory,
            one more forward of the tower (``benchmarks/bench_memory.py`` measures both).
        prompt_chunk: encode class prompts this many at a time (None: all at once). In training each
            chunk's activations are dropped after its forward and recomputed in the backward pass,
            one chunk at a time (the loss still sees every class at once, so the numbers are the
            same); at evaluation the union of class names is encoded chunk by chunk.
    """

    views = _VIEW_PREFIX
    # defaults for backbones pickled before these options existed (older checkpoints' hyperparameters)
    checkpointing: list[str] | tuple[str, ...] = ()
    prompt_chunk: int | None = None

    def __init__(
        self,
        model_config: str | None = None,
        model_name: str | None = None,
        pretrained: str | None = None,
        towers: list[str] | None = None,
        layers: list[str] | None = None,
        protocol: EvalProtocol = "task_aware",
        checkpointing: bool | list[str] = False,
        prompt_chunk: int | None = None,
    ) -> None:
        from moram.backbones.clip.build import resolve_checkpointing

        if (model_config is None) == (model_name is None):
            raise ConfigError("set exactly one of model.backbone.model_config (a moram/JSON config) and "
                             "model.backbone.model_name (an open_clip name)")
        if protocol not in _VIEW_PREFIX:
            raise ConfigError(f"model.backbone.protocol must be 'task_aware' or 'task_agnostic', got {protocol!r}")
        self.model_config, self.model_name, self.pretrained = model_config, model_name, pretrained
        self.towers = list(towers or ["image", "text"])
        self.layers = list(layers or ["attn", "mlp"])
        self.protocol = protocol
        self.checkpointing = resolve_checkpointing(checkpointing)
        if prompt_chunk is not None and (isinstance(prompt_chunk, bool) or not isinstance(prompt_chunk, int)
                                         or prompt_chunk < 1):
            raise ConfigError(f"model.backbone.prompt_chunk must be a positive integer or null, got {prompt_chunk!r}")
        self.prompt_chunk = prompt_chunk
        self.primary_view = protocol
        self.tokenizer: Any = None
        self.reset()

    def reset(self) -> None:
        self._prompts: dict[int, Tensor] = {}  # tokenized class prompts per task
        self._eval: dict[str, Any] = {}  # the class-name embeddings of the evaluation under way

    # ------------------------------------------------------------------ construction
    def build_options(self) -> dict[str, Any]:
        return {"model_config": self.model_config, "model_name": self.model_name, "pretrained": self.pretrained}

    def build(self) -> nn.Module:
        """The frozen CLIP with its attention split into q/k/v/out linears (what adapters go into)."""
        from moram.backbones.clip.attention import convert_attention
        from moram.backbones.clip.build import set_checkpointing

        model = self._load()
        convert_attention(model)
        if self.checkpointing:
            set_checkpointing(model, self.checkpointing)
        return model

    def _load(self) -> nn.Module:
        from moram.backbones.clip.build import build_clip

        if self.pretrained == "packaged":
            from moram.backbones.clip.tiny import load_tiny_clip

            if self.model_config != "moram-tiny-minilm":
                raise ConfigError(
                    "model.backbone.pretrained='packaged' means the weights moram ships for model_config "
                    f"'moram-tiny-minilm', not {self.model_config!r}; give a tag or a file instead"
                )
            model, self.tokenizer = load_tiny_clip()
        else:
            model, self.tokenizer = build_clip(
                model_name=self.model_name, model_config=self.model_config, pretrained=self.pretrained
            )
        return model

    def default_targets(self, model: nn.Module) -> list[str]:
        """Attention (q, k, v, out) and/or MLP linears of the chosen towers (``towers``, ``layers``)."""
        from moram.backbones.clip.build import clip_targets

        return clip_targets(self.towers, self.layers)

    # ------------------------------------------------------------------ helpers
    def _task_prompts(self, host: ContinualModule, task: TaskInfo) -> Tensor:
        if task.index not in self._prompts:
            t = task.spec
            self._prompts[task.index] = self.tokenizer([t.template.format(c) for c in t.classnames])
        return self._prompts[task.index].to(host.device)

    def _encode_text(self, model: Any, tokens: Tensor) -> Tensor:
        """L2-normalised text features ``(C, D)``, in chunks of ``prompt_chunk`` prompts when set."""
        return encode_text_chunked(model, tokens, self.prompt_chunk)

    @staticmethod
    def _encode_image(model: Any, images: Tensor) -> Tensor:
        return F.normalize(model.encode_image(images), dim=-1)

    # ------------------------------------------------------------------ steps
    def training_loss(self, host: ContinualModule, batch: tuple[Tensor, Tensor], task: TaskInfo) -> StepLoss:
        from moram.backbones.clip.loss import clip_class_loss
        from moram.distributed import gather_batch

        images, labels = batch
        model = host.model
        text = self._encode_text(model, self._task_prompts(host, task))  # (C, D), with grad: text atoms
        image = self._encode_image(model, images)  # (b, D): this rank's share of the global batch
        # the text->image term couples the images of a batch: compute it on the global batch, so that
        # N processes train exactly like one (moram.distributed.gather_batch)
        image, labels = gather_batch(image, labels)  # (B, D), (B,)
        loss = clip_class_loss(image, text, labels, model.logit_scale.exp())
        return StepLoss(loss, loss, len(labels))

    def start_eval(self, host: ContinualModule, tasks: list[TaskInfo]) -> None:
        specs = [t.spec for t in tasks]
        union: list[str] = []
        prompts: list[str] = []
        for t in specs:
            for c in t.classnames:
                if c not in union:
                    union.append(c)
                    prompts.append(t.template.format(c))
        text = self._encode_text(host.model, self.tokenizer(prompts).to(host.device))  # (U, D)
        to_union = [torch.tensor([union.index(c) for c in t.classnames], device=host.device) for t in specs]
        self._eval = {"text": text, "to_union": to_union}

    def eval_scores(self, host: ContinualModule, batch: Any, task: TaskInfo, keep_records: bool) -> EvalScores:
        images, labels = batch
        image = self._encode_image(host.model, images)  # (B, D)
        text, to_union = self._eval["text"], self._eval["to_union"][task.index]
        aware = 100.0 * ((image @ text[to_union].T).argmax(dim=1) == labels).double()  # among the task's classes
        agnostic = 100.0 * ((image @ text.T).argmax(dim=1) == to_union[labels]).double()  # among all class names
        return EvalScores({"task_aware": aware, "task_agnostic": agnostic})  # primary_view is one of them

    def predict(self, host: ContinualModule, batch: Any, task: TaskInfo) -> Tensor:
        """Task-agnostic class index (into the union of all tasks' class names) of each image."""
        if not self._eval:
            self.start_eval(host, host.task_infos())
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return (self._encode_image(host.model, images) @ self._eval["text"].T).argmax(dim=1)
