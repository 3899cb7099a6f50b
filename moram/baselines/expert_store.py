"""One rank-r LoRA per task in the layer base's fixed slots: shared by O-LoRA, MoE-LoRA and rank-r experts.

Each task adds one LoRA (an *expert* when something routes over them) ``e``: ``A_e`` (r, d_in) and
``B_e`` (d_out, r), declared as the per-task tensors ``A`` and ``B`` of the layer base
(:meth:`~moram.adapters.layer.ContinualLinear.add_task_tensor`, as MoRAM's keys and values are): the
present task's in ``current_A`` / ``current_B``, earlier tasks' one after the other in ``frozen_A``
``((max_tasks - 1)·r, d_in)`` and ``frozen_B`` ``((max_tasks - 1)·d_out, r)``. :class:`LoRAStoreLinear`
says how to stack them; :class:`ExpertStoreLinear` adds what routing over experts needs (an expert not
yet trained takes no part in inference: the base's ``uses_current``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import ContinualLinear


class LoRAStoreLinear(ContinualLinear):
    """A frozen linear map plus one rank-r LoRA per task in fixed-capacity storage (no routing of its own).

    ``config`` must have ``rank`` and ``scale``. Subclasses say how the LoRAs combine (:meth:`stacked`).
    """

    frozen_A: Tensor
    frozen_B: Tensor

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: Any, *, max_tasks: int, seed: int = 0
    ) -> None:
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.rank, self.scale = int(config.rank), float(config.scale)
        self.current_A = self.add_task_tensor("A", (self.rank, in_features), init="kaiming")
        self.current_B = self.add_task_tensor("B", (out_features, self.rank), init="zeros")

    def stacked(self, use_current: bool) -> tuple[Tensor, Tensor]:
        """Stacked ``A`` ``(E·r, d_in)`` and ``B`` ``(d_out, E·r)`` of the frozen LoRAs (and the present one)."""
        n, r = self.task_index, self.rank
        a = [self.frozen_A[: n * r]]  # (n·r, d_in)
        b = [self.frozen_B[: n * self.out_features].view(n, self.out_features, r).permute(1, 0, 2).reshape(
            self.out_features, n * r)]  # (d_out, n·r)
        if use_current:
            a.append(self.current_A)
            b.append(self.current_B)
        return torch.cat(a), torch.cat(b, dim=1)


class ExpertStoreLinear(LoRAStoreLinear):
    """Per-task rank-r experts that a subclass routes over; an untrained expert takes no part in inference."""

    def mix(self, z: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """``scale · Σ_e w_e B_e z_e`` ``(..., d_out)`` from responses ``z`` (..., E, r) and weights ``w`` (..., E)."""
        coef = (z * w.unsqueeze(-1).to(z.dtype)).flatten(-2)  # (..., E·r)
        return self.scale * F.linear(coef, b)  # (..., d_out)

    @property
    def units_per_task(self) -> int:
        """Routed units per task: one expert."""
        return 1

    @property
    def route_capacity(self) -> int:
        return self.max_tasks
