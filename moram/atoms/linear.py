"""MoRAM's continual layer: a frozen base map plus an atom bank, ``y = base(x) + bank(x)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from moram.adapters.layer import ContinualLinear, LayerCost
from moram.atoms.bank import AtomBank, AtomStateError
from moram.atoms.config import AtomConfig


class AtomLinear(ContinualLinear):
    """Wrap a frozen linear map (kept as is, as ``self.base``) and add a bank of rank-1 atoms.

    ``base`` may be any module computing a linear map of the last dimension whose widths
    injection knows (``nn.Linear``, GPT-2's transposed ``Conv1D``, or a registered type); the
    bank never reads the base weight, so the layout of that weight does not matter.

    Args:
        base: the frozen linear map.
        in_features: its input width (the keys' width).
        out_features: its output width (the values' width).
        config: the atom settings; ``config.max_tasks`` must be set.
        seed: the layer's seed; task ``t``'s atoms are drawn from a generator of ``(seed, t)``.

    Example:
        >>> layer = AtomLinear(nn.Linear(8, 4), 8, 4, AtomConfig(rank=2, max_tasks=2))
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # values start at zero
        True
        >>> layer.keys.shape, layer.values.shape  # (N, d_in), (N, d_out)
        (torch.Size([2, 8]), torch.Size([2, 4]))
    """

    capacity_option = "AtomConfig.max_tasks"

    def __init__(self, base: nn.Module, in_features: int, out_features: int, config: AtomConfig, *, seed: int = 0):
        super().__init__(base, in_features, out_features, max_tasks=config.capacity // config.rank, seed=seed)
        self.bank = AtomBank(in_features, out_features, config, seed=seed, **self.factory_kwargs)
        self.bank.route_hooks = self.route_hooks  # the layer registers hooks; the bank calls them

    def add_delta(self, x: Tensor, y: Tensor) -> Tensor:
        return self.bank.add_to(x, y)  # the addition fused into the bank's value sum where possible

    def delta(self, x: Tensor) -> Tensor | None:
        return self.bank(x)

    @property
    def keys(self) -> Tensor:
        """All existing keys, frozen first then current: ``(N, d_in)``."""
        return self.bank.keys

    @property
    def values(self) -> Tensor:
        """All existing values, frozen first then current: ``(N, d_out)``."""
        return self.bank.values

    def end_task(self) -> None:
        """Freeze the current atoms and draw fresh ones (see :meth:`AtomBank.consolidate`)."""
        self.bank.consolidate()

    def current_parameters(self) -> list[nn.Parameter]:
        """The trainable Parameters of the present task: current keys and values."""
        return [self.bank.current_keys, self.bank.current_values]

    def settings(self) -> dict[str, Any]:
        return self.bank.describe_signature(self.bank.signature)

    @property
    def units_per_task(self) -> int:
        """Routed units (atoms) added per task: the rank."""
        return self.bank.rank

    @property
    def route_capacity(self) -> int:
        """Routed units the layer can ever hold."""
        return self.bank.capacity

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

    # ------------------------------------------------------------------ state
    def upgrade_state(self, state_dict: dict[str, Any], prefix: str) -> None:
        """State written before layers kept a task counter: it is the bank's frozen atoms / rank."""
        frozen = state_dict.get(prefix + "bank.num_frozen")
        if prefix + "tasks_done" not in state_dict and isinstance(frozen, Tensor):
            state_dict[prefix + "tasks_done"] = torch.div(frozen, self.bank.rank, rounding_mode="floor")

    def sync_from_state(self) -> None:
        super().sync_from_state()
        if self.task_index != self.bank.task_index:
            raise AtomStateError(
                f"the state holds {self.task_index} finished tasks for the layer but {self.bank.num_frozen_atoms} "
                f"frozen atoms (rank {self.bank.rank}) in its bank; the file is inconsistent"
            )
