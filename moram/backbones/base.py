"""The backbone plugin contract: what a kind of model adds to :class:`moram.module.ContinualModule`.

:class:`~moram.module.ContinualModule` owns everything a continual run shares (bank capacity from
the stream, the optimiser and its per-task schedule, evaluation of every task after every task with
per-task scores accumulated in torchmetrics and synced across ranks, checkpoints, RNG state, cost
file, FSDP2 sharding). A :class:`Backbone` provides only what differs between kinds of models:

* :meth:`Backbone.build` — the frozen pre-trained model (an ``nn.Module``), built offline or loaded, in
  the layout adapters go into (e.g. CLIP's attention split into q/k/v/out linears);
* :meth:`Backbone.default_targets` — the modules every method adapts when ``model.targets`` is null;
* :meth:`Backbone.training_loss` — the loss of a batch of the task being trained;
* :meth:`Backbone.eval_scores` — per-example scores (0–100) of a batch of an evaluated task, per view;
* :meth:`Backbone.predict` — what ``moram predict`` returns for a batch.

Shipped backbones: :class:`moram.backbones.clip.CLIPBackbone` (open_clip) and
:class:`moram.backbones.lm.LMBackbone` (transformers causal and seq2seq LMs). A third kind of model is
a subclass chosen by ``model.backbone.class_path`` in a config (``tests/backbone_plugin.py`` shows one in
about 30 lines). A backbone is plain Python: it holds options and helpers (tokenizer, prompt cache),
never the ``nn.Module`` itself, which the module owns as ``module.model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor, nn

if TYPE_CHECKING:
    from moram.adapters.method import MethodConfig
    from moram.module import ContinualModule


@dataclass(frozen=True)
class TaskInfo:
    """The task a hook works on: its index in the stream, its name, and the stream's description of it.

    ``spec`` is the task source's object for the task (e.g. a classification task's ``classnames`` and
    ``template``, a text task's ``metric`` and lengths); the module builds it from its task stream.
    """

    index: int
    name: str
    spec: Any


class StepLoss(NamedTuple):
    """A training batch's loss: what to optimise, what to log as ``train/loss``, and the batch size."""

    loss: Tensor
    logged: Tensor
    batch_size: int


class EvalScores(NamedTuple):
    """A batch's per-example scores (0–100) by view: ``primary_view`` (``""`` if it is the only one) and ``views``.

    ``records``: one JSON-ready dict per example (prompt, answer, prediction, ...), written to
    ``<log_dir>/predictions/<task>.jsonl`` by ``moram test``; None when the backbone keeps none.
    """

    scores: dict[str, Tensor]
    records: list[dict[str, Any]] | None = None


class Backbone:
    """Base of backbone plugins (see the module docstring). Subclasses implement the five methods.

    Class attributes a subclass may set:

    * ``views``: views of the score logged beside the primary one (under the score key), as view name ->
      metric prefix (CLIP logs its task-aware and task-agnostic views); each view but the primary gets
      its own metrics file;
    * ``primary_view``: the name of the view the primary score is (written into the metrics file), or ``""``.
    """

    views: dict[str, str] = {}
    primary_view: str = ""
    tokenizer: Any = None

    # ------------------------------------------------------------------ pickling
    def reset(self) -> None:
        """Clear what the backbone caches between steps (called after unpickling; subclasses add theirs)."""

    def __getstate__(self) -> dict[str, Any]:
        """Options only: the tokenizer and runtime caches (names starting with ``_``) are rebuilt, not pickled.

        A module built in Python keeps its backbone among its hyperparameters, which checkpoints pickle.
        """
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "tokenizer"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokenizer = None
        self.reset()

    # ------------------------------------------------------------------ construction
    def default_method(self) -> MethodConfig:
        """The method when ``model.method`` is null: MoRAM with the paper's settings for this kind of model."""
        from moram.atoms.config import MoRAMConfig

        return MoRAMConfig()

    def build_options(self) -> dict[str, Any]:
        """The options that decide the frozen weights (recorded in checkpoints to refuse another backbone)."""
        return {}

    def build(self) -> nn.Module:
        """The frozen pre-trained model, unadapted."""
        raise NotImplementedError

    def adapt(
        self, model: nn.Module, method: MethodConfig, *, max_tasks: int, targets: list[str] | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Inject ``method`` into ``targets`` of ``model`` (:meth:`default_targets` when None); the adapted names.

        What :class:`~moram.module.ContinualModule` does in ``configure_model``; not meant to be overridden
        (a plugin says which modules to adapt with :meth:`default_targets`).
        """
        chosen = list(targets) if targets is not None else self.default_targets(model)
        return method.inject(model, chosen, max_tasks=max_tasks, seed=seed)

    def default_targets(self, model: nn.Module) -> list[str]:
        """The patterns every method adapts in ``model`` (from :meth:`build`) when ``model.targets`` is null."""
        raise NotImplementedError

    # ------------------------------------------------------------------ steps
    def training_loss(self, host: ContinualModule, batch: Any, task: TaskInfo) -> StepLoss:
        """The loss of a training ``batch`` of ``task`` (``host.model`` is the adapted model)."""
        raise NotImplementedError

    def start_eval(self, host: ContinualModule, tasks: list[TaskInfo]) -> None:
        """Called once before an evaluation pass over ``tasks``, every task of the stream (e.g. to encode prompts)."""

    def eval_scores(self, host: ContinualModule, batch: Any, task: TaskInfo, keep_records: bool) -> EvalScores:
        """Per-example scores of an evaluation ``batch`` of ``task`` (see :class:`EvalScores`)."""
        raise NotImplementedError

    def predict(self, host: ContinualModule, batch: Any, task: TaskInfo) -> Any:
        """What ``moram predict`` returns for ``batch`` of ``task``."""
        raise NotImplementedError
