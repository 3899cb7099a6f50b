"""Put atom banks into any model: match target modules, wrap them, freeze the backbone.

Matching follows the usual adapter conventions: a pattern matches a module whose full name equals
it, whose name ends with ``"." + pattern`` (a dotted suffix), or, for patterns written
``"re:<regex>"``, whose full name matches the regular expression entirely.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from moram.atoms.bank import AtomBank
from moram.atoms.config import AtomConfig
from moram.atoms.linear import AtomLinear

LayerWidths = Callable[[nn.Module], tuple[int, int]]
"""Given a module, return its ``(in_features, out_features)``."""

def _linear_widths(module: nn.Module) -> tuple[int, int]:
    assert isinstance(module, nn.Linear)
    return module.in_features, module.out_features


_REGISTRY: dict[type[nn.Module], LayerWidths] = {nn.Linear: _linear_widths}

# Unwrapping prefixes added by torch.compile, DDP, FSDP1 and activation checkpointing.
_WRAPPER_PARTS = ("_orig_mod", "module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def register_atom_layer(layer_type: type[nn.Module], widths: LayerWidths) -> None:
    """Let injection adapt modules of ``layer_type`` (their forward must be a linear map of the last dim).

    Example:
        >>> class MyLinear(nn.Linear): ...
        >>> register_atom_layer(MyLinear, lambda m: (m.in_features, m.out_features))
    """
    _REGISTRY[layer_type] = widths


def _layer_widths(module: nn.Module) -> tuple[int, int] | None:
    for layer_type, widths in _REGISTRY.items():
        if isinstance(module, layer_type):
            return widths(module)
    if "transformers" in sys.modules:  # GPT-2's Conv1D stores its weight transposed: (in, out)
        from transformers.pytorch_utils import Conv1D

        if isinstance(module, Conv1D):
            return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def _supported_names() -> str:
    return ", ".join(sorted({t.__name__ for t in _REGISTRY} | {"transformers Conv1D"}))


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


def layer_seed(seed: int, name: str) -> int:
    """Stable per-layer seed from the config seed and the layer's name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**62 - 1)


def clean_name(name: str) -> str:
    """Module name with wrapper parts (DDP ``module``, ``_orig_mod``, FSDP1 wrappers) removed."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def routed_layers(model: nn.Module) -> list[tuple[str, AtomLinear]]:
    """All routed layers of ``model`` in module order, named without wrapper prefixes."""
    return [(clean_name(name), m) for name, m in model.named_modules() if isinstance(m, AtomLinear)]


def atom_banks(model: nn.Module) -> Iterator[AtomBank]:
    """Every atom bank of ``model`` (found by type, never by parameter name)."""
    return (m for m in model.modules() if isinstance(m, AtomBank))


def current_atom_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable current-task atom Parameters of every bank."""
    return [p for bank in atom_banks(model) for p in (bank.current_keys, bank.current_values)]


def consolidate_atoms(model: nn.Module) -> None:
    """Consolidate every bank of ``model`` (end of a task)."""
    for name, layer in routed_layers(model):
        try:
            layer.consolidate()
        except RuntimeError as err:
            raise RuntimeError(f"layer '{name}': {err}") from err


def _check_same_setting(name: str, layer: AtomLinear, config: AtomConfig) -> None:
    expected = AtomBank._make_signature(config, layer.in_features, layer.out_features, layer.bank.signature.device)
    if not bool((expected == layer.bank.signature).all()):
        raise ValueError(
            f"module '{name}' already carries atoms with a different setting "
            f"({layer.bank.describe_signature(layer.bank.signature)}); inject into a fresh model"
        )


def _select(model: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Module]]:
    """Modules matched by any pattern, skipping the insides of routed layers; every pattern must hit."""
    matched: dict[str, bool] = dict.fromkeys(patterns, False)
    chosen: list[tuple[str, nn.Module]] = []
    inside: list[str] = []  # names of routed layers; their submodules are never targets
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, AtomLinear):
            inside.append(name)
        hits = [p for p in patterns if target_matches(name, p)]
        for p in hits:
            matched[p] = True
        if hits:
            chosen.append((name, module))
    missing = [p for p, hit in matched.items() if not hit]
    if missing:
        examples = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _layer_widths(m)})
        raise ValueError(
            f"AtomConfig.targets pattern(s) {missing} matched no module of {type(model).__name__}; "
            f"adaptable layer names in this model end with: {examples[:30]}"
        )
    return chosen


def inject_atoms(model: nn.Module, config: AtomConfig, targets: Sequence[str] | None = None) -> list[str]:
    """Wrap every target module of ``model`` in an :class:`AtomLinear` and freeze the backbone.

    Args:
        model: any ``nn.Module``; modified in place.
        config: atom settings; ``config.targets`` are the patterns unless ``targets`` is given.
        targets: patterns overriding ``config.targets`` (e.g. a backbone's default set).

    Returns:
        The names of the adapted modules, in module order (already adapted ones included, so a
        second call returns the same list and changes nothing).

    Raises:
        ValueError: when a pattern matches no module (the message names the pattern), or when a
            module already carries atoms with a different setting.
        TypeError: when a pattern matches a module of a type that cannot carry atoms.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> inject_atoms(model, AtomConfig(rank=2, max_tasks=3, targets=["0", "2"]))
        ['0', '2']
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        ['0.bank.current_keys', '0.bank.current_values', '2.bank.current_keys', '2.bank.current_values']
    """
    config.capacity  # noqa: B018 -- raises the clear error when max_tasks is unset
    patterns = list(targets if targets is not None else config.targets or [])
    if not patterns:
        raise ValueError(
            "no target modules: set AtomConfig.targets (e.g. ['q_proj', 'v_proj']) or pass the backbone's defaults"
        )
    chosen = _select(model, patterns)
    adapted = []
    for name, module in chosen:
        if isinstance(module, AtomLinear):
            _check_same_setting(name, module, config)
            adapted.append(name)
            continue
        widths = _layer_widths(module)
        if widths is None:
            raise TypeError(
                f"module '{name}' matched AtomConfig.targets but is a {type(module).__name__}, which cannot "
                f"carry atoms; supported types: {_supported_names()} (or call register_atom_layer)"
            )
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, AtomLinear(module, *widths, config, seed=layer_seed(config.seed, clean_name(name))))
        adapted.append(name)
    model.requires_grad_(False)
    for p in current_atom_parameters(model):
        p.requires_grad_(True)
    return adapted
