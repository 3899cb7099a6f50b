"""SplitAttention equals the packed attention it replaces (open_clip models and bare modules)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moram.atoms import AtomConfig, AtomLinear
from moram.backbones.clip.attention import (
    SplitAttention,
    SplitAttentionPool2d,
    convert_attention,
    restore_packed_attention,
)

open_clip = pytest.importorskip("open_clip")
from open_clip.transformer import Attention  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")
VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
TEXT = {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 2}


def _randomize_biases(model: nn.Module) -> nn.Module:
    """Non-zero biases (and norm weights), so a q/k/v mix-up in the split cannot go unnoticed."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name or "head_scale" in name:
                p.normal_(mean=0.5 if name.endswith("weight") or "head_scale" in name else 0.0, std=0.2)
    return model


def tiny_model(kind: str) -> tuple[nn.Module, int]:
    """A tiny open_clip model and its image size."""
    torch.manual_seed(0)
    if kind == "clip":
        model, size = open_clip.CLIP(32, VISION, TEXT), 32
    elif kind == "custom_attention":  # open_clip's own packed Attention class, with its optional parts
        extras = {"qk_norm": True, "scale_heads": True, "scale_attn_inner": True}
        model, size = open_clip.CLIP(32, {**VISION, **extras}, {**TEXT, "qk_norm": True}), 32
    elif kind == "rn":  # ModifiedResNet: AttentionPool2d
        resnet = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}
        model, size = open_clip.CLIP(32, resnet, TEXT), 64
    else:  # CoCa: AttentionalPooler with kdim != embed_dim (vision width 48), cross-attention, CLS text mask (3-D)
        vision = {**VISION, "width": 48, "head_width": 24, "attentional_pool": True, "attn_pooler_queries": 4,
                  "attn_pooler_heads": 2, "output_tokens": True}
        text = {**TEXT, "embed_cls": True, "output_tokens": True}
        multimodal = {**TEXT, "layers": 1, "attn_pooler_heads": 2}
        model, size = open_clip.CoCa(64, multimodal, text, vision), 32
        nn.init.normal_(model.text_decoder.text_projection, std=0.1)  # open_clip 3.3.0 leaves it torch.empty
    return _randomize_biases(model).eval(), size


def _inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 999, (2, 16), generator=g)
    text[0, 9:] = 0  # padding: exercised by the pad / CLS masks where the model has them
    return torch.randn(2, 3, size, size, generator=g), text


def _outputs(model: nn.Module, image: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
    out = model(image, text)
    if isinstance(out, dict):
        return [out[k] for k in sorted(out) if k not in ("labels", "logit_scale")]
    return [o for o in out if o.dim() > 0]


def _packed_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of a converted model, keyed and laid out as in the packed model."""
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, module in model.named_modules():
        if not isinstance(module, SplitAttention):
            continue
        w = [grads.pop(f"{name}.{p}_proj.weight") for p in "qkv"]
        if module.k_proj.in_features == module.v_proj.in_features == module.embed_dim:
            grads[f"{name}.in_proj_weight"] = torch.cat(w)  # (3E, E): q, k, v
        else:  # nn.MultiheadAttention keeps separate q/k/v weights when kdim != embed_dim
            grads.update({f"{name}.{p}_proj_weight": g for p, g in zip("qkv", w, strict=True)})
        grads[f"{name}.in_proj_bias"] = torch.cat([grads.pop(f"{name}.{p}_proj.bias") for p in "qkv"])
    return grads


# ---------------------------------------------------------------------------- bare modules
L, S, B, E, H = 5, 7, 3, 16, 4


def _mha_cases() -> dict[str, dict[str, object]]:
    g = torch.Generator().manual_seed(2)
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)  # True = masked; never a fully masked row
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, -2:] = True
    return {
        "plain": {"need_weights": False},
        "bool_2d": {"attn_mask": causal, "need_weights": False},
        "float_2d": {"attn_mask": torch.randn(L, S, generator=g), "need_weights": False},
        "bool_3d": {"attn_mask": torch.rand(B * H, L, S, generator=g) > 0.8, "need_weights": False},
        "float_3d": {"attn_mask": torch.randn(B * H, L, S, generator=g), "need_weights": False},
        "padding_bool": {"key_padding_mask": pad, "need_weights": False},
        "padding_float": {"key_padding_mask": torch.randn(B, S, generator=g), "need_weights": False},
        "weights_mean": {"attn_mask": causal, "key_padding_mask": pad},
        "weights_per_head": {"attn_mask": causal, "need_weights": True, "average_attn_weights": False},
    }


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", list(_mha_cases()))
def test_split_attention_matches_multihead(batch_first: bool, case: str) -> None:
    torch.manual_seed(0)
    mha = _randomize_biases(nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=12, vdim=10)).eval()
    split = SplitAttention.from_multihead(mha).eval()
    q, k, v = torch.randn(B, L, E), torch.randn(B, S, 12), torch.randn(B, S, 10)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (T, B, E)
    kwargs = _mha_cases()[case]
    want, got = mha(q, k, v, **kwargs), split(q, k, v, **kwargs)
    torch.testing.assert_close(got[0], want[0], **TOL)
    assert (got[1] is None) == (want[1] is None)
    if want[1] is not None:
        torch.testing.assert_close(got[1], want[1], **TOL)


def test_unbatched_self_attention_without_bias() -> None:
    mha = nn.MultiheadAttention(E, H, bias=False).eval()
    split = SplitAttention.from_multihead(mha).eval()
    assert split.q_proj.bias is None
    assert split.out_proj.bias is None
    x = torch.randn(L, E)
    for a, b in zip(split(x, x, x), mha(x, x, x), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_open_clip_attention_with_its_optional_parts() -> None:
    torch.manual_seed(0)
    attn = _randomize_biases(Attention(E, H, qk_norm=True, scale_heads=True, inner_norm=True)).eval()
    split = SplitAttention.from_open_clip(attn).eval()
    x = torch.randn(B, L, E)
    for mask in (None, torch.randn(L, L), torch.ones(L, L, dtype=torch.bool).triu(1), torch.randn(B * H, L, L)):
        torch.testing.assert_close(split(x, attn_mask=mask), attn(x, attn_mask=mask), **TOL)


def test_scaled_cosine_attention_follows_its_formula() -> None:
    # open_clip 3.3.0's own forward fails on this path (torch.bmm of 4-D tensors), so check the formula.
    torch.manual_seed(0)
    attn = Attention(E, H, scaled_cosine=True)
    with torch.no_grad():
        attn.logit_scale.uniform_(0.5, 3.0)
    split = SplitAttention.from_open_clip(attn).eval()
    x = torch.randn(B, L, E)
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    q, k, v = (t.reshape(B, L, H, -1).transpose(1, 2) for t in qkv)  # (B, H, L, D)
    scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)  # (B, H, L, L)
    scores = scores * attn.logit_scale.clamp(max=math.log(100)).exp()
    want = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, E))
    torch.testing.assert_close(split(x), want, **TOL)


def test_dropout_is_honoured_in_training_only() -> None:
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    split = SplitAttention.from_multihead(mha)
    x = torch.randn(B, L, E)
    split.train()
    assert not torch.allclose(split(x, x, x, need_weights=False)[0], split(x, x, x, need_weights=False)[0])
    weights = split(x, x, x, average_attn_weights=False)[1]
    assert (weights == 0).any()  # dropped ...
    assert (weights > 1 / S).any()  # ... and the rest rescaled by 1 / (1 - p)
    split.eval(), mha.eval()
    torch.testing.assert_close(split(x, x, x)[0], mha(x, x, x)[0], **TOL)


def test_out_proj_adapter_is_dead_before_conversion_and_live_after() -> None:
    block = nn.Sequential(nn.MultiheadAttention(E, H, batch_first=True))
    calls: list[int] = []
    block[0].out_proj.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(B, L, E)
    block[0](x, x, x)
    assert calls == []  # nn.MultiheadAttention reads out_proj.weight, never calls out_proj
    convert_attention(block)
    block[0](x, x, x)
    assert calls == [1]


def test_unsupported_attention_raises_naming_it_and_changes_nothing() -> None:
    model = nn.ModuleDict({"ok": nn.MultiheadAttention(E, H), "odd": nn.MultiheadAttention(E, H, add_bias_kv=True)})
    with pytest.raises(NotImplementedError, match="'odd'.*add_bias_kv"):
        convert_attention(model)
    assert type(model["ok"]) is nn.MultiheadAttention


def test_shared_attention_stays_shared() -> None:
    mha = nn.MultiheadAttention(E, H)
    model = nn.ModuleDict({"a": mha, "b": mha})
    assert convert_attention(model) == 1
    assert model["a"] is model["b"]
    assert isinstance(model["a"], SplitAttention)


# ---------------------------------------------------------------------------- open_clip models
# coca: 2 + 2 tower blocks, the attentional pooler, 1 decoder block + 1 cross-attention
EXPECTED_CONVERSIONS = {"clip": 4, "custom_attention": 4, "rn": 3, "coca": 7}


@pytest.mark.parametrize("kind", list(EXPECTED_CONVERSIONS))
def test_converted_model_equals_original(kind: str) -> None:
    model, size = tiny_model(kind)
    converted = copy.deepcopy(model)
    assert convert_attention(converted) == EXPECTED_CONVERSIONS[kind]
    assert convert_attention(converted) == 0
    packed = (nn.MultiheadAttention, Attention, type(getattr(model.visual, "attnpool", None)))
    assert not any(type(m) in packed for m in converted.modules())
    image, text = _inputs(size)
    want, got = _outputs(model, image, text), _outputs(converted, image, text)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    sum(o.square().sum() for o in want).backward()
    sum(o.square().sum() for o in got).backward()
    grads = _packed_grads(converted)
    want_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        # Relative to the tensor's scale (summation order differs); grads that are zero in exact arithmetic
        # (a k bias shift cancels in the softmax) are float noise on both sides.
        atol = max(1e-6, 1e-5 * float(grad.abs().max()))
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", list(EXPECTED_CONVERSIONS))
def test_restore_packed_attention_is_exact(kind: str) -> None:
    model, size = tiny_model(kind)
    round_trip = copy.deepcopy(model)
    n = convert_attention(round_trip)
    assert restore_packed_attention(round_trip) == n
    assert [type(m) for m in round_trip.modules()] == [type(m) for m in model.modules()]
    want, got = model.state_dict(), round_trip.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    image, text = _inputs(size)
    for a, b in zip(_outputs(round_trip, image, text), _outputs(model, image, text), strict=True):
        assert torch.equal(a, b)


def test_attention_pool_projections_are_live() -> None:
    model, size = tiny_model("rn")
    convert_attention(model)
    pool = model.visual.attnpool
    assert isinstance(pool, SplitAttentionPool2d)
    image = _inputs(size)[0]
    before = model.encode_image(image)
    with torch.no_grad():
        pool.k_proj.weight.add_(torch.randn_like(pool.k_proj.weight))  # (a k bias shift would cancel in softmax)
    assert not torch.allclose(model.encode_image(image), before)


def test_restore_refuses_layers_with_atoms() -> None:
    block = nn.Sequential(nn.MultiheadAttention(E, H))
    convert_attention(block)
    block[0].v_proj = AtomLinear(block[0].v_proj, E, E, AtomConfig(rank=2, max_tasks=2))
    with pytest.raises(ValueError, match="'0' cannot be packed"):
        restore_packed_attention(block)
