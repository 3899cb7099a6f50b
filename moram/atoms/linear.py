"""MoRAM's continual layer: a frozen base map plus rank-1 atoms, ``y = base(x) + atoms(x)`` (docs/design.md §1).

The layer base (:class:`~moram.adapters.layer.ContinualLinear`) holds the lifecycle: task counter,
capacity, seeding, fixed slots for each task's atoms, the "untrained atoms do not route" state, route
hooks and state loading. This class adds only MoRAM's tensors — per task ``rank`` keys ``(r, d_in)``
and values ``(r, d_out)`` — and its routing: the formula is :mod:`moram.atoms.routing` (diagram and
dense reference), its fast computation :mod:`moram.atoms.kernels`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from moram.adapters.layer import ContinualLinear, LayerCost
from moram.atoms.kernels import routed_delta
from moram.atoms.routing import normalized_topk_weights, reference_delta
from moram.distributed import full_value
from moram.errors import ConfigError

if TYPE_CHECKING:  # the configs import this module (MoRAMConfig.layer_class)
    from moram.atoms.config import AtomConfig, MoRAMConfig


class AtomLinear(ContinualLinear):
    """Wrap a frozen linear map (kept as is, as ``self.base``) and add rank-1 atoms.

    ``base`` may be any module computing a linear map of the last dimension whose widths
    injection knows (``nn.Linear``, GPT-2's transposed ``Conv1D``, or a registered type); the
    atoms never read the base weight, so the layout of that weight does not matter.

    Tensors: ``current_keys`` ``(r, d_in)`` and ``current_values`` ``(r, d_out)``, the present task's
    trainable atoms (keys Kaiming-uniform from the task's generator, values zero); ``frozen_keys``
    ``((max_tasks - 1)·r, d_in)`` and ``frozen_values`` ``((max_tasks - 1)·r, d_out)``, the finished tasks'
    atoms in bank order (task 0's ``r`` rows first).

    Args:
        base: the frozen linear map.
        in_features: its input width (the keys' width).
        out_features: its output width (the values' width).
        config: MoRAM's options (an :class:`AtomConfig` also works: its ``max_tasks`` is then used).
        max_tasks: tasks the layer holds (``model.max_tasks``).
        seed: the layer's seed; task ``t``'s atoms are drawn from a generator of ``(seed, t)``.

    Example:
        >>> from moram.atoms.config import MoRAMConfig
        >>> layer = AtomLinear(nn.Linear(8, 4), 8, 4, MoRAMConfig(rank=2), max_tasks=2)
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # values start at zero
        True
        >>> layer.keys.shape, layer.values.shape  # (N, d_in), (N, d_out)
        (torch.Size([2, 8]), torch.Size([2, 4]))
    """

    seed_namespace = "moram-atoms"
    eps: float = 1e-6
    """Added to the L2 norm of the responses before dividing (docs/design.md §1)."""

    config: MoRAMConfig
    frozen_keys: Tensor
    frozen_values: Tensor

    def __init__(
        self, base: nn.Module, in_features: int, out_features: int, config: MoRAMConfig | AtomConfig | None = None,
        *, max_tasks: int | None = None, seed: int = 0,
    ):
        from moram.atoms.config import AtomConfig, MoRAMConfig

        if isinstance(config, AtomConfig):
            max_tasks = config.max_tasks if max_tasks is None else max_tasks
            config = config.method
        config = config if config is not None else MoRAMConfig()
        if max_tasks is None:
            raise ConfigError("AtomLinear needs max_tasks (or an AtomConfig with max_tasks)")
        super().__init__(base, in_features, out_features, config, max_tasks=max_tasks, seed=seed)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.current_keys = self.add_task_tensor("keys", (config.rank, in_features), init="kaiming")
        self.current_values = self.add_task_tensor("values", (config.rank, out_features), init="zeros")

    # ------------------------------------------------------------------ views
    @property
    def rank(self) -> int:
        """Atoms per task."""
        return self.config.rank

    @property
    def top_k(self) -> int:
        return self.config.top_k

    @property
    def temperature(self) -> float:
        return self.config.temperature

    @property
    def threshold(self) -> float | None:
        return self.config.threshold

    @property
    def scale(self) -> float:
        return self.config.scale

    @property
    def signed_scores(self) -> bool:
        return self.config.signed_scores

    @property
    def capacity(self) -> int:
        """Atoms the layer can ever hold: ``max_tasks × rank``."""
        return self.max_tasks * self.rank

    @property
    def num_frozen_atoms(self) -> int:
        """Frozen atoms so far (``rank ×`` finished tasks)."""
        return self.task_index * self.rank

    @property
    def num_atoms(self) -> int:
        """Atoms that exist: frozen plus the current ones."""
        return self.num_frozen_atoms + self.rank

    @property
    def num_routed(self) -> int:
        """Atoms that take part in routing in the present mode."""
        return self.num_frozen_atoms + (self.rank if self.uses_current else 0)

    def _frozen(self) -> tuple[Tensor, Tensor]:
        """The finished tasks' keys ``(n, d_in)`` and values ``(n, d_out)`` in bank order (views, no copy)."""
        n = self.num_frozen_atoms
        return self.frozen_keys[:n], self.frozen_values[:n]

    @property
    def keys(self) -> Tensor:
        """All existing keys, frozen first then current: ``(N, d_in)``."""
        return torch.cat([self._frozen()[0], full_value(self.current_keys)])

    @property
    def values(self) -> Tensor:
        """All existing values, frozen first then current: ``(N, d_out)``."""
        return torch.cat([self._frozen()[1], full_value(self.current_values)])

    # ------------------------------------------------------------------ routing
    def add_delta(self, x: Tensor, y: Tensor) -> Tensor:
        out = self._route(x, y)  # the addition fused into the value sum where possible
        return y if out is None else out

    def delta(self, x: Tensor) -> Tensor | None:
        """The atoms' contribution ``(..., d_out)`` (zeros when no atom routes)."""
        out = self._route(x, None)
        if out is None:
            return torch.zeros(*x.shape[:-1], self.out_features, dtype=self.current_values.dtype, device=x.device)
        return out

    def _route(self, x: Tensor, acc: Tensor | None) -> Tensor | None:
        """``acc`` plus the atoms' contribution (just the contribution when ``acc`` is None); None when none routes."""
        use_current = self.uses_current
        frozen_keys, frozen_values = self._frozen()
        if frozen_keys.shape[0] == 0 and not use_current:
            return None
        config = self.config
        h = self.dropout(x).to(self.current_keys.dtype)  # (..., d_in)
        threshold = None if self.training else config.threshold
        route: dict[str, Any] = dict(
            top_k=config.top_k, temperature=config.temperature, eps=self.eps, threshold=threshold,
            signed=config.signed_scores,
        )
        if not config.reference:
            return routed_delta(
                h, frozen_keys, frozen_values, self.current_keys, self.current_values, use_current=use_current,
                scale=config.scale, acc=acc, route_hooks=self.route_hooks.values(), **route,
            )
        keys, values = frozen_keys, frozen_values
        if use_current:
            keys = torch.cat([keys, self.current_keys])  # (N, d_in)
            values = torch.cat([values, self.current_values])  # (N, d_out)
        if self.route_hooks:
            self.report_route(normalized_topk_weights(h @ keys.T, **route))  # (..., N)
        out = reference_delta(h, keys, values, scale=config.scale, **route)  # (..., d_out)
        return out if acc is None else acc + out.to(acc.dtype)

    # ------------------------------------------------------------------ accounting
    @property
    def units_per_task(self) -> int:
        """Routed units (atoms) added per task: the rank."""
        return self.rank

    @property
    def route_capacity(self) -> int:
        """Routed units the layer can ever hold."""
        return self.capacity

    def cost(self, num_tasks: int) -> LayerCost:
        """Parameters and FLOPs of the atoms (docs/design.md §1) after ``num_tasks`` tasks.

        Per token with ``N = num_tasks × r`` atoms: the keys cost ``2·N·d_in``; only the
        ``k = min(max(top_k, 2), N)`` selected values are needed, ``2·k·d_out`` (routing statistics, O(N),
        are left out).
        """
        r, d_in, d_out = self.rank, self.in_features, self.out_features
        n = num_tasks * r
        k = min(max(self.top_k, 2), n)
        return LayerCost(r * (d_in + d_out), n * (d_in + d_out), 2 * n * d_in + 2 * k * d_out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", frozen={self.num_frozen_atoms}"
