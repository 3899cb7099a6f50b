"""The method's formula (moram.atoms.routing) by hand, and the fast kernels of the atom bank against it.

One check, :func:`check_against_reference`: a layer's output and gradients (input, current keys and
values) equal ``base(x) + reference_delta(x, keys, values)`` computed in float64, over N, k, the dense
and sparse value sums, signed and absolute scores, training and inference, dtypes, autocast and
``torch.compile``; and ``AtomConfig(reference=True)`` banks equal the fast ones.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from moram import AtomConfig, AtomLinear
from moram.atoms import kernels
from moram.atoms.routing import normalized_topk_weights, reference_delta

D_IN, D_OUT, TOKENS = 12, 7, (2, 5)
PATHS = {"auto": kernels.sparse_min_atoms_per_k, "dense": math.inf, "sparse": 0.0}


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
    """Force the dense or the sparse value sum (or leave the measured switch)."""
    monkeypatch.setattr(kernels, "sparse_min_atoms_per_k", PATHS[request.param])
    return request.param


def test_reference_by_hand():
    """N = 3 atoms, d = 2, k = 2, one token: every step of docs/design.md §1 with Python floats."""
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # (N, d_in)
    values = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, -2.0]], dtype=torch.float64)  # (N, d_out)
    x = torch.tensor([2.0, -1.0], dtype=torch.float64)
    tau, eps, scale = 0.5, 1e-6, 2.0
    p = [2.0, -1.0, 1.0]  # A x
    norm = math.sqrt(4 + 1 + 1) + eps
    s = [v / norm for v in p]  # top-2 by signed score: atoms 0 and 2
    e0, e2 = math.exp(s[0] / tau), math.exp(s[2] / tau)
    w = [e0 / (e0 + e2), 0.0, e2 / (e0 + e2)]
    expected = [scale * sum(w[i] * p[i] * values[i, j].item() for i in range(3)) for j in range(2)]
    got = reference_delta(x, keys, values, top_k=2, temperature=tau, eps=eps, threshold=None, scale=scale)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    # the gate at inference: s[2] = 0.408 < 0.5 drops atom 2 without renormalising
    gated = reference_delta(x, keys, values, top_k=2, temperature=tau, eps=eps, threshold=0.5, scale=scale)
    torch.testing.assert_close(gated, scale * w[0] * p[0] * values[0], rtol=1e-14, atol=1e-14)
    # absolute scores over atoms 0 and 1 only (‖p‖ = √5): |s| = (0.894, 0.447), both selected
    norm2 = math.sqrt(4 + 1) + eps
    a0, a1 = math.exp(2.0 / norm2 / tau), math.exp(1.0 / norm2 / tau)
    wa = [a0 / (a0 + a1), a1 / (a0 + a1)]
    absolute = reference_delta(x, keys[:2], values[:2], top_k=2, temperature=tau, eps=eps, threshold=None,
                               scale=scale, signed=False)
    torch.testing.assert_close(absolute, scale * (wa[0] * p[0] * values[0] + wa[1] * p[1] * values[1]),
                               rtol=1e-14, atol=1e-14)


def make_layer(n_atoms: int, top_k: int, *, rank: int = 16, dtype=torch.float64, signed: bool = True,
               threshold: float | None = 0.1, seed: int = 0, temperature: float = 0.1, scale: float = 1.5,
               reference: bool = False) -> AtomLinear:
    """A layer holding n_atoms atoms (n_atoms / rank - 1 frozen tasks plus trained current atoms)."""
    torch.manual_seed(seed)
    tasks = n_atoms // rank
    cfg = AtomConfig(rank=rank, top_k=top_k, max_tasks=tasks, temperature=temperature, threshold=threshold,
                     scale=scale, signed_scores=signed, reference=reference)
    layer = AtomLinear(nn.Linear(D_IN, D_OUT, dtype=dtype), D_IN, D_OUT, cfg)
    layer.base.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    for task in range(tasks):
        with torch.no_grad():
            layer.current_keys.copy_(torch.randn(rank, D_IN, generator=gen))
            layer.current_values.copy_(torch.randn(rank, D_OUT, generator=gen))
        if task < tasks - 1:
            layer.consolidate()
    layer.train()
    layer.mark_trained()  # as a training step would: the current atoms route at inference too
    assert layer.num_atoms == n_atoms
    return layer


def check_against_reference(layer: AtomLinear, x: Tensor, *, training: bool, rtol: float, atol: float) -> None:
    """Output and gradients of ``layer`` equal the float64 reference formula."""
    bank = layer
    layer.train(training)
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    keys = layer.keys.detach().to(torch.float64).requires_grad_(True)
    values = layer.values.detach().to(torch.float64).requires_grad_(True)
    x_ref = x.detach().to(torch.float64).requires_grad_(True)
    base = copy.deepcopy(layer.base).to(torch.float64)
    ref = base(x_ref) + reference_delta(
        x_ref, keys, values, top_k=bank.top_k, temperature=bank.temperature, eps=bank.eps,
        threshold=None if training else bank.threshold, scale=bank.scale, signed=bank.signed_scores,
    )
    torch.testing.assert_close(out.to(torch.float64), ref, rtol=rtol, atol=atol)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out.backward(grad_out.to(out.dtype))
    ref.backward(grad_out)
    r = bank.rank
    assert x.grad is not None
    assert keys.grad is not None
    assert values.grad is not None
    torch.testing.assert_close(x.grad.to(torch.float64), x_ref.grad, rtol=rtol, atol=atol)
    torch.testing.assert_close(bank.current_keys.grad.to(torch.float64), keys.grad[-r:], rtol=rtol, atol=atol)
    torch.testing.assert_close(bank.current_values.grad.to(torch.float64), values.grad[-r:], rtol=rtol, atol=atol)
    assert not bank.frozen_keys.requires_grad  # frozen atoms get gradient in the reference only
    assert bank.frozen_values.grad is None


@pytest.mark.parametrize("n_atoms", [16, 64, *(pytest.param(n, marks=pytest.mark.slow) for n in (160, 640))])
@pytest.mark.parametrize("top_k", [1, 2, 8, 10_000])  # 1: raised to 2; 10_000: k == N, every atom selected
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_float64_matches_reference(n_atoms, top_k, path, signed, training):
    rank = 32 if n_atoms == 640 else 16
    layer = make_layer(n_atoms, top_k, rank=rank, signed=signed)
    x = torch.randn(*TOKENS, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(n_atoms))
    check_against_reference(layer, x, training=training, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(rank=3, top_k=2, temperature=0.5, threshold=0.2, scale=1.0),
        dict(rank=4, top_k=5, temperature=0.01, threshold=None, scale=2.0),
        dict(rank=2, top_k=1, temperature=1.0, threshold=-0.1, scale=0.5),
        dict(rank=3, top_k=4, temperature=0.2, threshold=0.1, scale=1.0, signed=False),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_small_banks_match_reference(cfg, training):
    """Odd ranks and k, negative and absent gates, tiny temperature; three tasks of atoms."""
    cfg = dict(cfg)
    rank, top_k = cfg.pop("rank"), cfg.pop("top_k")
    layer = make_layer(3 * rank, top_k, rank=rank, **cfg)
    x = torch.randn(*TOKENS, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
    check_against_reference(layer, x, training=training, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_atoms", [64, 640])
@pytest.mark.parametrize("training", [True, False])
def test_float32_matches_reference(n_atoms, path, training):
    layer = make_layer(n_atoms, 8, dtype=torch.float32, threshold=None)
    x = torch.randn(*TOKENS, D_IN, generator=torch.Generator().manual_seed(5))
    check_against_reference(layer, x, training=training, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n_atoms", "top_k"), [(16, 8), (64, 8), (640, 8), (160, 10_000)])
@pytest.mark.parametrize("training", [True, False])
def test_reference_switch_gives_the_same_layer(n_atoms, top_k, training):
    """``AtomConfig(reference=True)``: same outputs, gradients and route-hook weights; same checkpoints."""
    rank = 32 if n_atoms == 640 else 16
    fast = make_layer(n_atoms, top_k, rank=rank)
    slow = make_layer(n_atoms, top_k, rank=rank, reference=True)
    assert fast.settings() == slow.settings()  # reference only says how to compute
    slow.load_state_dict(fast.state_dict())  # checkpoints are interchangeable
    x = torch.randn(*TOKENS, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for layer in (fast, slow):
        layer.train(training)
        seen: list[Tensor] = []
        handle = layer.register_route_hook(seen.append)
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        out.pow(2).sum().backward()
        handle.remove()
        results.append([out, seen[0], xi.grad, layer.current_keys.grad, layer.current_values.grad])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert AtomConfig.from_dict({k: v for k, v in AtomConfig().to_dict().items() if k != "reference"}) == AtomConfig()


@pytest.mark.parametrize(("n_atoms", "sparse"), [(32, False), (640, True)])
def test_inference_without_grad_matches_training_graph_path(n_atoms, sparse):
    """Inference under no_grad fuses the key and the value products; it equals the graph-building path."""
    layer = make_layer(n_atoms, 8, rank=16 if n_atoms < 640 else 32)
    assert (n_atoms >= kernels.sparse_min_atoms_per_k * 8) == sparse
    layer.eval()
    x = torch.randn(*TOKENS, D_IN, dtype=torch.float64)
    with torch.no_grad():
        fast = layer(x)
    torch.testing.assert_close(fast, layer(x), rtol=1e-12, atol=1e-12)


def test_sparse_path_does_no_gradient_work_for_frozen_values():
    """No op of the backward pass produces an (n, d_out) or (N, d_out) tensor: no frozen value gradient."""
    layer = make_layer(160, 8, dtype=torch.float32)
    assert layer.num_atoms >= kernels.sparse_min_atoms_per_k * 8  # the sparse path is the default here
    x = torch.randn(*TOKENS, D_IN, requires_grad=True)
    out = layer(x)
    shapes: list[tuple[int, ...]] = []

    class RecordShapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, (tuple, list)) else [result]:
                if isinstance(t, Tensor):
                    shapes.append(tuple(t.shape))
            return result

    with RecordShapes():
        out.sum().backward()
    n = layer.num_frozen_atoms
    assert shapes, "the backward pass ran no op"
    assert (n, D_OUT) not in shapes
    assert (layer.num_atoms, D_OUT) not in shapes
    assert (layer.rank, D_OUT) in shapes  # the current values' gradient
    assert layer.current_values.grad is not None
    assert layer.current_values.grad.abs().sum() > 0
    assert layer.frozen_values.grad is None


def test_exact_two_stage_topk_including_ties():
    """Identity keys make the responses the given rows; the selected atoms are the k largest (ties: any)."""
    gen = torch.Generator().manual_seed(0)
    for num in (40, 160, 320, 624, 640, 1280, 1600, 999):
        keys = torch.eye(num)  # (N, N): p = x
        values = torch.zeros(num, 1)
        for k in (2, 8, 16):
            for order in (torch.randn(30, num, generator=gen), torch.randint(0, 9, (30, num), generator=gen).float()):
                seen: list[Tensor] = []
                kernels.routed_delta(
                    order, keys[: num - 1], values[: num - 1], keys[num - 1 :], values[num - 1 :], use_current=True,
                    top_k=k, temperature=1e3, eps=1e-6, threshold=None, scale=1.0, signed=True,
                    route_hooks=[seen.append],
                )
                selected = seen[0] > 0  # (30, N): every selected atom has a positive weight at this temperature
                assert (selected.sum(-1) == k).all()
                got = order[selected].reshape(30, k).sort(-1).values
                torch.testing.assert_close(got, order.topk(k, dim=-1).values.sort(-1).values, rtol=0, atol=0)


def test_fused_base_addition_falls_back_for_other_dtypes():
    """A base output of another dtype is added after the product (the fused addmm needs one dtype)."""
    layer = make_layer(64, 8, dtype=torch.float32)
    x = torch.randn(*TOKENS, D_IN)
    y = layer.base(x)
    delta = layer.delta(x)
    out = layer.add_delta(x, y.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, (y + delta).double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.add_delta(x, y), y + delta, rtol=1e-6, atol=1e-6)


def test_no_routed_atom_gives_zeros_and_the_base_output():
    layer = AtomLinear(nn.Linear(D_IN, D_OUT), D_IN, D_OUT, AtomConfig(rank=2, max_tasks=2)).eval()
    x, y = torch.randn(3, D_IN), torch.randn(3, D_OUT)
    assert layer.num_routed == 0
    assert torch.equal(layer.delta(x), torch.zeros(3, D_OUT))
    assert layer.add_delta(x, y) is y


@pytest.mark.parametrize("n_atoms", [16, 32, 160])  # current atoms only; dense and sparse value sums
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_autocast_bf16_routes_in_float32(n_atoms, training, grad):
    layer = make_layer(n_atoms, 8, dtype=torch.float32)
    layer.train(training)
    x = torch.randn(*TOKENS, D_IN, generator=torch.Generator().manual_seed(7))
    seen: list[Tensor] = []
    handle = layer.register_route_hook(seen.append)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        out = layer(x)
        n = layer.num_frozen_atoms  # the key responses as the layer computes them under autocast:
        if grad:  # separate products for frozen and current keys
            p_low = torch.cat([nn.functional.linear(x, layer.frozen_keys[:n]),
                               nn.functional.linear(x, layer.current_keys)], dim=-1)
        else:  # one product
            p_low = nn.functional.linear(x, torch.cat([layer.frozen_keys[:n], layer.current_keys]))
        base_dtype = layer.base(x).dtype
    handle.remove()
    assert p_low.dtype == torch.bfloat16
    assert out.dtype == base_dtype == torch.bfloat16
    (w,) = seen
    assert w.dtype == torch.float32  # routing statistics in float32 ...
    bank = layer
    expected = normalized_topk_weights(  # ... of the low-precision responses
        p_low.float(), top_k=bank.top_k, temperature=bank.temperature, eps=bank.eps,
        threshold=None if training else bank.threshold, signed=bank.signed_scores,
    )
    # bf16 responses tie often; tied atoms have equal weights, so compare each token's sorted weights
    torch.testing.assert_close(w.sort(-1).values, expected.sort(-1).values, rtol=1e-6, atol=1e-6)
    # the value product given that routing: bf16 output within bf16 rounding of the float64 sum
    base = copy.deepcopy(layer.base).to(torch.float64)
    ref = base(x.double()) + bank.scale * (w.double() * p_low.double()) @ layer.values.detach().double()
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=5e-2)
    if training and grad:
        out.float().sum().backward()
        assert layer.current_values.grad is not None
        assert layer.current_values.grad.dtype == torch.float32
        assert torch.isfinite(layer.current_keys.grad).all()


# torch.compile of a layer takes seconds on CPU: slow (the eager kernels are checked by default above)
@pytest.mark.slow
@pytest.mark.parametrize("n_atoms", [16, 32,  # dense and sparse value sums
                                     160])  # current atoms only
def test_compiles_without_graph_breaks(n_atoms):
    torch._dynamo.reset()
    layer = make_layer(n_atoms, 8, dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(*TOKENS, D_IN, generator=torch.Generator().manual_seed(9))
    for training in (True, False):
        layer.train(training)
        eager_x = x.clone().requires_grad_(True)
        eager = layer(eager_x)
        eager.sum().backward()
        eager_grads = [eager_x.grad, layer.current_keys.grad, layer.current_values.grad]
        layer.zero_grad(set_to_none=True)
        comp_x = x.clone().requires_grad_(True)
        out = compiled(comp_x)
        out.sum().backward()
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
        for got, want in zip([comp_x.grad, layer.current_keys.grad, layer.current_values.grad],
                             eager_grads, strict=True):
            assert got is not None
            assert want is not None
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        layer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-6)
        check_against_reference(layer, x, training=training, rtol=1e-5, atol=1e-5)
        layer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("n_atoms", [16, 32])
def test_softmax_tail_is_flushed_to_zero_not_subnormal(n_atoms):
    """tau = 0.01 pushes part of the softmax into subnormals (slow CPU matmuls); they become exact zeros."""
    layer = make_layer(n_atoms, n_atoms, dtype=torch.float32, temperature=0.01, threshold=None)  # k = N
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(11))
    seen: list[Tensor] = []
    handle = layer.register_route_hook(seen.append)
    layer(x)
    handle.remove()
    (w,) = seen
    tiny = torch.finfo(torch.float32).tiny
    assert not ((w > 0) & (w < tiny)).any()
    p = x @ layer.keys.detach().T
    exact = normalized_topk_weights(p, top_k=n_atoms, temperature=0.01, eps=layer.eps, threshold=None)
    assert ((exact > 0) & (exact < tiny)).any()  # the plain softmax does produce subnormals here
    torch.testing.assert_close(w.sort(-1).values, exact.sort(-1).values, rtol=1e-5, atol=1e-30)
