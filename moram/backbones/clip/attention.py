r"""Split open_clip's packed attention into four ``nn.Linear`` so that atoms can adapt it.

::

    nn.MultiheadAttention / open_clip Attention         SplitAttention
    in_proj_weight (3E, E) ──F.linear──► q, k, v        q_proj ─┐
                       attention(q, k, v)               k_proj ─┼─► scaled_dot_product_attention
    out_proj.weight ─────F.linear──► y                  v_proj ─┘            │
    (MHA: out_proj is a module, never called)                     out_proj ◄─┘

Why: atoms wrap a linear *module* and act when it is called. The packed layouts have no q/k/v
modules at all, and ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly instead of calling
``out_proj`` — an adapter put there changes nothing. RN50's ``AttentionPool2d`` does the same with
its separate ``q_proj``/``k_proj``/``v_proj``/``c_proj``. :func:`convert_attention` replaces each
such module, once, by an equivalent one whose projections are called as modules (docs/design.md §3, §4);
:func:`restore_packed_attention` goes back (export, code that reads ``in_proj_weight``).
Convert after loading pretrained weights and before injecting atoms, building the optimizer or
wrapping for DDP/FSDP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _param(t: Tensor) -> nn.Parameter:
    """An independent copy (never a view into the packed tensor), keeping requires_grad."""
    return nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)


def _set(linear: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    linear.weight = _param(weight)
    if bias is not None:
        linear.bias = _param(bias)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A float mask to add to the scores.

    Bool masks mean "masked" in nn.MultiheadAttention but "attend" in SDPA, so never pass them on as is.
    """
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _not_identity(module: nn.Module) -> bool:
    return not isinstance(module, nn.Identity)


class SplitAttention(nn.Module):
    """Multi-head attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` linears.

    Adapter files of a model holding it record the layout ``split_attention``
    (:data:`moram.atoms.state.LAYOUTS`), so they load into the plain model in one call.

    Equivalent to the module it replaces, with that module's calling convention: with
    ``mha_api=True`` (from ``nn.MultiheadAttention``) ``forward(query, key, value, ...)`` returns
    ``(output, weights or None)``; with ``mha_api=False`` (from open_clip's ``Attention``)
    ``forward(x, attn_mask=None)`` returns the output. The optional parts of open_clip's
    ``Attention`` (q/k norm, scaled cosine attention, per-head scale, inner norm) are carried over.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> split = SplitAttention.from_multihead(mha)
        >>> x = torch.randn(3, 5, 8)
        >>> torch.allclose(split(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
        True
    """

    moram_layout = "split_attention"

    def __init__(
        self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
        qkv_bias: bool = True, out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
        mha_api: bool = True, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first, self.mha_api = dropout, batch_first, mha_api
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=qkv_bias, **kw)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=qkv_bias, **kw)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=qkv_bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=out_bias, **kw)
        # Optional parts of open_clip's Attention; identities / None reproduce plain attention.
        self.ln_q: nn.Module = nn.Identity()
        self.ln_k: nn.Module = nn.Identity()
        self.ln_inner: nn.Module = nn.Identity()
        self.out_drop: nn.Module = nn.Identity()
        self.logit_scale: nn.Parameter | None = None  # scaled cosine attention, (H, 1, 1)
        self.head_scale: nn.Parameter | None = None  # per-head output scale, (H, 1, 1)
        self.logit_scale_max = math.log(100.0)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention, name: str = "") -> SplitAttention:
        """Equivalent of ``mha``; its packed in_proj is split in q, k, v order."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError(
                f"attention module '{name}' uses add_bias_kv or add_zero_attn, which SplitAttention does not "
                "support (open_clip never sets them); atoms cannot adapt this attention"
            )
        new = cls(
            mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, qkv_bias=mha.in_proj_bias is not None,
            dropout=mha.dropout, batch_first=mha.batch_first, mha_api=True, device="meta",
        )
        if mha.in_proj_weight is not None:  # q, k, v of the same size, packed (torch's public attribute)
            weights = mha.in_proj_weight.chunk(3)  # 3 × (E, E), q, k, v
        else:  # kdim/vdim != embed_dim: already three tensors
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        for linear, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True):
            _set(linear, w, b)
        new.out_proj = mha.out_proj  # an nn.Linear already: reuse it as is
        return new

    @classmethod
    def from_open_clip(cls, attn: Any, name: str = "") -> SplitAttention:
        """Equivalent of open_clip's ``transformer.Attention`` (batch first, packed ``in_proj_weight``)."""
        dim = attn.in_proj_weight.shape[1]
        new = cls(
            dim, attn.num_heads, qkv_bias=attn.in_proj_bias is not None, out_bias=attn.out_proj.bias is not None,
            dropout=attn.attn_drop.p, batch_first=True, mha_api=False, device="meta",
        )
        biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        weights = attn.in_proj_weight.chunk(3)  # 3 × (E, E), q, k, v
        for linear, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True):
            _set(linear, w, b)
        new.out_proj, new.out_drop = attn.out_proj, attn.out_drop
        new.ln_q, new.ln_k, new.ln_inner = attn.ln_q, attn.ln_k, attn.ln_inner
        new.logit_scale, new.head_scale = attn.logit_scale, attn.head_scale
        new.logit_scale_max = attn.logit_scale_max
        return new

    def to_packed(self, name: str = "") -> nn.Module:
        """The packed module this one came from (``nn.MultiheadAttention`` or open_clip ``Attention``)."""
        projections = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if not all(isinstance(p, nn.Linear) for p in projections):
            kinds = {n: type(getattr(self, n)).__name__ for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
            raise ValueError(
                f"attention module '{name}' cannot be packed: its projections are {kinds}; atoms depend on the "
                "input and cannot be merged into in_proj_weight (save them with moram.atoms.save_atoms instead)"
            )
        w: list[Tensor] = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]
        b: list[Tensor] = [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]
        bias = None if self.q_proj.bias is None else _param(torch.cat(b))  # (3E,)
        packed = self._packed_shell()
        if getattr(packed, "in_proj_weight", None) is not None:  # packed q, k, v (else kdim/vdim differ)
            packed.in_proj_weight = _param(torch.cat(w))  # (3E, E)
        else:
            packed.q_proj_weight, packed.k_proj_weight, packed.v_proj_weight = (_param(t) for t in w)
        packed.in_proj_bias = bias
        packed.out_proj = self.out_proj
        return packed

    def _packed_shell(self) -> nn.Module:
        """An empty (meta) packed module with this one's settings; parameters are set by the caller."""
        kdim, vdim = self.k_proj.in_features, self.v_proj.in_features
        with torch.device("meta"):
            if self.mha_api:
                return nn.MultiheadAttention(
                    self.embed_dim, self.num_heads, dropout=self.dropout, bias=self.q_proj.bias is not None,
                    kdim=kdim, vdim=vdim, batch_first=self.batch_first,
                )
            from open_clip.transformer import Attention

            attn = Attention(
                self.embed_dim, self.num_heads, qkv_bias=self.q_proj.bias is not None,
                qk_norm=_not_identity(self.ln_q), scaled_cosine=self.logit_scale is not None,
                scale_heads=self.head_scale is not None, inner_norm=_not_identity(self.ln_inner),
                logit_scale_max=self.logit_scale_max, attn_drop=self.dropout,
            )
        attn.ln_q, attn.ln_k, attn.ln_inner, attn.out_drop = self.ln_q, self.ln_k, self.ln_inner, self.out_drop
        attn.logit_scale, attn.head_scale = self.logit_scale, self.head_scale
        return attn

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        (b, length, _), s, h = query.shape, key.shape[1], self.num_heads
        q = self.q_proj(query).reshape(b, length, h, -1).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(key).reshape(b, s, h, -1).transpose(1, 2)  # (B, H, S, D)
        v = self.v_proj(value).reshape(b, s, h, -1).transpose(1, 2)  # (B, H, S, D)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, b, length, s, q.dtype)  # (B|1, H|1, L, S)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if (need_weights and self.mha_api) or self.logit_scale is not None:
            x, weights = self._explicit(q, k, v, mask, dropout_p)
        else:
            x = F.scaled_dot_product_attention(self.ln_q(q), self.ln_k(k), v, attn_mask=mask, dropout_p=dropout_p)
        if self.head_scale is not None:
            x = x * self.head_scale  # (H, 1, 1) over (B, H, L, D)
        x = x.transpose(1, 2).reshape(b, length, self.embed_dim)  # (B, L, E)
        x = self.out_drop(self.out_proj(self.ln_inner(x)))
        if unbatched:
            x = x.squeeze(0)  # (L, E)
        elif not self.batch_first:
            x = x.transpose(0, 1)  # (L, B, E)
        if not self.mha_api:
            return x
        if weights is not None and not need_weights:
            weights = None  # computed only for scaled cosine attention
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights  # (B, L, S) or (B, H, L, S)
            weights = weights.squeeze(0) if unbatched else weights
        return x, weights

    def _mask(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool,
        b: int, length: int, s: int, dtype: torch.dtype,
    ) -> Tensor | None:
        """One additive float mask broadcastable to ``(B, H, L, S)``, or None."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, s, dtype=torch.bool, device=self.q_proj.weight.device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # (B*H, L, S), batch-major as in nn.MultiheadAttention -> (B, H, L, S)
                mask = mask.reshape(b, self.num_heads, length, s)
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, dtype).reshape(b, 1, 1, s)  # (B, S) -> (B, 1, 1, S)
            mask = pad if mask is None else mask + pad
        return mask

    def _explicit(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float
    ) -> tuple[Tensor, Tensor]:
        """Attention with the weights materialised: for need_weights=True and scaled cosine attention."""
        if self.logit_scale is not None:  # Swin v2 cosine attention, as in open_clip's Attention
            scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)  # (B, H, L, S)
            scores = scores * torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
        else:
            scores = (self.ln_q(q) * self.head_dim**-0.5) @ self.ln_k(k).transpose(-1, -2)  # (B, H, L, S)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)  # like MHA: the returned weights are dropped out too
        return weights @ v, weights  # (B, H, L, D), (B, H, L, S)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


class SplitAttentionPool2d(nn.Module):
    """open_clip's RN ``AttentionPool2d`` with its projections called as modules; same parameter names.

    The original passes the projection weights to ``F.multi_head_attention_forward``, so adapters on
    ``q_proj``/``k_proj``/``v_proj``/``c_proj`` would never act.
    """

    moram_layout = "split_attention"

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.positional_embedding: nn.Parameter = pool.positional_embedding  # (HW + 1, C)
        self.q_proj: nn.Linear = pool.q_proj
        self.k_proj: nn.Linear = pool.k_proj
        self.v_proj: nn.Linear = pool.v_proj
        self.c_proj: nn.Linear = pool.c_proj
        self.num_heads: int = pool.num_heads

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).permute(0, 2, 1)  # (N, C, H, W) -> (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (N, HW + 1, C): mean token first
        x = x + self.positional_embedding.to(x.dtype)
        n, t, _ = x.shape
        q, k, v = (  # (N, H, T, D) each
            p(x).reshape(n, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, D)
        x = x.transpose(1, 2).reshape(n, t, -1)[:, 0]  # (N, C): the mean token's output
        return self.c_proj(x)

    def to_packed(self, name: str = "") -> nn.Module:
        from open_clip.modified_resnet import AttentionPool2d

        spacial = math.isqrt(self.positional_embedding.shape[0] - 1)
        with torch.device("meta"):
            pool = AttentionPool2d(spacial, self.q_proj.in_features, self.num_heads, self.c_proj.out_features)
        pool.positional_embedding = self.positional_embedding
        pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj = self.q_proj, self.k_proj, self.v_proj, self.c_proj
        return pool


def _converters() -> dict[type[nn.Module], Callable[[nn.Module, str], nn.Module]]:
    """Packed attention types present in this environment, with their converter."""
    found: dict[type[nn.Module], Callable[[nn.Module, str], nn.Module]] = {
        nn.MultiheadAttention: SplitAttention.from_multihead,  # type: ignore[dict-item]
    }
    try:
        from open_clip.transformer import Attention

        found[Attention] = SplitAttention.from_open_clip
    except ImportError:  # open_clip versions without the custom attention
        pass
    try:
        from open_clip.modified_resnet import AttentionPool2d

        found[AttentionPool2d] = lambda pool, name: SplitAttentionPool2d(pool)
    except ImportError:
        pass
    return found


def _swap(model: nn.Module, convert: Callable[[nn.Module, str], nn.Module | None]) -> int:
    """Replace every module for which ``convert`` returns a module; returns how many were replaced.

    All replacements are built before any is installed, so an error leaves the model unchanged.
    A module shared under several names is converted once and the copy shared the same way.
    """
    built: dict[int, nn.Module] = {}
    places: list[tuple[str, int]] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) not in built:
            new = convert(module, name)
            if new is None:
                continue
            if not name:
                raise ValueError(f"convert the model that contains this {type(module).__name__}, not the module itself")
            built[id(module)] = new
        places.append((name, id(module)))
    for name, key in places:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, built[key])
    return len(built)


def convert_attention(model: nn.Module) -> int:
    """Replace every packed attention of ``model`` by its split equivalent, in place; idempotent.

    Converted: ``nn.MultiheadAttention`` (ViT and text blocks, ``AttentionalPooler``, CoCa's
    cross-attention), open_clip's custom ``Attention`` and RN ``AttentionPool2d``.

    Returns:
        The number of modules converted (0 on a second call).

    Raises:
        NotImplementedError: for an ``nn.MultiheadAttention`` with ``add_bias_kv`` or ``add_zero_attn``.

    Example:
        >>> block = nn.Sequential(nn.MultiheadAttention(8, 2))
        >>> convert_attention(block), convert_attention(block), type(block[0]).__name__
        (1, 0, 'SplitAttention')
    """
    converters = _converters()

    def convert(module: nn.Module, name: str) -> nn.Module | None:
        fn = converters.get(type(module))
        if fn is None and isinstance(module, nn.MultiheadAttention):  # subclasses keep MHA's packed layout
            fn = converters[nn.MultiheadAttention]
        return None if fn is None else fn(module, name)

    return _swap(model, convert)


def restore_packed_attention(model: nn.Module) -> int:
    """Inverse of :func:`convert_attention`: put the packed modules back, bit-exact; returns how many.

    Raises:
        ValueError: when a projection carries atoms (they cannot be merged into a packed weight).
    """

    def convert(module: nn.Module, name: str) -> nn.Module | None:
        return module.to_packed(name) if isinstance(module, SplitAttention | SplitAttentionPool2d) else None

    return _swap(model, convert)
