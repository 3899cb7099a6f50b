"""The one injector: match target modules, wrap each in a continual layer, freeze the rest.

Every method (MoRAM and the baselines) injects through :func:`inject_layers`. Matching follows the
usual adapter conventions: a pattern matches a module whose full name equals it, whose name ends
with ``"." + pattern`` (a dotted suffix), or, for patterns written ``"re:<regex>"``, whose full name
matches the regular expression entirely. A pattern that matches nothing, or a match of a type that
is not a linear map, is an error naming it.

Example:
    >>> from moram.baselines.lora import LoRALinear
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> inject_layers(model, ["0", "2"], lambda base, d_in, d_out, seed: LoRALinear(
    ...     base, d_in, d_out, rank=2, max_tasks=3, seed=seed))
    ['0', '2']
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from torch import nn

from moram.adapters.layer import ContinualLinear
from moram.adapters.seeding import layer_seed
from moram.errors import ConfigError
from moram.protocols import clean_name, continual_layers


class TargetTypeError(ConfigError, TypeError):
    """A target pattern matched a module that is not a linear map injection can adapt."""

LayerWidths = Callable[[nn.Module], tuple[int, int]]
"""Given a module, return its ``(in_features, out_features)``."""

LayerFactory = Callable[[nn.Module, int, int, int], ContinualLinear]
"""``(base, in_features, out_features, layer_seed) -> continual layer``."""


def _linear_widths(module: nn.Module) -> tuple[int, int]:
    assert isinstance(module, nn.Linear)
    return module.in_features, module.out_features


_WIDTHS: dict[type[nn.Module], LayerWidths] = {nn.Linear: _linear_widths}


def register_layer_type(layer_type: type[nn.Module], widths: LayerWidths) -> None:
    """Let injection adapt modules of ``layer_type`` (their forward must be a linear map of the last dim).

    Example:
        >>> class MyLinear(nn.Linear): ...
        >>> register_layer_type(MyLinear, lambda m: (m.in_features, m.out_features))
    """
    _WIDTHS[layer_type] = widths


def layer_widths(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a module injection can adapt, else None.

    Example:
        >>> layer_widths(nn.Linear(3, 5)), layer_widths(nn.ReLU())
        ((3, 5), None)
    """
    for layer_type, widths in _WIDTHS.items():
        if isinstance(module, layer_type):
            return widths(module)
    if "transformers" in sys.modules:  # GPT-2's Conv1D stores its weight transposed: (in, out)
        from transformers.pytorch_utils import Conv1D

        if isinstance(module, Conv1D):
            return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def supported_types() -> str:
    """Names of the module types injection can adapt (for error messages)."""
    return ", ".join(sorted({t.__name__ for t in _WIDTHS} | {"transformers Conv1D"}))


def target_matches(name: str, pattern: str) -> bool:
    r"""Whether module ``name`` is selected by ``pattern`` (exact, dotted suffix or ``re:`` regex).

    Example:
        >>> target_matches("layers.0.attn.q_proj", "q_proj"), target_matches("layers.0.attn.q_proj", "proj")
        (True, False)
        >>> target_matches("visual.blocks.3.mlp.c_fc", "re:visual[.].*[.]c_fc")
        True
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def select_targets(model: nn.Module, patterns: Sequence[str], option: str = "targets") -> list[tuple[str, nn.Module]]:
    """Modules matched by any pattern, in module order, skipping the insides of continual layers.

    Raises:
        ValueError: when a pattern matches no module; the message names ``option`` and lists the
            endings of the adaptable module names.
    """
    matched: dict[str, bool] = dict.fromkeys(patterns, False)
    chosen: list[tuple[str, nn.Module]] = []
    inside: list[str] = []  # names of continual layers; their submodules are never targets
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, ContinualLinear):
            inside.append(name)
        hits = [p for p in patterns if target_matches(name, p)]
        for p in hits:
            matched[p] = True
        if hits:
            chosen.append((name, module))
    missing = [p for p, hit in matched.items() if not hit]
    if missing:
        examples = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if layer_widths(m)})
        raise ConfigError(
            f"{option} pattern(s) {missing} matched no module of {type(model).__name__}; "
            f"adaptable layer names in this model end with: {examples[:30]}"
        )
    return chosen


def inject_layers(
    model: nn.Module, targets: Sequence[str], make: LayerFactory, *, seed: int = 0, option: str = "targets"
) -> list[str]:
    """Wrap every target module of ``model`` in ``make(base, d_in, d_out, layer_seed)`` and freeze the rest.

    ``layer_seed`` is :func:`~moram.adapters.seeding.layer_seed` of ``seed`` and the module's name. A
    target that is already a continual layer is kept when it is of the same type with the same
    :meth:`~moram.adapters.layer.ContinualLinear.settings` (so injecting twice changes nothing), else refused.
    Afterwards only the continual layers' :meth:`current_parameters` require grad.

    Returns:
        The names of the adapted modules, in module order.

    Raises:
        ConfigError: a pattern matched nothing (naming ``option``), or a module already carries a
            different adapter.
        TargetTypeError: a pattern matched a module that is not a linear map (also a ``TypeError``).
    """
    patterns = list(targets)
    if not patterns:
        raise ConfigError(f"no target modules: set {option} (e.g. ['q_proj', 'v_proj']) or use the backbone's defaults")
    adapted = []
    for name, module in select_targets(model, patterns, option):
        if isinstance(module, ContinualLinear):
            widths = (module.in_features, module.out_features)
            probe = make(nn.Identity(), *widths, 0)  # only its type and settings are compared
            if type(probe) is not type(module):
                raise ConfigError(
                    f"module '{name}' already carries a {type(module).__name__}, not the {type(probe).__name__} "
                    "asked for: inject into a fresh model"
                )
            has, wanted = module.settings(), probe.settings()
            if has != wanted:
                diff = ", ".join(f"{k}: has {has.get(k)}, asked {v}" for k, v in wanted.items() if has.get(k) != v)
                raise ConfigError(
                    f"module '{name}' already carries a {type(module).__name__} with a different setting ({diff}); "
                    "inject into a fresh model"
                )
            adapted.append(name)
            continue
        widths_of = layer_widths(module)
        if widths_of is None:
            raise TargetTypeError(
                f"module '{name}' matched {option} but is a {type(module).__name__}, which is not a linear map "
                f"injection can adapt; supported types: {supported_types()} (or call register_layer_type)"
            )
        parent_name, _, child = name.rpartition(".")
        layer = make(module, *widths_of, layer_seed(seed, clean_name(name)))
        setattr(model.get_submodule(parent_name), child, layer)
        adapted.append(name)
    model.requires_grad_(False)
    for _, found in continual_layers(model):
        for p in found.current_parameters():
            p.requires_grad_(True)
    return adapted
