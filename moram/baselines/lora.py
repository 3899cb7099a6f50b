"""Sequential LoRA: one rank-r LoRA per adapted layer, trained through every task, never frozen.

``y = base(x) + scale · B A x`` with ``A`` (r, d_in) Kaiming-uniform and ``B`` zero at the start,
stored here as ``keys`` = A and ``values`` = Bᵀ (r, d_out). Task boundaries only count the task
(the callback still resets Adam's state and restarts the LR schedule, as for the atoms), so the
same weights keep changing: the classic forgetting baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.accounting import LayerCost
from moram.baselines.base import AdapterLinear
from moram.distributed import assign_full


class LoRALinear(AdapterLinear):
    """A frozen linear map plus one LoRA of rank ``rank`` shared by all tasks.

    Example:
        >>> import torch
        >>> layer = LoRALinear(nn.Linear(8, 4), 8, 4, rank=2, max_tasks=3)
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # B starts at zero
        True
    """

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, *, rank: int, max_tasks: int,
        scale: float = 1.0, seed: int = 0,
    ) -> None:
        super().__init__(base, in_features, out_features, max_tasks, seed)
        self.rank, self.scale = rank, scale
        kw = self.factory_kwargs
        self.keys = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.values = nn.Parameter(torch.zeros(rank, out_features, **kw))
        assign_full(self.keys, self._kaiming(rank, 0))

    def delta(self, x: Tensor) -> Tensor:
        h = x.to(self.keys.dtype)
        return self.scale * F.linear(F.linear(h, self.keys), self.values.T)  # (..., r) -> (..., d_out)

    def consolidate(self) -> None:
        """Count the boundary; the LoRA keeps training in the next task."""
        self._advance()

    def current_parameters(self) -> list[nn.Parameter]:
        return [self.keys, self.values]

    def cost(self, num_tasks: int) -> LayerCost:
        """One LoRA whatever the number of tasks: ``r(d_in + d_out)`` parameters, ``2r(d_in + d_out)`` FLOPs."""
        n = self.rank * (self.in_features + self.out_features)
        return LayerCost(n, n, 2 * n)

