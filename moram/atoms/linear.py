"""The routed layer: a frozen base map plus an atom bank, ``y = base(x) + bank(x)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moram.accounting import LayerCost
from moram.atoms.bank import AtomBank
from moram.atoms.config import AtomConfig


class AtomLinear(nn.Module):
    """Wrap a frozen linear map (kept as is, as ``self.base``) and add a bank of rank-1 atoms.

    ``base`` may be any module computing a linear map of the last dimension whose widths
    injection knows (``nn.Linear``, GPT-2's transposed ``Conv1D``, or a registered type); the
    bank never reads the base weight, so the layout of that weight does not matter.

    Example:
        >>> layer = AtomLinear(nn.Linear(8, 4), 8, 4, AtomConfig(rank=2, max_tasks=2))
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # values start at zero
        True
    """

    def __init__(self, base: nn.Module, in_features: int, out_features: int, config: AtomConfig, *, seed: int = 0):
        super().__init__()
        self.base = base
        weight = next(base.parameters(), None)
        self.bank = AtomBank(
            in_features,
            out_features,
            config,
            seed=seed,
            device=None if weight is None else weight.device,
            dtype=None if weight is None or not weight.is_floating_point() else weight.dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.bank.add_to(x, self.base(x))  # the addition fused into the bank's value sum where possible

    # Delegations that code written for the plain layer expects (dtype checks, weight tying).
    @property
    def weight(self) -> Tensor:
        """The base layer's weight."""
        return self.base.weight  # type: ignore[return-value]

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias."""
        return getattr(self.base, "bias", None)

    @property
    def in_features(self) -> int:
        return self.bank.in_features

    @property
    def out_features(self) -> int:
        return self.bank.out_features

    @property
    def keys(self) -> Tensor:
        """All existing keys, frozen first then current: ``(N, d_in)``."""
        return self.bank.keys

    @property
    def values(self) -> Tensor:
        """All existing values, frozen first then current: ``(N, d_out)``."""
        return self.bank.values

    def consolidate(self) -> None:
        """Freeze the current atoms and start fresh ones (see :meth:`AtomBank.consolidate`)."""
        self.bank.consolidate()

    # The continual-layer protocol (moram.protocols.ContinualLayer) and the routed-layer protocol
    # (moram.protocols.RoutedLayer): what callbacks may use without knowing the bank.
    @property
    def task_index(self) -> int:
        """Tasks consolidated so far (the index of the task the current atoms belong to)."""
        return self.bank.task_index

    @property
    def max_tasks(self) -> int:
        """Tasks the bank holds (``capacity // rank``)."""
        return self.bank.capacity // self.bank.rank

    def current_parameters(self) -> list[nn.Parameter]:
        """The trainable Parameters of the present task: current keys and values."""
        return [self.bank.current_keys, self.bank.current_values]

    @property
    def units_per_task(self) -> int:
        """Routed units (atoms) added per task: the rank."""
        return self.bank.rank

    @property
    def route_capacity(self) -> int:
        """Routed units the layer can ever hold."""
        return self.bank.capacity

    def register_route_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(w)`` with the routing weights ``(..., N)`` of every forward (see :class:`AtomBank`)."""
        handle = RemovableHandle(self.bank.route_hooks)
        self.bank.route_hooks[handle.id] = hook
        return handle

    def cost(self, num_tasks: int) -> LayerCost:
        """Parameters and FLOPs of the atoms (DESIGN.md §1) after ``num_tasks`` tasks.

        Per token with ``N = num_tasks × r`` atoms: the keys cost ``2·N·d_in``; only the
        ``k = min(max(top_k, 2), N)`` selected values are needed, ``2·k·d_out`` (routing statistics, O(N),
        are left out).
        """
        r, d_in, d_out = self.bank.rank, self.in_features, self.out_features
        n = num_tasks * r
        k = min(max(self.bank.top_k, 2), n)
        return LayerCost(r * (d_in + d_out), n * (d_in + d_out), 2 * n * d_in + 2 * k * d_out)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the current atoms of the present task (frozen atoms are untouched)."""
        self.bank.reset_current()
