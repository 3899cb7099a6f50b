"""Storage of one rank-r LoRA per task, shared by O-LoRA, MoE-LoRA and the rank-r experts ablation.

Each task adds one LoRA (an *expert* when something routes over them) ``e``: ``A_e`` (r, d_in) and
``B_e`` (d_out, r). Like the atom bank (DESIGN.md §3) the parameter set never changes during a run:
frozen LoRAs live in buffers (``frozen_A`` (max_tasks - 1, r, d_in), ``frozen_B`` (max_tasks - 1,
d_out, r)), the present task's in Parameters (``current_A``, ``current_B``). :class:`LoRAStoreLinear`
holds that storage; :class:`ExpertStoreLinear` adds what routing over experts needs: an expert not
trained since the last consolidation takes no part in inference routing (DESIGN.md §1, item 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import ContinualLinear
from moram.distributed import assign_full, full_value


class LoRAStoreLinear(ContinualLinear):
    """A frozen linear map plus one rank-r LoRA per task in fixed-capacity storage (no routing of its own).

    Task ``t``'s LoRA is ``current_A`` / ``current_B`` while it trains; :meth:`end_task` copies it into
    ``frozen_A[t]`` / ``frozen_B[t]`` and :meth:`start_task` draws the next one (A Kaiming-uniform from
    the task's generator, B zero). Subclasses say how the LoRAs combine (:meth:`stacked`).
    """

    frozen_A: Tensor
    frozen_B: Tensor

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, *, rank: int, max_tasks: int, scale: float,
        seed: int = 0,
    ) -> None:
        super().__init__(base, in_features, out_features, max_tasks=max_tasks, seed=seed)
        self.rank, self.scale = rank, scale
        kw = self.factory_kwargs
        self.current_A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.current_B = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.register_buffer("frozen_A", torch.zeros(max_tasks - 1, rank, in_features, **kw))
        self.register_buffer("frozen_B", torch.zeros(max_tasks - 1, out_features, rank, **kw))
        self.draw_current()

    @torch.no_grad()
    def draw_current(self) -> None:
        """Draw the present task's LoRA: A Kaiming-uniform from the task's generator, B zero."""
        assign_full(self.current_A, self.kaiming_rows(self.rank, self.task_index))
        assign_full(self.current_B, torch.zeros(self.out_features, self.rank))

    @torch.no_grad()
    def end_task(self) -> None:
        """Freeze the present LoRA into the next slot."""
        n = self.task_index
        self.frozen_A[n].copy_(full_value(self.current_A))
        self.frozen_B[n].copy_(full_value(self.current_B))

    def start_task(self) -> None:
        """Draw the new task's LoRA."""
        self.draw_current()

    def stacked(self, use_current: bool) -> tuple[Tensor, Tensor]:
        """Stacked ``A`` ``(E·r, d_in)`` and ``B`` ``(d_out, E·r)`` of the frozen LoRAs (and the present one)."""
        n, r = self.task_index, self.rank
        a = [self.frozen_A[:n].reshape(n * r, self.in_features)]
        b = [self.frozen_B[:n].permute(1, 0, 2).reshape(self.out_features, n * r)]
        if use_current:
            a.append(self.current_A)
            b.append(self.current_B)
        return torch.cat(a), torch.cat(b, dim=1)

    def current_parameters(self) -> list[nn.Parameter]:
        return [self.current_A, self.current_B]


class ExpertStoreLinear(LoRAStoreLinear):
    """Per-task rank-r experts that a subclass routes over; an untrained expert takes no part in inference."""

    current_live: Tensor

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, *, rank: int, max_tasks: int, scale: float,
        seed: int = 0,
    ) -> None:
        super().__init__(base, in_features, out_features, rank=rank, max_tasks=max_tasks, scale=scale, seed=seed)
        self.register_buffer("current_live", torch.zeros((), dtype=torch.bool, device=self.factory_kwargs["device"]))
        self._live = False

    def _set_live(self, live: bool) -> None:
        self._live = live
        self.current_live.fill_(live)

    def start_task(self) -> None:
        """Draw the new task's expert; it routes at inference only once trained."""
        super().start_task()
        self._set_live(False)

    def uses_current(self) -> bool:
        """Whether the current expert routes now: always in training, at inference once trained."""
        if self.training and not self._live and torch.is_grad_enabled() and self.current_A.requires_grad:
            self._set_live(True)
        return self.training or self._live

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

    def sync_from_state(self) -> None:
        super().sync_from_state()
        self._live = bool(self.current_live)

    def upgrade_state(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Files written before the experts were LoRA-named: ``*_keys`` = A, ``*_values`` = Bᵀ."""
        renames = {"current_keys": "current_A", "frozen_keys": "frozen_A"}
        for old, new in renames.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if prefix + "current_values" in state_dict and prefix + "current_B" not in state_dict:
            state_dict[prefix + "current_B"] = state_dict.pop(prefix + "current_values").T.contiguous()
        if prefix + "frozen_values" in state_dict and prefix + "frozen_B" not in state_dict:
            state_dict[prefix + "frozen_B"] = state_dict.pop(prefix + "frozen_values").transpose(1, 2).contiguous()
