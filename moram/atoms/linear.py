"""The routed layer: a frozen base map plus an atom bank, ``y = base(x) + bank(x)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
        y = self.base(x)
        delta = self.bank(x)
        return y if delta is None else y + delta.to(y.dtype)

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

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the current atoms of the present task (frozen atoms are untouched)."""
        self.bank.reset_current()
