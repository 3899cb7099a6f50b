"""The atom bank: storage and lifecycle of one layer's rank-1 atoms (DESIGN.md §1, §3).

The formula is :mod:`moram.atoms.routing` (diagram and dense reference); the fast computation of it
is :mod:`moram.atoms.kernels`. The parameter set never changes during a run (DESIGN.md §3): the bank
holds ``max_tasks × rank`` atoms, of which the first ``(max_tasks - 1) × rank`` live in persistent
buffers (frozen, filled task by task) and the last ``rank`` are the current task's trainable
Parameters. ``consolidate()`` copies the current atoms into the next free frozen slots and
re-initialises them in place. Compute runs over the filled frozen atoms and, while they take part,
the current ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from moram.adapters.seeding import kaiming_rows, task_generator
from moram.atoms.config import AtomConfig
from moram.atoms.kernels import routed_delta
from moram.atoms.routing import normalized_topk_weights, reference_delta
from moram.distributed import assign_full, full_value

_FIXED_POINT = 1_000_000_000  # floats in the signature buffer are stored as integers at this scale


class AtomStateError(ValueError):
    """A state dict or adapter file does not fit the model's atom banks."""


class AtomBank(nn.Module):
    """A bank of rank-1 atoms added to one frozen linear map.

    Args:
        in_features: width ``d_in`` of the layer input (the keys' width).
        out_features: width ``d_out`` of the layer output (the values' width).
        config: the routing and capacity settings.
        seed: seed of this layer's initialisation; task ``t``'s atoms are drawn from a generator
            seeded by ``(seed, t)``, so initialisation never touches the global RNG.
        device: where to allocate the atoms.
        dtype: dtype of keys and values (routing statistics are computed in float32 regardless).

    ``route_hooks`` maps handle ids to callables ``hook(w)`` called with the routing weights
    ``(..., N)`` (bank order, detached) of every forward; the owning layer may replace the dict by
    its own (it owns registration).

    Example:
        >>> bank = AtomBank(8, 4, AtomConfig(rank=2, max_tasks=3))
        >>> bank.num_atoms, bank.capacity
        (2, 6)
        >>> bank.consolidate(); bank.num_frozen_atoms
        2
    """

    eps: float = 1e-6
    """Added to the L2 norm of the responses before dividing (DESIGN.md §1)."""

    frozen_keys: Tensor  # (capacity - rank, d_in) buffer, first num_frozen rows filled
    frozen_values: Tensor  # (capacity - rank, d_out) buffer
    num_frozen: Tensor  # () long buffer: filled frozen atoms
    current_live: Tensor  # () bool buffer: current atoms trained since the last consolidation
    signature: Tensor  # (8,) long buffer: the settings that fix shapes and routing

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: AtomConfig,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = config.rank
        self.top_k = config.top_k
        self.temperature = config.temperature
        self.threshold = config.threshold
        self.scale = config.scale
        self.signed_scores = config.signed_scores
        self.reference = config.reference
        self.seed = seed
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        frozen_slots = config.capacity - config.rank
        self.current_keys = nn.Parameter(torch.empty(config.rank, in_features, device=device, dtype=dtype))
        self.current_values = nn.Parameter(torch.zeros(config.rank, out_features, device=device, dtype=dtype))
        self.register_buffer("frozen_keys", torch.zeros(frozen_slots, in_features, device=device, dtype=dtype))
        self.register_buffer("frozen_values", torch.zeros(frozen_slots, out_features, device=device, dtype=dtype))
        self.register_buffer("num_frozen", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("current_live", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("signature", self._make_signature(config, in_features, out_features, device))
        # Python mirrors of the two counters, so forward never syncs with the device to read them.
        self._num_frozen = 0
        self._live = False
        self.route_hooks: OrderedDict[int, Callable[[Tensor], None]] = OrderedDict()
        self.reset_current()

    # ------------------------------------------------------------------ bookkeeping
    @staticmethod
    def _make_signature(config: AtomConfig, d_in: int, d_out: int, device: torch.device | str | None) -> Tensor:
        fields = [
            config.rank, config.max_tasks, d_in, d_out, config.top_k,
            round(config.temperature * _FIXED_POINT), round(config.scale * _FIXED_POINT),
            int(config.signed_scores),
        ]
        return torch.tensor(fields, dtype=torch.long, device=device)

    _SIGNATURE_FIELDS = (
        "rank", "max_tasks", "in_features", "out_features", "top_k", "temperature", "scale", "signed_scores"
    )

    @property
    def capacity(self) -> int:
        """Total atoms the bank can hold: ``max_tasks × rank``."""
        return int(self.frozen_keys.shape[0]) + self.rank

    @property
    def num_frozen_atoms(self) -> int:
        """Frozen atoms filled so far (``rank ×`` consolidations)."""
        return self._num_frozen

    @property
    def task_index(self) -> int:
        """Index of the task the current atoms belong to (number of consolidations so far)."""
        return self._num_frozen // self.rank

    @property
    def current_in_use(self) -> bool:
        """Whether the current atoms take part in routing in the module's present mode.

        They always do in training; at inference only once they have been trained (a training-mode
        forward has run since the last consolidation), so fresh atoms never steal routing weight.
        """
        return self.training or self._live

    @property
    def num_atoms(self) -> int:
        """Atoms that exist: filled frozen atoms plus the current ones."""
        return self._num_frozen + self.rank

    @property
    def num_routed(self) -> int:
        """Atoms that take part in routing in the module's present mode."""
        return self._num_frozen + (self.rank if self.current_in_use else 0)

    @property
    def keys(self) -> Tensor:
        """All existing keys in bank order, frozen first then current: ``(N, d_in)``."""
        return torch.cat([self.frozen_keys[: self._num_frozen], full_value(self.current_keys)])

    @property
    def values(self) -> Tensor:
        """All existing values in bank order, frozen first then current: ``(N, d_out)``."""
        return torch.cat([self.frozen_values[: self._num_frozen], full_value(self.current_values)])

    @torch.no_grad()
    def reset_current(self) -> None:
        """Re-initialise the current atoms in place: keys Kaiming-uniform (a=√5), values zero."""
        keys = kaiming_rows(self.rank, self.in_features, task_generator("moram-atoms", self.seed, self.task_index))
        assign_full(self.current_keys, keys)
        assign_full(self.current_values, torch.zeros(self.rank, self.out_features))
        self._set_live(False)

    def _set_live(self, live: bool) -> None:
        self._live = live
        self.current_live.fill_(live)

    @torch.no_grad()
    def consolidate(self) -> None:
        """Freeze the current atoms into the next free slots and start fresh current atoms."""
        n, r = self._num_frozen, self.rank
        if n + r > self.frozen_keys.shape[0]:
            max_tasks = self.capacity // r
            raise RuntimeError(
                f"the atom bank is full: it holds AtomConfig.max_tasks={max_tasks} tasks of rank {r}, and "
                f"consolidating task {n // r + 1} would start task {n // r + 2}; "
                f"raise AtomConfig.max_tasks to at least {n // r + 2}"
            )
        self.frozen_keys[n : n + r].copy_(full_value(self.current_keys))
        self.frozen_values[n : n + r].copy_(full_value(self.current_values))
        self._num_frozen = n + r
        self.num_frozen.fill_(n + r)
        self.reset_current()

    # ------------------------------------------------------------------ compute
    def forward(self, x: Tensor) -> Tensor:
        """The bank's contribution ``(..., d_out)`` for input ``x`` ``(..., d_in)``.

        Zeros when no atom takes part in routing. It has the dtype of the key responses: the atoms'
        dtype, or the autocast dtype under autocast (routing statistics stay in float32).
        """
        out = self._delta(x, None)
        if out is None:
            return torch.zeros(*x.shape[:-1], self.out_features, dtype=self.current_values.dtype, device=x.device)
        return out

    def add_to(self, x: Tensor, y: Tensor) -> Tensor:
        """``y + self(x)`` for the base output ``y`` ``(..., d_out)``.

        The addition is fused into the value sum when ``y`` has the contribution's dtype; ``y`` itself
        is returned when no atom routes.
        """
        out = self._delta(x, y)
        return y if out is None else out

    def _delta(self, x: Tensor, acc: Tensor | None) -> Tensor | None:
        """``acc`` plus the contribution (just the contribution when ``acc`` is None); None when no atom routes."""
        n = self._num_frozen
        use_current = self.current_in_use
        if self.training and not self._live and torch.is_grad_enabled() and self.current_keys.requires_grad:
            self._set_live(True)
        if n == 0 and not use_current:
            return None
        h = self.dropout(x).to(self.current_keys.dtype)  # (..., d_in)
        threshold = None if self.training else self.threshold
        if not self.reference:
            return routed_delta(
                h, self.frozen_keys[:n], self.frozen_values[:n], self.current_keys, self.current_values,
                use_current=use_current, top_k=self.top_k, temperature=self.temperature, eps=self.eps,
                threshold=threshold, scale=self.scale, signed=self.signed_scores, acc=acc,
                route_hooks=self.route_hooks.values(),
            )
        keys, values = self.frozen_keys[:n], self.frozen_values[:n]  # (n, d_in), (n, d_out)
        if use_current:
            keys = torch.cat([keys, self.current_keys])  # (N, d_in)
            values = torch.cat([values, self.current_values])  # (N, d_out)
        route: dict[str, Any] = dict(top_k=self.top_k, temperature=self.temperature, eps=self.eps, threshold=threshold,
                     signed=self.signed_scores)
        if self.route_hooks:
            w = normalized_topk_weights(h @ keys.T, **route).detach()  # (..., N)
            for hook in list(self.route_hooks.values()):
                hook(w)
        out = reference_delta(h, keys, values, scale=self.scale, **route)  # (..., d_out)
        return out if acc is None else acc + out.to(acc.dtype)

    # ------------------------------------------------------------------ state
    def sync_from_state(self) -> None:
        """Re-read the Python mirrors of the counters from the buffers (after writing them directly)."""
        n = int(self.num_frozen)
        if n % self.rank or n > self.frozen_keys.shape[0] or n < 0:
            raise AtomStateError(
                f"num_frozen={n} is not a multiple of rank {self.rank} within capacity {self.capacity}"
            )
        self._num_frozen = n
        self._live = bool(self.current_live)

    def describe_signature(self, signature: Tensor) -> dict[str, float | int | bool]:
        """Readable view of a signature buffer (for error messages)."""
        values = signature.tolist()
        view: dict[str, float | int | bool] = dict(zip(self._SIGNATURE_FIELDS, values, strict=False))
        for name in ("temperature", "scale"):
            if name in view:
                view[name] = view[name] / _FIXED_POINT
        return view

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "signature"
        if key in state_dict:
            theirs = state_dict[key]
            if not isinstance(theirs, Tensor) or theirs.shape != self.signature.shape or not torch.equal(
                theirs.to(device=self.signature.device, dtype=torch.long), self.signature
            ):
                mine_view = self.describe_signature(self.signature)
                their_view = self.describe_signature(torch.as_tensor(theirs))
                diff = {k: (their_view.get(k), v) for k, v in mine_view.items() if their_view.get(k) != v}
                layer = prefix[: -len("bank.")].rstrip(".") if prefix.endswith("bank.") else prefix.rstrip(".")
                detail = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in diff.items())
                raise AtomStateError(
                    f"atom bank of layer '{layer}' does not fit the checkpoint ({detail}); "
                    "build the model with the AtomConfig the checkpoint was trained with"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.sync_from_state()

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, capacity={self.capacity}, "
            f"frozen={self._num_frozen}, top_k={self.top_k}, tau={self.temperature}, "
            f"delta={self.threshold}, scale={self.scale}"
        )
