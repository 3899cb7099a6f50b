r"""Rank-r experts: MoRAM's self-activated routing with a rank-r expert in place of each atom.

Ablation of the rank-1 granularity. Each task adds one expert ``e``, a rank-r LoRA ``A_e`` (r, d_in), ``B_e``
(d_out, r); there is no router: an expert is scored by its own ``A_e``. For a
token ``x``::

    z_e = A_e x                         (r)    the expert's key response
    u_e = ‖z_e‖₂                               its activation: the norm of that response
    s   = u / (‖u‖₂ + eps)              (E)    normalised over the experts of this layer
    top = the k largest s,  k = min(max(top_k, 2), E)
    w   = softmax(s[top] / tau), 0 elsewhere;  w_e *= [s_e ≥ delta] at inference only
    y   = base(x) + scale · Σ_e w_e B_e z_e

i.e. exactly MoRAM's formula (docs/design.md §1) where an atom's scalar response ``p_i`` becomes the
expert's r-dim response ``z_e`` and its score the norm of it (so scores are ≥ 0 and signed and
absolute selection coincide). With r = 1 and one atom per task this is MoRAM with absolute scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.adapters.layer import LayerCost
from moram.atoms.routing import normalized_topk_weights
from moram.baselines.expert_store import ExpertStoreLinear

if TYPE_CHECKING:  # the config imports this module (its layer_class)
    from moram.baselines.method import RankRExpertsConfig


class ExpertBankLinear(ExpertStoreLinear):
    """A frozen linear map plus self-routed rank-r experts, one per task.

    Example:
        >>> layer = ExpertBankLinear(nn.Linear(8, 4), 8, 4, rank=2, max_tasks=3)
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # B starts at zero
        True
    """

    eps: float = 1e-6

    config: RankRExpertsConfig

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: RankRExpertsConfig | None = None, *,
        max_tasks: int, seed: int = 0, **options: Any,
    ) -> None:
        if config is None:  # the options as keywords
            from moram.baselines.method import RankRExpertsConfig

            config = RankRExpertsConfig(**options)
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.top_k, self.temperature, self.threshold = config.top_k, config.temperature, config.threshold

    def route(self, z: Tensor) -> Tensor:
        """Expert weights ``w`` ``(..., E)`` from the responses ``z`` ``(..., E, r)``."""
        u = torch.linalg.vector_norm(z.float(), dim=-1)  # (..., E): each expert's score, never negative
        return normalized_topk_weights(
            u, top_k=self.top_k, temperature=self.temperature, eps=self.eps,
            threshold=None if self.training else self.threshold,
        )

    def delta(self, x: Tensor) -> Tensor | None:
        use_current = self.uses_current
        if self.task_index == 0 and not use_current:
            return None
        h = x.to(self.current_A.dtype)
        a, b = self.stacked(use_current)
        z = F.linear(h, a).unflatten(-1, (-1, self.rank))  # (..., E, r)
        w = self.route(z)
        if self.route_hooks:
            self.report_route(w)
        return self.mix(z, w, b)

    def cost(self, num_tasks: int) -> LayerCost:
        """Every expert's ``A`` scores the token (``2·E·r·d_in``); the k selected experts' ``B`` ``2·k·r·d_out``."""
        r, d_in, d_out = self.rank, self.in_features, self.out_features
        k = min(max(self.top_k, 2), num_tasks)
        flops = 2 * num_tasks * r * d_in + 2 * k * r * d_out
        return LayerCost(r * (d_in + d_out), num_tasks * r * (d_in + d_out), flops)
