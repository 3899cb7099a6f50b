"""The baseline methods' configs, chosen by ``model.method`` (a ``class_path``) like MoRAM's.

Every method is a frozen dataclass of its own hyperparameters (:class:`~moram.adapters.method.MethodConfig`);
it injects its layers (:class:`~moram.adapters.layer.ContinualLinear`) into the same targets
(``model.targets``) through the same injector, holding the same number of tasks (``model.max_tasks``)
and seeded by the same ``model.seed``, and runs under the same protocol and callbacks::

    model:
      init_args:
        method:
          class_path: moram.baselines.MoELoRAConfig
          init_args: {rank: 8, top_k: 2}

or on the command line ``--model.method MoELoRAConfig --model.method.rank 8``. MoRAM's own ablations
(k, tau, delta off, absolute scores) are options of :class:`moram.atoms.MoRAMConfig`, the default
method: ``--model.method.top_k 2``, ``--model.method.temperature 0.1``,
``--model.method.signed_scores false``; delta off is ``threshold: null`` in the YAML, or
``--model.method.threshold -1`` on the command line (normalised scores are >= -1, so nothing is gated).

The names of earlier versions (``SequentialLoRA``, ``OLoRA``, ``MoELoRA``, ``RankRExperts``,
``ZeroShot``) are the same classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from moram.adapters.layer import ContinualLinear
from moram.adapters.method import AdapterMethod, MethodConfig
from moram.baselines.experts import ExpertBankLinear
from moram.baselines.lora import LoRALinear
from moram.baselines.moe_lora import MoELoRALinear
from moram.baselines.olora import OLoRALinear

__all__ = [
    "AdapterMethod",
    "MethodConfig",
    "MoELoRA",
    "MoELoRAConfig",
    "OLoRA",
    "OLoRAConfig",
    "RankRExperts",
    "RankRExpertsConfig",
    "SequentialLoRA",
    "SequentialLoRAConfig",
    "ZeroShot",
    "ZeroShotConfig",
]


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    """No adapter: the backbone as it is. Training steps do nothing; every row equals the zero-shot row."""

    def inject(self, model: nn.Module, targets: Sequence[str], *, max_tasks: int, seed: int = 0) -> list[str]:
        model.requires_grad_(False)
        return []


@dataclass(frozen=True)
class SequentialLoRAConfig(MethodConfig):
    """One LoRA per target layer trained through all tasks (:class:`~moram.baselines.lora.LoRALinear`).

    Args:
        rank: rank of the one LoRA (not per task: the same LoRA serves every task).
        scale: multiplier of the LoRA output (alpha / rank).
    """

    rank: int = 8
    scale: float = 1.0

    layer_class: ClassVar[type[ContinualLinear] | None] = LoRALinear

    def __post_init__(self) -> None:
        self.check("rank", self.rank >= 1, "an integer >= 1")


@dataclass(frozen=True)
class MoELoRAConfig(MethodConfig):
    """Router + top-k gating over per-task LoRA experts (:class:`~moram.baselines.moe_lora.MoELoRALinear`).

    Args:
        rank: rank of each task's LoRA expert (one expert per task).
        top_k: experts mixed per token (2: top-2 gating).
        scale: multiplier of the experts' output.
    """

    rank: int = 8
    top_k: int = 2
    scale: float = 1.0

    layer_class: ClassVar[type[ContinualLinear] | None] = MoELoRALinear

    def __post_init__(self) -> None:
        self.check("rank", self.rank >= 1, "an integer >= 1")
        self.check("top_k", self.top_k >= 1, "an integer >= 1")


@dataclass(frozen=True)
class RankRExpertsConfig(MethodConfig):
    """MoRAM's self-activated routing over rank-r experts (:class:`~moram.baselines.experts.ExpertBankLinear`).

    Args:
        rank: rank of each task's expert (one expert per task).
        top_k: experts selected per token, k = min(max(top_k, 2), E).
        temperature: softmax temperature tau of the normalised expert scores.
        threshold: inference-only gate delta on the normalised scores; null switches it off.
        scale: multiplier of the experts' output.
    """

    rank: int = 8
    top_k: int = 2
    temperature: float = 0.01
    threshold: float | None = 0.2
    scale: float = 1.0

    layer_class: ClassVar[type[ContinualLinear] | None] = ExpertBankLinear

    def __post_init__(self) -> None:
        self.check("rank", self.rank >= 1, "an integer >= 1")
        self.check("top_k", self.top_k >= 1, "an integer >= 1")
        self.check("temperature", self.temperature > 0, "a float > 0")


@dataclass(frozen=True)
class OLoRAConfig(MethodConfig):
    """O-LoRA: a LoRA per task, orthogonal to the earlier tasks' (:class:`~moram.baselines.olora.OLoRALinear`).

    Earlier tasks' LoRAs are frozen and summed; the present one's ``A`` is pushed orthogonal to every
    earlier ``A`` by a loss term. Defaults are the official O-LoRA code's (T5-large, orders 1-3).

    Args:
        rank: rank r of each task's LoRA (O-LoRA: 8).
        scale: multiplier of every LoRA's output, ``lora_alpha / r`` (O-LoRA: 32 / 8 = 4).
        dropout: dropout on the LoRAs' input in training (O-LoRA: 0.1).
        lambda_orth: lambda_1, weight of the L1 norm of ``A_t A_s^T`` summed over earlier tasks s (O-LoRA: 0.5).
        lambda_l2: lambda_2, weight of ``||A_t||_F + ||B_t||_F`` of the present LoRA (O-LoRA: 0).
    """

    rank: int = 8
    scale: float = 4.0
    dropout: float = 0.1
    lambda_orth: float = 0.5
    lambda_l2: float = 0.0

    layer_class: ClassVar[type[ContinualLinear] | None] = OLoRALinear

    runtime_options: ClassVar[tuple[str, ...]] = ("dropout",)

    def __post_init__(self) -> None:
        self.check("rank", self.rank >= 1, "an integer >= 1")
        self.check("dropout", 0.0 <= self.dropout < 1.0, "a float in [0, 1)")


ZeroShot = ZeroShotConfig
SequentialLoRA = SequentialLoRAConfig
MoELoRA = MoELoRAConfig
RankRExperts = RankRExpertsConfig
OLoRA = OLoRAConfig
