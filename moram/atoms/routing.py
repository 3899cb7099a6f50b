r"""MoRAM in one file: the routed update of docs/design.md §1 as plain dense code.

::

        x (..., d_in) ──dropout (training)──► h
                                               │
          keys A = [frozen[:n] ; current]   (N, d_in)      values B = [frozen[:n] ; current]   (N, d_out)
                                               ▼
        p   = h Aᵀ                          (..., N)   raw key responses, one per atom
        s   = p / (‖p‖₂ + eps)              (..., N)   normalised over the atoms of this layer
        top = topk(s, k),  k = min(max(top_k, 2), N)   (|s| instead of s when not signed)
        w   = softmax(s[top] / tau) on top, 0 elsewhere
        w   = w · [s ≥ delta]               inference only (delta None: no gate), no renormalisation
        out = scale · Σ_i w_i p_i b_i       (..., d_out)   = scale · (w ⊙ p) B

The layer adds ``out`` to its frozen base output. :func:`reference_delta` is that formula, dense and
without tricks: it is what the fast kernels of :mod:`moram.atoms.kernels` are tested against, and
what ``AtomConfig(reference=True)`` runs instead of them. Routing statistics (norm, scores, softmax)
are computed in float32, or float64 for float64 responses; the products run in the input dtype (the
autocast dtype under autocast).

Example:
    >>> keys, values = torch.eye(3, 2, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)
    >>> x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # p = (3, 4, 0), ‖p‖ = 5, s = (0.6, 0.8, 0)
    >>> reference_delta(x, keys, values, top_k=1, temperature=0.1, eps=0.0, threshold=None, scale=1.0)
    tensor([[3.8808]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normalized_topk_weights", "reference_delta"]


def normalized_topk_weights(
    p: Tensor, *, top_k: int, temperature: float, eps: float, threshold: float | None, signed: bool = True
) -> Tensor:
    """Self-activated routing weights ``w`` ``(..., N)`` from per-unit responses ``p`` ``(..., N)``.

    ``s = p / (‖p‖ + eps)`` (``|s|`` when not ``signed``); the k = min(max(top_k, 2), N) largest
    scores get ``softmax(s_top / temperature)``, every other unit 0; a selected unit with a score
    below ``threshold`` (None: no gate) is zeroed without renormalising. Computed in float32 (float64
    for float64 input). Gradients flow through the softmax and the norm; the selection is a hard mask.
    """
    stat = torch.float64 if p.dtype == torch.float64 else torch.float32
    p = p.to(stat)  # (..., N)
    s = p / (torch.linalg.vector_norm(p, dim=-1, keepdim=True) + eps)  # (..., N)
    score = s if signed else s.abs()  # (..., N)
    k = min(max(top_k, 2), p.shape[-1])
    top = score.detach().topk(k, dim=-1).indices  # (..., k)
    selected = torch.zeros_like(score, dtype=torch.bool).scatter(-1, top, True)  # (..., N)
    w = torch.softmax((score / temperature).masked_fill(~selected, -math.inf), dim=-1)  # (..., N)
    if threshold is not None:
        w = w * (score >= threshold)
    return w


def reference_delta(
    x: Tensor,
    keys: Tensor,
    values: Tensor,
    *,
    top_k: int,
    temperature: float,
    eps: float,
    threshold: float | None,
    scale: float,
    signed: bool = True,
) -> Tensor:
    """The bank's contribution ``scale · Σ_i w_i p_i b_i`` ``(..., d_out)`` for ``x`` ``(..., d_in)``.

    Args:
        x: layer input (after dropout), ``(..., d_in)``.
        keys: the routed atoms' keys ``A``, ``(N, d_in)``, frozen first then current.
        values: their values ``B``, ``(N, d_out)``, same order.
        top_k, temperature, eps, threshold, signed: the routing of :func:`normalized_topk_weights`
            (pass ``threshold=None`` in training: the gate applies at inference only).
        scale: multiplier of the output.
    """
    p = x @ keys.T  # (..., N)
    w = normalized_topk_weights(
        p, top_k=top_k, temperature=temperature, eps=eps, threshold=threshold, signed=signed
    )  # (..., N), float32 or float64
    coef = (w * scale) * p.to(w.dtype)  # (..., N): scale · w_i · p_i
    return coef.to(values.dtype) @ values  # (..., d_out)
