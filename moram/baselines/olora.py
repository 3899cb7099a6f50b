r"""O-LoRA: one LoRA per task, its ``A`` pushed orthogonal to every earlier task's (Wang et al., EMNLP 2023 Findings).

"Orthogonal Subspace Learning for Language Model Continual Learning". Task ``t`` trains a fresh
LoRA ``A_t`` (r, d_in), ``B_t`` (d_out, r); the earlier ones are frozen and keep contributing::

    y = base(x) + scale · Σ_{s ≤ t} B_s A_s drop(x)                     (no router, no task id)

    penalty = λ₁ · Σ_{s < t} Σ_ij |(A_t A_sᵀ)_ij|  +  λ₂ · (‖A_t‖_F + ‖B_t‖_F)

The penalty is added to the training loss (:meth:`OLoRALinear.penalty`, summed over layers by
:func:`moram.module_base.adapter_penalty`). Both terms are those of the official trainer
(``cmnfriend/O-LoRA``, ``src/uie_trainer_lora.py``): the L1 norm of the overlap matrix, and the
*unsquared* Frobenius norm of each new matrix (``torch.norm(param, p=2)`` summed over ``loranew_A``
and ``loranew_B``). Defaults are that code's settings: r 8, ``lora_alpha`` 32 (scale 32 / 8 = 4),
``lora_dropout`` 0.1, λ₁ 0.5, λ₂ 0 (``scripts/order_*.sh``).

Like the expert store (DESIGN.md §3) the parameter set never changes: frozen LoRAs live in buffers
(``frozen_A`` (max_tasks - 1, r, d_in), ``frozen_B`` (max_tasks - 1, d_out, r)); the present task's in
Parameters ``current_A`` / ``current_B``, copied into the next slot and re-drawn at a boundary.
Every LoRA has ``B`` zero until trained, so the present one needs no "untrained" flag: it adds nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import ContinualLinear, LayerCost
from moram.distributed import assign_full, full_value


class OLoRALinear(ContinualLinear):
    """A frozen linear map plus one LoRA per task, the present one regularised by :meth:`penalty`.

    Args:
        base: the frozen linear map.
        in_features: its input width.
        out_features: its output width.
        rank: rank r of each task's LoRA.
        max_tasks: tasks the layer holds.
        scale: multiplier of every LoRA's output (``lora_alpha / r``).
        dropout: dropout on the input of the LoRAs, in training only.
        lambda_orth: λ₁, weight of the L1 overlap of ``A_t`` with every earlier ``A_s``.
        lambda_l2: λ₂, weight of ``‖A_t‖_F + ‖B_t‖_F``.
        seed: the layer's seed.

    Example:
        >>> layer = OLoRALinear(nn.Linear(8, 4), 8, 4, rank=2, max_tasks=3)
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer.eval()(x), layer.base(x))  # B starts at zero
        True
        >>> float(layer.penalty())  # no earlier task, lambda_l2 = 0
        0.0
    """

    seed_namespace = "moram-olora"

    frozen_A: Tensor
    frozen_B: Tensor

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, *, rank: int, max_tasks: int,
        scale: float = 4.0, dropout: float = 0.1, lambda_orth: float = 0.5, lambda_l2: float = 0.0, seed: int = 0,
    ) -> None:
        super().__init__(base, in_features, out_features, max_tasks=max_tasks, seed=seed)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.method.dropout must be in [0, 1), got {dropout}")
        self.rank, self.scale, self.dropout = rank, scale, dropout
        self.lambda_orth, self.lambda_l2 = lambda_orth, lambda_l2
        kw = self.factory_kwargs
        self.current_A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.current_B = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.register_buffer("frozen_A", torch.zeros(max_tasks - 1, rank, in_features, **kw))
        self.register_buffer("frozen_B", torch.zeros(max_tasks - 1, out_features, rank, **kw))
        self.start_task()

    # ------------------------------------------------------------------ function
    def delta(self, x: Tensor) -> Tensor:
        n, r = self.task_index, self.rank
        h = x.to(self.current_A.dtype)
        if self.training and self.dropout:
            h = F.dropout(h, self.dropout)
        a = torch.cat([self.frozen_A[:n].reshape(n * r, self.in_features), self.current_A])  # ((n+1)·r, d_in)
        b = torch.cat([self.frozen_B[:n].permute(1, 0, 2).reshape(self.out_features, n * r), self.current_B], 1)
        return self.scale * F.linear(F.linear(h, a), b)  # (..., (n+1)·r) -> (..., d_out)

    def penalty(self) -> Tensor:
        """``λ₁ Σ_{s<t} Σ|A_t A_sᵀ| + λ₂ (‖A_t‖_F + ‖B_t‖_F)`` of the present task ``t`` (a scalar with grad)."""
        a_t = full_value(self.current_A)
        total = a_t.new_zeros((), dtype=torch.float32)
        n = self.task_index
        if self.lambda_orth and n:
            earlier = self.frozen_A[:n].reshape(n * self.rank, self.in_features)  # (n·r, d_in)
            total = total + self.lambda_orth * (a_t.float() @ earlier.float().T).abs().sum()  # (r, n·r) overlaps
        if self.lambda_l2:
            b_t = full_value(self.current_B)
            total = total + self.lambda_l2 * (torch.linalg.norm(a_t.float()) + torch.linalg.norm(b_t.float()))
        return total

    # ------------------------------------------------------------------ lifecycle
    @torch.no_grad()
    def end_task(self) -> None:
        """Freeze the present LoRA into the next slot."""
        n = self.task_index
        self.frozen_A[n].copy_(full_value(self.current_A))
        self.frozen_B[n].copy_(full_value(self.current_B))

    @torch.no_grad()
    def start_task(self) -> None:
        """Draw the new task's LoRA: ``A`` Kaiming-uniform from the task's generator, ``B`` zero."""
        assign_full(self.current_A, self.kaiming_rows(self.rank, self.task_index))
        assign_full(self.current_B, torch.zeros(self.out_features, self.rank))

    def current_parameters(self) -> list[nn.Parameter]:
        return [self.current_A, self.current_B]

    def settings(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "scale": self.scale, "dropout": self.dropout, "lambda_orth": self.lambda_orth,
            "lambda_l2": self.lambda_l2, "max_tasks": self.max_tasks,
        }

    def cost(self, num_tasks: int) -> LayerCost:
        """One LoRA trained per task; after T tasks T LoRAs stored and all run: ``2·T·r(d_in + d_out)`` FLOPs."""
        per_task = self.rank * (self.in_features + self.out_features)
        return LayerCost(per_task, num_tasks * per_task, 2 * num_tasks * per_task)
