"""The baseline methods, chosen by ``model.method`` (a ``class_path``) of moram's LightningModules.

Every method injects its layers (:class:`~moram.adapters.layer.ContinualLinear`) into the same
targets through the same injector and runs under the same protocol and callbacks;
``model.method: null`` (the default) is MoRAM (:class:`moram.atoms.MoRAM`) with ``model.atoms``::

    model:
      init_args:
        method:
          class_path: moram.baselines.MoELoRA
          init_args: {rank: 8, top_k: 2}

or on the command line ``--model.method moram.baselines.SequentialLoRA --model.method.rank 8``.
MoRAM's own ablations (k, tau, delta off, absolute scores) are ``model.atoms`` options:
``--model.atoms.top_k 2``, ``--model.atoms.temperature 0.1``, ``--model.atoms.signed_scores false``;
delta off is ``threshold: null`` in the YAML, or ``--model.atoms.threshold -1`` on the command line
(normalised scores are >= -1, so nothing is gated; jsonargparse rejects ``null`` for that nested flag).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from moram.adapters.layer import ContinualLinear
from moram.adapters.method import AdapterMethod

__all__ = ["AdapterMethod", "MoELoRA", "OLoRA", "RankRExperts", "SequentialLoRA", "ZeroShot"]


class ZeroShot(AdapterMethod):
    """No adapter: the backbone as it is. Training steps do nothing; every row equals the zero-shot row."""

    def inject(self, model: nn.Module, targets: Sequence[str], *, max_tasks: int, seed: int = 0) -> list[str]:
        model.requires_grad_(False)
        return []


class SequentialLoRA(AdapterMethod):
    """One LoRA per target layer trained through all tasks (:class:`~moram.baselines.lora.LoRALinear`).

    Args:
        rank: rank of the one LoRA (not per task: the same LoRA serves every task).
        scale: multiplier of the LoRA output (alpha / rank).
    """

    def __init__(self, rank: int = 8, scale: float = 1.0) -> None:
        self.rank, self.scale = rank, scale

    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        from moram.baselines.lora import LoRALinear

        return LoRALinear(
            base, in_features, out_features, rank=self.rank, max_tasks=max_tasks, scale=self.scale, seed=seed
        )


class MoELoRA(AdapterMethod):
    """Router + top-k gating over per-task LoRA experts (:class:`~moram.baselines.moe_lora.MoELoRALinear`).

    Args:
        rank: rank of each task's LoRA expert (one expert per task).
        top_k: experts mixed per token (2: top-2 gating).
        scale: multiplier of the experts' output.
    """

    def __init__(self, rank: int = 8, top_k: int = 2, scale: float = 1.0) -> None:
        self.rank, self.top_k, self.scale = rank, top_k, scale

    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        from moram.baselines.moe_lora import MoELoRALinear

        return MoELoRALinear(
            base, in_features, out_features, rank=self.rank, max_tasks=max_tasks, top_k=self.top_k, scale=self.scale,
            seed=seed,
        )


class RankRExperts(AdapterMethod):
    """MoRAM's self-activated routing over rank-r experts (:class:`~moram.baselines.experts.ExpertBankLinear`).

    Args:
        rank: rank of each task's expert (one expert per task).
        top_k: experts selected per token, k = min(max(top_k, 2), E).
        temperature: softmax temperature tau of the normalised expert scores.
        threshold: inference-only gate delta on the normalised scores; null switches it off.
        scale: multiplier of the experts' output.
    """

    def __init__(
        self, rank: int = 8, top_k: int = 2, temperature: float = 0.01, threshold: float | None = 0.2,
        scale: float = 1.0,
    ) -> None:
        self.rank, self.top_k, self.temperature, self.threshold, self.scale = rank, top_k, temperature, threshold, scale

    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        from moram.baselines.experts import ExpertBankLinear

        return ExpertBankLinear(
            base, in_features, out_features, rank=self.rank, max_tasks=max_tasks, top_k=self.top_k,
            temperature=self.temperature, threshold=self.threshold, scale=self.scale, seed=seed,
        )


class OLoRA(AdapterMethod):
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

    def __init__(
        self, rank: int = 8, scale: float = 4.0, dropout: float = 0.1, lambda_orth: float = 0.5,
        lambda_l2: float = 0.0,
    ) -> None:
        self.rank, self.scale, self.dropout = rank, scale, dropout
        self.lambda_orth, self.lambda_l2 = lambda_orth, lambda_l2

    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        from moram.baselines.olora import OLoRALinear

        return OLoRALinear(
            base, in_features, out_features, rank=self.rank, max_tasks=max_tasks, scale=self.scale,
            dropout=self.dropout, lambda_orth=self.lambda_orth, lambda_l2=self.lambda_l2, seed=seed,
        )
