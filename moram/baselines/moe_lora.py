r"""MoE-LoRA: a learned router over per-task LoRA experts, top-2 gating.

::

    g = softmax over the top-k of (R x)[:E]      R: router (max_tasks, d_in), E experts that exist
    y = base(x) + scale · Σ_{e in top-k} g_e B_e A_e x

Each task adds one rank-r expert (capacity grows per task like MoRAM's atoms); at the boundary the
current expert is frozen for good; the router is never frozen and keeps training on every task
(the usual MoE-LoRA continual baseline, e.g. MoE-Adapters, CVPR 2024, without its task-id
selector). The gate sums to 1 over the selected experts. No load-balancing loss. Like every
trained Parameter, the router's Adam state is zeroed at each boundary by ``TaskBoundaryCallback``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import LayerCost
from moram.baselines.expert_store import ExpertStoreLinear
from moram.distributed import assign_full

if TYPE_CHECKING:  # the config imports this module (its layer_class)
    from moram.baselines.method import MoELoRAConfig


class MoELoRALinear(ExpertStoreLinear):
    """A frozen linear map plus a router and one rank-r LoRA expert per task.

    Example:
        >>> layer = MoELoRALinear(nn.Linear(8, 4), 8, 4, rank=2, max_tasks=3)
        >>> layer.gate(torch.randn(5, 8)).sum(-1)  # one expert: all the weight
        tensor([1., 1., 1., 1., 1.], grad_fn=<SumBackward1>)
    """

    config: MoELoRAConfig

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: MoELoRAConfig | None = None, *,
        max_tasks: int, seed: int = 0, **options: Any,
    ) -> None:
        if config is None:  # the options as keywords
            from moram.baselines.method import MoELoRAConfig

            config = MoELoRAConfig(**options)
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.top_k = config.top_k
        self.router = nn.Parameter(torch.zeros(max_tasks, in_features, **self.factory_kwargs))
        assign_full(self.router, self.kaiming_rows(max_tasks, -1))

    def gate(self, x: Tensor, use_current: bool = True) -> Tensor:
        """Gate ``(..., E)``: softmax over the top-k router logits of the existing experts, 0 elsewhere."""
        num = self.task_index + (1 if use_current else 0)
        logits = F.linear(x.to(self.router.dtype), self.router[:num]).float()  # (..., E)
        k = min(self.top_k, num)
        top, idx = logits.topk(k, dim=-1)  # (..., k)
        return torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, dim=-1))

    def delta(self, x: Tensor) -> Tensor | None:
        use_current = self.uses_current
        if self.task_index == 0 and not use_current:
            return None
        h = x.to(self.current_A.dtype)
        a, b = self.stacked(use_current)
        g = self.gate(h, use_current)  # (..., E)
        if self.route_hooks:
            self.report_route(g)
        z = F.linear(h, a).unflatten(-1, (-1, self.rank))  # (..., E, r)
        return self.mix(z, g, b)

    def current_parameters(self) -> list[nn.Parameter]:
        """The current expert and the router (never frozen)."""
        return [self.current_A, self.current_B, self.router]

    def cost(self, num_tasks: int) -> LayerCost:
        """Router ``max_tasks·d_in`` plus one expert per task; per token the router's ``2·E·d_in`` and top-k experts."""
        r, d_in, d_out = self.rank, self.in_features, self.out_features
        router = self.max_tasks * d_in
        expert = r * (d_in + d_out)
        k = min(self.top_k, num_tasks)
        return LayerCost(expert + router, num_tasks * expert + router, 2 * num_tasks * d_in + 2 * k * expert)
