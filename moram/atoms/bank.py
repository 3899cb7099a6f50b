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

How it is computed (same numbers as the formula above; ``T`` tokens, ``N`` atoms, ``k`` selected):
every key is scored densely (``(T, N)``, the norm needs every response), but the scores ``s`` are
formed for the k selected atoms only (dividing by the positive per-token norm keeps the order, so
the top-k of ``p`` is the top-k of ``s``); the weights are ``(T, k)``. With ``N ≥
sparse_min_atoms_per_k · k`` the frozen values are summed by ``embedding_bag`` over the k selected
rows (no ``(T, N) @ (N, d_out)`` product and no frozen-value gradient) and the r current values by
a small dense product; below it one dense product is faster. Routing statistics are float32
(float64 for float64 atoms) under autocast; the products run in the autocast dtype.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

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
    sparse_min_atoms_per_k: float = 6.0
    """Sum the values sparsely (``embedding_bag`` over the k selected atoms) once the bank routes at
    least this many atoms per selected one (``N >= 6·k``), else by one dense ``(T, N) @ (N, d_out)``
    product. Measured (one CPU core, fp32, d = 768, 1576 tokens, k = 16): the two tie within noise at
    N = 64-128 in training and inference; sparse wins from N = 160 (7% of the whole layer's fwd+bwd,
    12% at N = 320), and only sparse avoids the ``(T, N)`` coefficient matrix."""

    dense_weight_grad_max_atoms_per_k: float = 24.0
    """In training with the sparse value sum, the gradient of the k coefficients per token comes from one
    dense ``grad @ frozen_valuesᵀ`` product and a gather while the frozen atoms number at most this many
    per selected one (``n <= 24·k``), else from ``embedding_bag``'s own per-sample-weight backward, whose
    cost does not grow with n. Measured (one CPU core, fp32, d = 768, k = 16, layer fwd+bwd, A/B in one
    process): dense/per-sample 0.91 at N = 160 (800 and 1576 tokens), 0.95-0.97 at N = 320,
    1.05 at N = 640."""

    def forward(self, x: Tensor, acc: Tensor | None = None) -> Tensor | None:
        """Return the bank's contribution ``(..., d_out)`` for input ``x`` ``(..., d_in)``.

        With ``acc`` ``(..., d_out)`` (the base output), return ``acc`` plus the contribution, the
        addition fused into the value product where possible. Returns None (``acc`` when given) when
        no atom takes part in routing. The contribution has the dtype of the key responses: the
        atoms' dtype, or the autocast dtype under autocast (routing statistics stay in float32).
        """
        n = self._num_frozen
        use_current = self.current_in_use
        if self.training and not self._live and torch.is_grad_enabled() and self.current_keys.requires_grad:
            self._set_live(True)
        if n == 0 and not use_current:
            return acc
        lead = x.shape[:-1]
        h = self.dropout(x).to(self.current_keys.dtype).reshape(-1, self.in_features)  # (T, d_in)
        p = self._responses(h, n, use_current)  # (T, N) raw key responses, frozen then current
        num = p.shape[-1]
        threshold = None if self.training else self.threshold
        resp, top_idx, w = _route(p, self.top_k, self.temperature, self.eps, threshold, self.signed_scores)
        if self._route_hooks:  # telemetry sees exactly the weights used, (..., N) in bank order
            dense_w = w if top_idx is None else w.new_zeros(p.shape).scatter(-1, top_idx, w)
            for hook in list(self._route_hooks.values()):
                hook(dense_w.detach().reshape(*lead, num))
        # scale · w_i · p_i: (T, N) when every atom is selected, else (T, k) for the selected ones
        coef = ((w * self.scale) * resp).to(self.current_values.dtype)
        fuse = acc is not None and acc.dtype == p.dtype and acc.shape[-1] == self.out_features
        acc2d = acc.reshape(-1, self.out_features) if fuse and acc is not None else None
        if top_idx is not None and num >= self.sparse_min_atoms_per_k * top_idx.shape[-1]:
            out = self._sparse_values(coef, top_idx, n, use_current, acc2d)
        else:
            if top_idx is not None:  # (T, N), zero outside the top-k
                coef = coef.new_zeros(coef.shape[0], num).scatter(-1, top_idx, coef)
            out = self._dense_values(coef, n, use_current, acc2d)
        out = out.to(p.dtype).reshape(*lead, self.out_features)  # (..., d_out)
        if acc is not None and not fuse:
            return acc + out.to(acc.dtype)
        return out

    def _responses(self, h: Tensor, n: int, use_current: bool) -> Tensor:
        """Raw key responses ``(T, N)`` of every routed atom (all are needed: the scores are normalised)."""
        if not n:
            return F.linear(h, self.current_keys)
        frozen_keys = self.frozen_keys[:n]
        if not use_current:
            return F.linear(h, frozen_keys)
        if torch.is_grad_enabled() and self.current_keys.requires_grad:
            # Separate products keep the weight gradient to the r current keys only (a custom autograd
            # Function with one product each way measured no faster on CPU).
            return torch.cat([F.linear(h, frozen_keys), F.linear(h, self.current_keys)], dim=-1)
        return F.linear(h, torch.cat([frozen_keys, self.current_keys]))  # one product when no key gradient

    def _dense_values(self, coef: Tensor, n: int, use_current: bool, acc: Tensor | None) -> Tensor:
        """``acc + coef @ values`` for dense coefficients ``(T, N)``; ``(T, d_out)``.

        Separate products for frozen and current values keep weight gradients to the r current ones.
        """
        frozen_values = self.frozen_values[:n]
        if not use_current:
            return coef @ frozen_values if acc is None else torch.addmm(acc, coef, frozen_values)
        if not n:
            return coef @ self.current_values if acc is None else torch.addmm(acc, coef, self.current_values)
        if not (torch.is_grad_enabled() and self.current_values.requires_grad):  # no value gradient: one product
            values = torch.cat([frozen_values, self.current_values])
            return coef @ values if acc is None else torch.addmm(acc, coef, values)
        out = coef[:, n:] @ self.current_values if acc is None else torch.addmm(acc, coef[:, n:], self.current_values)
        if out.dtype != frozen_values.dtype:  # autocast: the product above ran in low precision
            return torch.addmm(out, coef[:, :n], frozen_values)
        return out.addmm_(coef[:, :n], frozen_values)  # in place: every fresh (T, d_out) tensor costs page faults

    def _sparse_values(
        self, coef: Tensor, top_idx: Tensor, n: int, use_current: bool, acc: Tensor | None
    ) -> Tensor:
        """``acc + Σ_i coef_i b_i`` over the k selected atoms ``top_idx`` ``(T, k)`` of each token; ``(T, d_out)``.

        No N-wide product: frozen values (a buffer) are summed by ``embedding_bag``, which then
        differentiates only its per-sample weights (never a frozen value); the r current values,
        which need weight gradients, take a small dense ``(T, r) @ (r, d_out)`` product.
        """
        frozen_values = self.frozen_values[:n]
        if not use_current:
            out = F.embedding_bag(top_idx, frozen_values, per_sample_weights=coef, mode="sum")
            return out if acc is None else out.add_(acc)  # in place (embedding_bag's backward never reads it)
        if not n:  # only reachable with a lowered sparse_min_atoms_per_k (N = r)
            cur = coef.new_zeros(coef.shape[0], self.rank).scatter(-1, top_idx, coef)
            return cur @ self.current_values if acc is None else torch.addmm(acc, cur, self.current_values)
        if not (torch.is_grad_enabled() and self.current_values.requires_grad):  # no value gradient: one bag
            out = F.embedding_bag(top_idx, torch.cat([frozen_values, self.current_values]), per_sample_weights=coef,
                                  mode="sum")
            return out if acc is None else out.add_(acc)
        is_current = top_idx >= n
        frozen_idx, frozen_coef = top_idx.clamp(max=n - 1), coef.masked_fill(is_current, 0.0)
        if n <= self.dense_weight_grad_max_atoms_per_k * top_idx.shape[-1]:
            frozen_part = _FrozenBagSum.apply(frozen_idx, frozen_values, frozen_coef)
        else:
            frozen_part = F.embedding_bag(frozen_idx, frozen_values, per_sample_weights=frozen_coef, mode="sum")
        # Column 0 collects the frozen selections (with weight 0) and is dropped: (T, 1 + r) -> (T, r).
        slot = (top_idx - (n - 1)).clamp(min=0)
        cur = coef.new_zeros(coef.shape[0], 1 + self.rank).scatter(-1, slot, coef.masked_fill(~is_current, 0.0))
        out = frozen_part.addmm_(cur[:, 1:], self.current_values)
        return out if acc is None else out.add_(acc)

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
    _, top_idx, w = _route(p, top_k, temperature, eps, threshold, signed)
    if top_idx is None:
        return w
    return torch.zeros(p.shape, dtype=w.dtype, device=w.device).scatter(-1, top_idx, w)


def _route(
    p: Tensor, top_k: int, temperature: float, eps: float, threshold: float | None, signed: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The routing of :func:`normalized_topk_weights`; statistics in float32 (float64 for float64 input).

    Returns ``(coef_p, top_idx, w)``. When every unit is selected: ``top_idx`` is None, ``w`` and
    ``coef_p`` are the weights and responses ``(..., N)`` in the routing dtype. Otherwise the
    selected units ``top_idx (..., k)`` (in no particular order), their weights ``w (..., k)`` and
    their raw responses ``coef_p (..., k)``: no N-wide tensor is built beyond the norm's input and
    the responses themselves. The scores ``s = p / (‖p‖ + eps)`` are only formed for the selected
    units: dividing by a positive per-token number keeps the order of the responses, so the top-k
    of ``s`` is the top-k of ``p``.
    """
    stat = torch.float64 if p.dtype == torch.float64 else torch.float32
    den = torch.linalg.vector_norm(p, dim=-1, keepdim=True, dtype=stat) + eps  # (..., 1)
    k = min(max(top_k, 2), p.shape[-1])
    if k == p.shape[-1]:  # every unit selected: no top-k or scatter needed
        p32 = p.to(stat)
        s = p32 / den  # (..., N)
        score = s if signed else s.abs()
        w = _softmax(score / temperature)  # (..., N)
        return p32, None, w if threshold is None else w * (score >= threshold)
    top_idx = _topk_indices(p.detach() if signed else p.detach().abs(), k)  # (..., k), in no order
    p_top = p.gather(-1, top_idx).to(stat)  # (..., k)
    s_top = p_top / den
    score = s_top if signed else s_top.abs()
    w = _softmax(score / temperature)  # (..., k)
    if threshold is not None:
        w = w * (score >= threshold)
    return p_top, top_idx, w


def _softmax(logits: Tensor) -> Tensor:
    """``softmax(logits)`` over the last dim, with weights below ``tiny / eps`` of the largest set to exactly 0.

    With a small temperature (tau = 0.01: logits 100 apart per unit of score) the tail of the softmax
    underflows into subnormal numbers, and subnormal operands make CPU matrix products several times
    slower (7 ms of a 38 ms fwd+bwd at N = 16, d = 768). A weight that small is invisible next to
    the largest one in any sum of the dtype (float32: < 1e-31 of it; float64: < 1e-292), and its
    gradient is as small; it becomes exactly 0, as under flush-to-zero arithmetic.
    """
    info = torch.finfo(logits.dtype)
    cutoff = math.log(info.eps / info.tiny)  # 71.4 for float32, 672.4 for float64
    top = logits.detach().amax(dim=-1, keepdim=True)
    return torch.softmax(logits.masked_fill(logits.detach() < top - cutoff, -math.inf), dim=-1)


def _topk_indices(order: Tensor, k: int) -> Tensor:
    """Indices ``(..., k)`` of the k largest entries of each row of ``order`` ``(..., N)``, in no particular order.

    For large N, exactly and about twice as fast on CPU as one ``topk``: split the N columns into M
    strided groups ``{j, j + M, j + 2M, ...}``; the k largest entries lie in the k groups with the
    largest maxima (each group holding one has its maximum at or above the k-th largest entry), so
    a top-k of the M group maxima and then of those k groups' entries finds them.
    """
    num = order.shape[-1]
    # Group size g: M = N / g groups of g entries; measured best (one CPU core) near M = 10·k, no gain below N = 16·k.
    sizes = [g for g in (2, 4, 8, 16) if num % g == 0 and num // g >= 4 * k]
    if num < 16 * k or not sizes or order.dim() != 2:
        return order.topk(k, dim=-1, sorted=False).indices
    size = min(sizes, key=lambda g: abs(math.log(num / (g * 10 * k))))
    m = num // size  # M groups; group j holds the entries j, j + M, ..., j + (size - 1)·M
    best = order.reshape(order.shape[0], size, m).amax(1).topk(k, dim=-1, sorted=False).indices  # (T, k) groups
    cand = (best.unsqueeze(-1) + torch.arange(0, num, m, device=order.device)).flatten(-2)  # (T, k·size) entries
    return cand.gather(-1, order.gather(-1, cand).topk(k, dim=-1, sorted=False).indices)


class _FrozenBagSum(torch.autograd.Function):
    """``out[t] = Σ_j w[t, j] · values[idx[t, j]]`` for constant ``values`` (frozen atoms), ``(T, d_out)``.

    The forward is ``embedding_bag``; the backward returns only the weights' gradient,
    ``(grad @ valuesᵀ)[t, idx[t, j]]``: one dense product and a gather, several times faster on CPU than
    ``embedding_bag``'s per-sample-weight kernel while the bank is not huge (see
    ``AtomBank.dense_weight_grad_max_atoms_per_k``).
    """

    @staticmethod
    def forward(ctx: Any, idx: Tensor, values: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(idx, values)
        ctx.weights_dtype = weights.dtype
        return F.embedding_bag(idx, values, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        idx, values = ctx.saved_tensors
        grad_weights = (grad.to(values.dtype) @ values.T).gather(-1, idx)  # (T, n) -> (T, k)
        return None, None, grad_weights.to(ctx.weights_dtype)


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
