r"""The atom bank: rank-1 associative memory with self-activated top-k routing (DESIGN.md §1).

::

        x (..., d_in) ──dropout──► h
                                   │
          keys A = [frozen[:n] ; current]   (N, d_in)
                                   ▼
        p = A h                           (..., N)   raw key responses
        s = p / (‖p‖₂ + eps)              (..., N)   normalised over the bank
        top = topk(s, k),  k = min(max(top_k, 2), N)
        w = softmax(s[top] / tau) on top, 0 elsewhere
        w = w · [s ≥ delta]               (inference only, no renormalisation)
        out = scale · Σ_i w_i p_i b_i     (..., d_out)   = scale · B diag(w) A h

The parameter set never changes during a run (DESIGN.md §3): the bank holds ``max_tasks × rank``
atoms, of which the first ``(max_tasks - 1) × rank`` live in persistent buffers (frozen, filled
task by task) and the last ``rank`` are the current task's trainable Parameters. ``consolidate()``
copies the current atoms into the next free frozen slots and re-initialises them in place.
Compute runs over the filled frozen atoms and, while they take part, the current ones.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from moram.atoms.config import AtomConfig

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
        self._route_hooks: OrderedDict[int, Callable[[Tensor], None]] = OrderedDict()  # weak-referenceable
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
        return torch.cat([self.frozen_keys[: self._num_frozen], _full(self.current_keys)])

    @property
    def values(self) -> Tensor:
        """All existing values in bank order, frozen first then current: ``(N, d_out)``."""
        return torch.cat([self.frozen_values[: self._num_frozen], _full(self.current_values)])

    def _generator(self, task: int) -> torch.Generator:
        digest = hashlib.sha256(f"moram-atoms:{self.seed}:{task}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    @torch.no_grad()
    def reset_current(self) -> None:
        """Re-initialise the current atoms in place: keys Kaiming-uniform (a=√5), values zero."""
        keys = torch.empty(self.rank, self.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(keys, a=math.sqrt(5), generator=self._generator(self.task_index))
        _assign(self.current_keys, keys)
        _assign(self.current_values, torch.zeros(self.rank, self.out_features))
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
        self.frozen_keys[n : n + r].copy_(_full(self.current_keys))
        self.frozen_values[n : n + r].copy_(_full(self.current_values))
        self._num_frozen = n + r
        self.num_frozen.fill_(n + r)
        self.reset_current()

    # ------------------------------------------------------------------ routing
    def forward(self, x: Tensor) -> Tensor | None:
        """Return the bank's contribution ``(..., d_out)`` for input ``x`` ``(..., d_in)``.

        Returns None when no atom takes part in routing (the layer then equals its base).
        """
        n = self._num_frozen
        use_current = self.current_in_use
        if self.training and not self._live and torch.is_grad_enabled() and self.current_keys.requires_grad:
            self._set_live(True)
        if n == 0 and not use_current:
            return None
        h = self.dropout(x).to(self.current_keys.dtype)
        frozen_keys, frozen_values = self.frozen_keys[:n], self.frozen_values[:n]
        responses = []  # raw key responses, frozen then current
        if n:
            responses.append(F.linear(h, frozen_keys))  # (..., n)
        if use_current:
            responses.append(F.linear(h, self.current_keys))  # (..., r)
        p = responses[0] if len(responses) == 1 else torch.cat(responses, dim=-1)  # (..., N)
        w = self.routing_weights(p)  # (..., N), zero outside the top-k (and below delta at inference)
        for hook in list(self._route_hooks.values()):  # telemetry sees exactly the weights used
            hook(w.detach())
        coef = ((w * self.scale) * p.to(w.dtype)).to(self.current_values.dtype)  # (..., N): scale * w_i * p_i
        coef = coef.reshape(-1, coef.shape[-1])  # (T, N) token rows
        # Separate products keep weight gradients to the r current values only.
        if not use_current:
            out = coef @ frozen_values  # (T, d_out)
        elif not n:
            out = coef @ self.current_values
        else:
            out = torch.addmm(coef[:, n:] @ self.current_values, coef[:, :n], frozen_values)
        return out.reshape(*x.shape[:-1], self.out_features)  # (..., d_out)

    def route(self, p: Tensor) -> Tensor:
        """Routing coefficients ``scale · w ⊙ p`` ``(..., N)`` from raw key responses ``p`` ``(..., N)``."""
        w = self.routing_weights(p)
        return (w * self.scale) * p.to(w.dtype)

    def routing_weights(self, p: Tensor) -> Tensor:
        """Routing weights ``w`` ``(..., N)`` from raw key responses ``p`` ``(..., N)`` (DESIGN.md §1).

        See :func:`normalized_topk_weights`; delta applies at inference only.
        """
        return normalized_topk_weights(
            p, top_k=self.top_k, temperature=self.temperature, eps=self.eps,
            threshold=None if self.training else self.threshold, signed=self.signed_scores,
        )

    def register_route_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call ``hook(w)`` with the routing weights ``(..., N)`` (bank order) at every forward.

        For telemetry (``moram.callbacks.atom_usage``); remove it with the returned handle.
        """
        handle = RemovableHandle(self._route_hooks)
        self._route_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------ state
    def _sync_mirrors(self) -> None:
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
        self._sync_mirrors()

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, capacity={self.capacity}, "
            f"frozen={self._num_frozen}, top_k={self.top_k}, tau={self.temperature}, "
            f"delta={self.threshold}, scale={self.scale}"
        )


def normalized_topk_weights(
    p: Tensor, *, top_k: int, temperature: float, eps: float, threshold: float | None, signed: bool = True
) -> Tensor:
    """Self-activated routing weights ``(..., N)`` from per-unit responses ``p`` ``(..., N)``.

    ``s = p / (‖p‖ + eps)`` (``|s|`` when not ``signed``); the k = min(max(top_k, 2), N) largest
    scores get ``softmax(s_top / temperature)``, every other unit 0; a selected unit with a score
    below ``threshold`` (None: no gate) is zeroed without renormalising. Computed in at least float32.
    """
    p32 = p.to(torch.promote_types(p.dtype, torch.float32))
    s = p32 / (torch.linalg.vector_norm(p32, dim=-1, keepdim=True) + eps)  # (..., N)
    score = s if signed else s.abs()
    k = min(max(top_k, 2), s.shape[-1])
    if k == s.shape[-1]:  # every unit selected: no top-k or scatter needed
        w = torch.softmax(score / temperature, dim=-1)  # (..., N)
        return w if threshold is None else w * (score >= threshold)
    top_score, top_idx = score.topk(k, dim=-1, sorted=False)  # (..., k); order is irrelevant below
    w = torch.softmax(top_score / temperature, dim=-1)  # (..., k)
    if threshold is not None:
        w = w * (top_score >= threshold)
    return torch.zeros_like(p32).scatter(-1, top_idx, w)


def _full(t: Tensor) -> Tensor:
    """Full value of a possibly sharded (DTensor) parameter; a collective under FSDP2."""
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t


def _assign(param: Tensor, full: Tensor) -> None:
    """Copy a full tensor into a possibly sharded parameter, in place (``.data =`` is ignored by FSDP2)."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is not None:
        from torch.distributed.tensor import distribute_tensor

        full = distribute_tensor(full.to(param.device, param.dtype), mesh, param.placements)  # type: ignore[attr-defined]
    with torch.no_grad():
        param.copy_(full.to(device=param.device, dtype=param.dtype) if mesh is None else full)
