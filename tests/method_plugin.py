"""A user's own method, outside the package: a config class plus a layer class (README "Your own method").

Every task gets a fresh rank-r LoRA; earlier tasks' LoRAs are frozen and all of them are summed. The
config holds the method's options; the layer declares its per-task tensors (the layer base keeps them
in fixed slots, counts tasks, seeds, loads and saves) and says how they compute.
``--model.method method_plugin.SummedLoRAConfig --model.method.rank 4``.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from moram.adapters import ContinualLinear, LayerCost, MethodConfig


class SummedLoRALinear(ContinualLinear):
    def __init__(self, base, in_features, out_features, config, *, max_tasks, seed=0):
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.add_task_tensor("A", (config.rank, in_features), init="kaiming")  # current_A, frozen_A
        self.add_task_tensor("B", (config.rank, out_features), init="zeros")  # current_B, frozen_B

    def delta(self, x):
        a = self.frozen_task_tensor("A"), self.current_A  # (task_index * r, d_in), (r, d_in)
        b = self.frozen_task_tensor("B"), self.current_B  # (task_index * r, d_out), (r, d_out)
        h = x.to(self.current_A.dtype)
        return self.config.scale * sum(F.linear(F.linear(h, ai), bi.T) for ai, bi in zip(a, b, strict=True))

    def cost(self, num_tasks):
        per_task = self.config.rank * (self.in_features + self.out_features)
        return LayerCost(per_task, num_tasks * per_task, 2 * num_tasks * per_task)


@dataclass(frozen=True)
class SummedLoRAConfig(MethodConfig):
    """One LoRA per task, all summed.

    Args:
        rank: rank of each task's LoRA.
        scale: multiplier of their sum.
    """

    rank: int = 4
    scale: float = 1.0
    layer_class: ClassVar[type] = SummedLoRALinear
