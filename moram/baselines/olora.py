r"""O-LoRA: one LoRA per task, its ``A`` pushed orthogonal to every earlier task's (Wang et al., EMNLP 2023 Findings).

"Orthogonal Subspace Learning for Language Model Continual Learning". Task ``t`` trains a fresh
LoRA ``A_t`` (r, d_in), ``B_t`` (d_out, r); the earlier ones are frozen and keep contributing::

    y = base(x) + scale · Σ_{s ≤ t} B_s A_s drop(x)                     (no router, no task id)

    penalty = λ₁ · Σ_{s < t} Σ_ij |(A_t A_sᵀ)_ij|  +  λ₂ · (‖A_t‖_F + ‖B_t‖_F)

The penalty is added to the training loss (:meth:`OLoRALinear.penalty`, summed over layers by
:func:`moram.module.adapter_penalty`). Both terms are those of the official trainer
(``cmnfriend/O-LoRA``, ``src/uie_trainer_lora.py``): the L1 norm of the overlap matrix, and the
*unsquared* Frobenius norm of each new matrix (``torch.norm(param, p=2)`` summed over ``loranew_A``
and ``loranew_B``). Defaults are that code's settings: r 8, ``lora_alpha`` 32 (scale 32 / 8 = 4),
``lora_dropout`` 0.1, λ₁ 0.5, λ₂ 0 (``scripts/order_*.sh``).

The LoRAs live in :class:`~moram.baselines.expert_store.LoRAStoreLinear`'s fixed-capacity storage
(docs/design.md §3): frozen ones in buffers ``frozen_A`` / ``frozen_B``, the present task's in Parameters
``current_A`` / ``current_B``, copied into the next slot and re-drawn at a boundary.
Every LoRA has ``B`` zero until trained, so the present one needs no "untrained" flag: it adds nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import LayerCost
from moram.baselines.expert_store import LoRAStoreLinear
from moram.distributed import full_value

if TYPE_CHECKING:  # the config imports this module (its layer_class)
    from moram.baselines.method import OLoRAConfig


class OLoRALinear(LoRAStoreLinear):
    """A frozen linear map plus one LoRA per task, the present one regularised by :meth:`penalty`.

    Options (rank, scale, dropout, lambda_orth, lambda_l2): :class:`~moram.baselines.method.OLoRAConfig`.

    Example:
        >>> layer = OLoRALinear(nn.Linear(8, 4), 8, 4, rank=2, max_tasks=3)
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer.eval()(x), layer.base(x))  # B starts at zero
        True
        >>> float(layer.penalty())  # no earlier task, lambda_l2 = 0
        0.0
    """

    seed_namespace = "moram-olora"

    config: OLoRAConfig

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: OLoRAConfig | None = None, *,
        max_tasks: int, seed: int = 0, **options: Any,
    ) -> None:
        if config is None:  # the options as keywords
            from moram.baselines.method import OLoRAConfig

            config = OLoRAConfig(**options)
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.dropout, self.lambda_orth, self.lambda_l2 = config.dropout, config.lambda_orth, config.lambda_l2

    # ------------------------------------------------------------------ function
    def delta(self, x: Tensor) -> Tensor:
        h = x.to(self.current_A.dtype)
        if self.training and self.dropout:
            h = F.dropout(h, self.dropout)
        a, b = self.stacked(use_current=True)  # ((n+1)·r, d_in), (d_out, (n+1)·r)
        return self.scale * F.linear(F.linear(h, a), b)  # (..., (n+1)·r) -> (..., d_out)

    def penalty(self) -> Tensor:
        """``λ₁ Σ_{s<t} Σ|A_t A_sᵀ| + λ₂ (‖A_t‖_F + ‖B_t‖_F)`` of the present task ``t`` (a scalar with grad)."""
        a_t = full_value(self.current_A)
        total = a_t.new_zeros((), dtype=torch.float32)
        n = self.task_index
        if self.lambda_orth and n:
            earlier = self.frozen_A[: n * self.rank]  # (n·r, d_in)
            total = total + self.lambda_orth * (a_t.float() @ earlier.float().T).abs().sum()  # (r, n·r) overlaps
        if self.lambda_l2:
            b_t = full_value(self.current_B)
            total = total + self.lambda_l2 * (torch.linalg.norm(a_t.float()) + torch.linalg.norm(b_t.float()))
        return total

    def cost(self, num_tasks: int) -> LayerCost:
        """One LoRA trained per task; after T tasks T LoRAs stored and all run: ``2·T·r(d_in + d_out)`` FLOPs."""
        per_task = self.rank * (self.in_features + self.out_features)
        return LayerCost(per_task, num_tasks * per_task, 2 * num_tasks * per_task)
