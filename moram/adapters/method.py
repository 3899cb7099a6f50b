"""A continual adaptation *method*: the continual layer it puts on every target, and its options.

MoRAM (:class:`moram.atoms.MoRAM`) is one method among the baselines of :mod:`moram.baselines`;
moram's LightningModules call ``method.inject(model, targets, max_tasks=..., seed=...)`` whatever the
method, so adding one is a layer (:class:`~moram.adapters.layer.ContinualLinear`) and a subclass of
:class:`AdapterMethod` with a typed ``__init__`` (its options, shown by ``--help``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from moram.adapters.inject import inject_layers
from moram.adapters.layer import ContinualLinear


class AdapterMethod:
    """A way to adapt a frozen backbone for continual learning (override :meth:`make_layer`)."""

    targets_option: str = "targets"
    """The option to name when a target pattern matches nothing."""

    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        """The continual layer to put on ``base`` (seeded ``seed``, holding ``max_tasks`` tasks)."""
        raise NotImplementedError

    def inject(self, model: nn.Module, targets: Sequence[str], *, max_tasks: int, seed: int = 0) -> list[str]:
        """Adapt the ``targets`` of ``model`` in place and freeze the rest; returns the adapted names."""

        def make(base: nn.Module, d_in: int, d_out: int, layer_seed: int) -> ContinualLinear:
            return self.make_layer(base, d_in, d_out, max_tasks=max_tasks, seed=layer_seed)

        return inject_layers(model, targets, make, seed=seed, option=self.targets_option)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"
