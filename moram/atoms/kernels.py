r"""The fast path of the atom bank: the numbers of :func:`moram.atoms.routing.reference_delta`, computed fast.

One public entry, :func:`routed_delta`. ``T`` tokens, ``N`` routed atoms (``n`` frozen then ``r``
current), ``k`` selected per token. Every key is scored densely (``(T, N)``: the norm needs every
response), but the scores ``s`` are formed for the k selected atoms only (dividing by the positive
per-token norm keeps the order, so the top-k of ``p`` is the top-k of ``s``), found by an exact
two-stage grouped top-k for large N; the weights are ``(T, k)``, with the subnormal tail of the
softmax flushed to exact zeros. With ``N ≥ sparse_min_atoms_per_k · k`` the frozen values are summed
by ``embedding_bag`` over the k selected rows (no ``(T, N) @ (N, d_out)`` product and no frozen-value
gradient) and the r current values by a small dense product; below it one dense product is faster.
Frozen and current atoms take separate products while their weights need gradients, so weight
gradients go to the r current atoms only. Routing statistics are float32 (float64 for float64
atoms) under autocast; the products run in the autocast dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dense_weight_grad_max_atoms_per_k", "routed_delta", "sparse_min_atoms_per_k"]

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


def routed_delta(
    h: Tensor,
    frozen_keys: Tensor,
    frozen_values: Tensor,
    current_keys: Tensor,
    current_values: Tensor,
    *,
    use_current: bool,
    top_k: int,
    temperature: float,
    eps: float,
    threshold: float | None,
    scale: float,
    signed: bool,
    acc: Tensor | None = None,
    route_hooks: Iterable[Callable[[Tensor], None]] = (),
) -> Tensor:
    """``scale · Σ_i w_i p_i b_i`` ``(..., d_out)`` for ``h`` ``(..., d_in)`` (the input after dropout).

    Routes over the ``n`` filled frozen atoms ``frozen_keys`` ``(n, d_in)`` / ``frozen_values``
    ``(n, d_out)`` and, when ``use_current``, the current ones ``(r, d_in)`` / ``(r, d_out)``; at least
    one atom must route. ``threshold`` is the gate (None in training). With ``acc`` ``(..., d_out)``
    returns ``acc`` plus the contribution, the addition fused into the value sum when ``acc`` has the
    responses' dtype. Every hook of ``route_hooks`` is called with the weights ``(..., N)``, detached,
    in bank order. The result has the dtype of the key responses (the autocast dtype under autocast).
    """
    r, d_in, d_out = current_keys.shape[0], current_keys.shape[1], current_values.shape[1]
    lead = h.shape[:-1]
    h = h.reshape(-1, d_in)  # (T, d_in)
    p = _responses(h, frozen_keys, current_keys, use_current)  # (T, N) raw key responses, frozen then current
    num = p.shape[-1]
    resp, top_idx, w = _route(p, top_k, temperature, eps, threshold, signed)
    hooks = list(route_hooks)
    if hooks:  # telemetry sees exactly the weights used, (..., N) in bank order
        dense_w = w if top_idx is None else w.new_zeros(p.shape).scatter(-1, top_idx, w)  # (T, N)
        for hook in hooks:
            hook(dense_w.detach().reshape(*lead, num))
    # scale · w_i · p_i: (T, N) when every atom is selected, else (T, k) for the selected ones
    coef = ((w * scale) * resp).to(current_values.dtype)
    fuse = acc is not None and acc.dtype == p.dtype and acc.shape[-1] == d_out
    acc2d = acc.reshape(-1, d_out) if fuse and acc is not None else None  # (T, d_out)
    if top_idx is not None and num >= sparse_min_atoms_per_k * top_idx.shape[-1]:
        out = _sparse_values(coef, top_idx, frozen_values, current_values, r, use_current, acc2d)
    else:
        if top_idx is not None:  # (T, N), zero outside the top-k
            coef = coef.new_zeros(coef.shape[0], num).scatter(-1, top_idx, coef)
        out = _dense_values(coef, frozen_values, current_values, use_current, acc2d)
    out = out.to(p.dtype).reshape(*lead, d_out)  # (..., d_out)
    if acc is not None and not fuse:
        return acc + out.to(acc.dtype)
    return out


def _responses(h: Tensor, frozen_keys: Tensor, current_keys: Tensor, use_current: bool) -> Tensor:
    """Raw key responses ``(T, N)`` of every routed atom (all are needed: the scores are normalised)."""
    if not frozen_keys.shape[0]:
        return F.linear(h, current_keys)
    if not use_current:
        return F.linear(h, frozen_keys)
    if torch.is_grad_enabled() and current_keys.requires_grad:
        # Separate products keep the weight gradient to the r current keys only (a custom autograd
        # Function with one product each way measured no faster on CPU).
        return torch.cat([F.linear(h, frozen_keys), F.linear(h, current_keys)], dim=-1)
    return F.linear(h, torch.cat([frozen_keys, current_keys]))  # one product when no key gradient


def _route(
    p: Tensor, top_k: int, temperature: float, eps: float, threshold: float | None, signed: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The routing of ``normalized_topk_weights``; statistics in float32 (float64 for float64 input).

    Returns ``(coef_p, top_idx, w)``. When every unit is selected: ``top_idx`` is None, ``w`` and
    ``coef_p`` are the weights and responses ``(T, N)`` in the routing dtype. Otherwise the selected
    units ``top_idx (T, k)`` (in no particular order), their weights ``w (T, k)`` and their raw
    responses ``coef_p (T, k)``: no N-wide tensor is built beyond the norm's input and the responses.
    """
    stat = torch.float64 if p.dtype == torch.float64 else torch.float32
    den = torch.linalg.vector_norm(p, dim=-1, keepdim=True, dtype=stat) + eps  # (T, 1)
    k = min(max(top_k, 2), p.shape[-1])
    if k == p.shape[-1]:  # every unit selected: no top-k or scatter needed
        p32 = p.to(stat)
        s = p32 / den  # (T, N)
        score = s if signed else s.abs()
        w = _softmax(score / temperature)  # (T, N)
        return p32, None, w if threshold is None else w * (score >= threshold)
    top_idx = _topk_indices(p.detach() if signed else p.detach().abs(), k)  # (T, k), in no order
    p_top = p.gather(-1, top_idx).to(stat)  # (T, k)
    s_top = p_top / den
    score = s_top if signed else s_top.abs()
    w = _softmax(score / temperature)  # (T, k)
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
    """Indices ``(T, k)`` of the k largest entries of each row of ``order`` ``(T, N)``, in no particular order.

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
    return cand.gather(-1, order.gather(-1, cand).topk(k, dim=-1, sorted=False).indices)  # (T, k)


def _dense_values(
    coef: Tensor, frozen_values: Tensor, current_values: Tensor, use_current: bool, acc: Tensor | None
) -> Tensor:
    """``acc + coef @ values`` for dense coefficients ``(T, N)``; ``(T, d_out)``.

    Separate products for frozen and current values keep weight gradients to the r current ones.
    """
    n = frozen_values.shape[0]
    if not use_current:
        return coef @ frozen_values if acc is None else torch.addmm(acc, coef, frozen_values)
    if not n:
        return coef @ current_values if acc is None else torch.addmm(acc, coef, current_values)
    if not (torch.is_grad_enabled() and current_values.requires_grad):  # no value gradient: one product
        values = torch.cat([frozen_values, current_values])  # (N, d_out)
        return coef @ values if acc is None else torch.addmm(acc, coef, values)
    out = coef[:, n:] @ current_values if acc is None else torch.addmm(acc, coef[:, n:], current_values)
    if out.dtype != frozen_values.dtype:  # autocast: the product above ran in low precision
        return torch.addmm(out, coef[:, :n], frozen_values)
    return out.addmm_(coef[:, :n], frozen_values)  # in place: every fresh (T, d_out) tensor costs page faults


def _sparse_values(
    coef: Tensor, top_idx: Tensor, frozen_values: Tensor, current_values: Tensor, r: int, use_current: bool,
    acc: Tensor | None,
) -> Tensor:
    """``acc + Σ_i coef_i b_i`` over the k selected atoms ``top_idx`` ``(T, k)`` of each token; ``(T, d_out)``.

    No N-wide product: frozen values (a buffer) are summed by ``embedding_bag``, which then
    differentiates only its per-sample weights (never a frozen value); the r current values,
    which need weight gradients, take a small dense ``(T, r) @ (r, d_out)`` product.
    """
    n = frozen_values.shape[0]
    if not use_current:
        out = F.embedding_bag(top_idx, frozen_values, per_sample_weights=coef, mode="sum")
        return out if acc is None else out.add_(acc)  # in place (embedding_bag's backward never reads it)
    if not n:  # only reachable with a lowered sparse_min_atoms_per_k (N = r)
        cur = coef.new_zeros(coef.shape[0], r).scatter(-1, top_idx, coef)  # (T, r)
        return cur @ current_values if acc is None else torch.addmm(acc, cur, current_values)
    if not (torch.is_grad_enabled() and current_values.requires_grad):  # no value gradient: one bag
        out = F.embedding_bag(top_idx, torch.cat([frozen_values, current_values]), per_sample_weights=coef,
                              mode="sum")
        return out if acc is None else out.add_(acc)
    is_current = top_idx >= n  # (T, k)
    frozen_idx, frozen_coef = top_idx.clamp(max=n - 1), coef.masked_fill(is_current, 0.0)
    if n <= dense_weight_grad_max_atoms_per_k * top_idx.shape[-1]:
        frozen_part = _FrozenBagSum.apply(frozen_idx, frozen_values, frozen_coef)
    else:
        frozen_part = F.embedding_bag(frozen_idx, frozen_values, per_sample_weights=frozen_coef, mode="sum")
    # Column 0 collects the frozen selections (with weight 0) and is dropped: (T, 1 + r) -> (T, r).
    slot = (top_idx - (n - 1)).clamp(min=0)
    cur = coef.new_zeros(coef.shape[0], 1 + r).scatter(-1, slot, coef.masked_fill(~is_current, 0.0))
    out = frozen_part.addmm_(cur[:, 1:], current_values)
    return out if acc is None else out.add_(acc)


class _FrozenBagSum(torch.autograd.Function):
    """``out[t] = Σ_j w[t, j] · values[idx[t, j]]`` for constant ``values`` (frozen atoms), ``(T, d_out)``.

    The forward is ``embedding_bag``; the backward returns only the weights' gradient,
    ``(grad @ valuesᵀ)[t, idx[t, j]]``: one dense product and a gather, several times faster on CPU than
    ``embedding_bag``'s per-sample-weight kernel while the bank is not huge (see
    ``dense_weight_grad_max_atoms_per_k``).
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
