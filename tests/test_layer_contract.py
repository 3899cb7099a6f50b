"""The contract every continual layer keeps, checked over MoRAM's atoms and the four baselines alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moram import MoRAMConfig, continual_layers
from moram.adapters import AdapterFileError, ContinualLinear, load_adapters, read_adapter_config, save_adapters
from moram.baselines import MoELoRAConfig, OLoRAConfig, RankRExpertsConfig, SequentialLoRAConfig

METHODS = {
    "moram": lambda **kw: MoRAMConfig(**{"rank": 2, "top_k": 2, "threshold": None, **kw}),
    "lora": lambda **kw: SequentialLoRAConfig(**{"rank": 2, **kw}),
    "moe_lora": lambda **kw: MoELoRAConfig(**{"rank": 2, **kw}),
    "experts": lambda **kw: RankRExpertsConfig(**{"rank": 2, "threshold": None, **kw}),
    "olora": lambda **kw: OLoRAConfig(**{"rank": 2, **kw}),
}
OTHER_SETTING = {"moram": {"scale": 2.0}, "lora": {"scale": 2.0}, "moe_lora": {"top_k": 1}, "experts": {"scale": 2.0},
                 "olora": {"lambda_orth": 0.1}}
TARGETS = ["0", "2"]


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def adapted(kind: str, max_tasks: int = 3, **kw) -> nn.Module:
    model = backbone()
    METHODS[kind](**kw).inject(model, TARGETS, max_tasks=max_tasks, seed=0)
    return model


def train(model: nn.Module, steps: int = 3, weight_decay: float = 0.0) -> None:
    """A few AdamW steps over *every* Parameter (frozen ones included: they must stay untouched)."""
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().neg().backward()
        opt.step()


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = args[0]  # returns None: a forward hook's return value would replace the output

        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in continual_layers(model)]
    model(x)
    for h in handles:
        h.remove()
    return seen


kinds = pytest.mark.parametrize("kind", list(METHODS))


@kinds
def test_injection_changes_no_output_and_trains_only_current_parameters(kind):
    plain, model = backbone(), adapted(kind)
    x = torch.randn(4, 6)
    for mode in (True, False):
        plain.train(mode)
        model.train(mode)
        assert torch.equal(model(x), plain(x))
    layers = continual_layers(model)
    assert [n for n, _ in layers] == TARGETS
    assert all(isinstance(layer, ContinualLinear) for _, layer in layers)
    current = {id(p) for _, layer in layers for p in layer.current_parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == current


@kinds
def test_every_target_is_live_after_one_step(kind):
    model = adapted(kind)
    train(model, steps=1)
    model.eval()
    inputs = layer_inputs(model, torch.randn(5, 6))
    for name, layer in continual_layers(model):
        with torch.no_grad():
            assert not torch.allclose(layer(inputs[name]), layer.base(inputs[name])), name


@kinds
def test_frozen_state_is_immune_to_adamw_with_weight_decay(kind):
    model = adapted(kind)
    train(model)
    for _, layer in continual_layers(model):
        layer.consolidate()
    current = {id(p) for _, layer in continual_layers(model) for p in layer.current_parameters()}
    frozen = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()
              if id(v) not in current and not k.endswith("current_trained")}  # turns on when trained
    train(model, weight_decay=0.5)
    after = model.state_dict()
    for key, value in frozen.items():
        assert torch.equal(after[key], value), key  # the backbone and every frozen expert / atom / counter


@kinds
def test_state_dict_and_adapter_file_round_trip_exactly(kind, tmp_path):
    model = adapted(kind)
    train(model)
    for _, layer in continual_layers(model):
        layer.consolidate()
    train(model, steps=1)
    model.eval()
    x = torch.randn(3, 6)
    by_state, by_file, rebuilt = adapted(kind), adapted(kind), backbone()
    by_state.load_state_dict(model.state_dict())
    folder = save_adapters(model, tmp_path / "adapters", seed=0)
    load_adapters(by_file, folder)
    assert load_adapters(rebuilt, folder) == TARGETS  # a plain backbone gets the method's layers first
    assert read_adapter_config(folder)["method"]["init_args"] == METHODS[kind]().options()
    for other in (by_state, by_file, rebuilt):
        other.eval()
        assert torch.equal(other(x), model(x))
        assert [layer.task_index for _, layer in continual_layers(other)] == [1, 1]
        for (_, a), (_, b) in zip(continual_layers(other), continual_layers(model), strict=True):
            assert a.state_dict().keys() == b.state_dict().keys()
            assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@kinds
def test_mismatched_settings_are_refused(kind, tmp_path):
    model = adapted(kind)
    with pytest.raises(ValueError, match="already carries"):
        METHODS[kind](**OTHER_SETTING[kind]).inject(model, TARGETS, max_tasks=3, seed=0)
    assert METHODS[kind]().inject(model, TARGETS, max_tasks=3, seed=0) == TARGETS  # same settings: a no-op
    save_adapters(model, tmp_path / "a")
    with pytest.raises(AdapterFileError, match="layer '0'"):
        load_adapters(adapted(kind, **OTHER_SETTING[kind]), tmp_path / "a")
    load_adapters(adapted(kind, max_tasks=4), tmp_path / "a")  # a larger capacity: to keep learning
    for _, layer in continual_layers(model):
        layer.consolidate()
    save_adapters(model, tmp_path / "b")
    with pytest.raises(AdapterFileError, match="raise model.max_tasks to at least 2"):
        load_adapters(adapted(kind, max_tasks=1), tmp_path / "b")  # the file's tasks do not fit
    if kind != "lora":  # the one LoRA has no per-task storage, so its state fits any capacity
        bigger = backbone()
        METHODS[kind]().inject(bigger, TARGETS, max_tasks=4, seed=0)
        with pytest.raises((RuntimeError, ValueError)):
            bigger.load_state_dict(model.state_dict())  # shapes of another capacity


@kinds
def test_consolidation_past_capacity_is_refused_and_changes_nothing(kind):
    model = adapted(kind, max_tasks=2)
    train(model)
    [(_, layer), *_] = continual_layers(model)
    layer.consolidate()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"max_tasks=2 tasks.*at least 3"):
        layer.consolidate()
    assert layer.task_index == 1
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


@kinds
def test_route_hooks_see_the_weights_of_routed_layers(kind):
    model = adapted(kind)
    train(model, steps=1)
    [(_, layer), *_] = continual_layers(model)
    if not hasattr(type(layer), "units_per_task"):
        pytest.skip(f"{kind} routes nothing")
    seen: list[torch.Tensor] = []
    handle = layer.register_route_hook(seen.append)
    model(torch.randn(2, 6))
    handle.remove()
    model(torch.randn(2, 6))
    assert len(seen) == 1
    assert seen[0].shape[:-1] == (2,)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(2))  # top-k softmax weights (no delta gate here)
