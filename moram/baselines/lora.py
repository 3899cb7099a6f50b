"""Sequential LoRA: one rank-r LoRA per target layer, trained through every task, never frozen.

``y = base(x) + scale · B A x`` with ``A`` = ``lora_A`` (r, d_in) Kaiming-uniform and ``B`` = ``lora_B``
(d_out, r) zero at the start. Task boundaries only count the task (the callback still resets Adam's
state and restarts the LR schedule, as for the atoms), so the same weights keep changing: the
classic forgetting baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import ContinualLinear, LayerCost
from moram.distributed import assign_full

if TYPE_CHECKING:  # the config imports this module (its layer_class)
    from moram.baselines.method import SequentialLoRAConfig


class LoRALinear(ContinualLinear):
    """A frozen linear map plus one LoRA of rank ``rank`` shared by all tasks.

    Example:
        >>> from moram.baselines import SequentialLoRAConfig
        >>> layer = LoRALinear(nn.Linear(8, 4), 8, 4, SequentialLoRAConfig(rank=2), max_tasks=3)
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # B starts at zero
        True
    """

    config: SequentialLoRAConfig

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: SequentialLoRAConfig | None = None, *,
        max_tasks: int, seed: int = 0, **options: Any,
    ) -> None:
        if config is None:  # the options as keywords
            from moram.baselines.method import SequentialLoRAConfig

            config = SequentialLoRAConfig(**options)
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.rank, self.scale = config.rank, config.scale
        rank = config.rank
        kw = self.factory_kwargs
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **kw))
        assign_full(self.lora_A, self.kaiming_rows(rank, 0))

    def delta(self, x: Tensor) -> Tensor:
        h = x.to(self.lora_A.dtype)
        return self.scale * F.linear(F.linear(h, self.lora_A), self.lora_B)  # (..., r) -> (..., d_out)

    def current_parameters(self) -> list[nn.Parameter]:
        """The one LoRA (it is never frozen: each task goes on training it)."""
        return [self.lora_A, self.lora_B]

    def cost(self, num_tasks: int) -> LayerCost:
        """One LoRA whatever the number of tasks: ``r(d_in + d_out)`` parameters, ``2r(d_in + d_out)`` FLOPs."""
        n = self.rank * (self.in_features + self.out_features)
        return LayerCost(n, n, 2 * n)
