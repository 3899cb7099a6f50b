"""MoRAM as a method: put atom banks into any model through the one injector.

:class:`MoRAM` is an :class:`~moram.adapters.method.AdapterMethod` like the baselines; the functions
below are the short names the README uses (``inject_atoms``, ``consolidate_atoms``, ...). Matching
follows :func:`moram.adapters.inject.target_matches` (exact name, dotted suffix, ``re:`` regex).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from torch import nn

from moram.adapters.inject import register_layer_type
from moram.adapters.layer import ContinualLinear
from moram.adapters.method import AdapterMethod
from moram.atoms.bank import AtomBank
from moram.atoms.config import AtomConfig
from moram.atoms.linear import AtomLinear
from moram.protocols import clean_name

register_atom_layer = register_layer_type
"""Let injection adapt a module type (kept name; see :func:`moram.adapters.inject.register_layer_type`)."""


class MoRAM(AdapterMethod):
    """MoRAM: a bank of rank-1 atoms on every target layer (:class:`~moram.atoms.linear.AtomLinear`).

    Args:
        config: the atom settings (its ``max_tasks``, when set, is overridden by :meth:`inject`'s).
    """

    targets_option = "AtomConfig.targets"

    def __init__(self, config: AtomConfig | None = None) -> None:
        self.config = config if config is not None else AtomConfig()

    def make_layer(
        self, base: nn.Module, in_features: int, out_features: int, *, max_tasks: int, seed: int
    ) -> ContinualLinear:
        config = dataclasses.replace(self.config, max_tasks=max_tasks)
        return AtomLinear(base, in_features, out_features, config, seed=seed)


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
    assert config.max_tasks is not None
    patterns = list(targets if targets is not None else config.targets or [])
    if not patterns:
        raise ValueError(
            "no target modules: set AtomConfig.targets (e.g. ['q_proj', 'v_proj']) or pass the backbone's defaults"
        )
    return MoRAM(config).inject(model, patterns, max_tasks=config.max_tasks, seed=config.seed)


def adapt(
    model: nn.Module, atoms: AtomConfig, targets: Sequence[str], method: AdapterMethod | None = None
) -> list[str]:
    """Inject ``method`` into the ``targets`` of ``model``: MoRAM with ``atoms`` when ``method`` is None.

    The one dispatch of moram's backbones and LightningModules: every method gets the same targets,
    ``atoms.max_tasks`` and ``atoms.seed``.
    """
    if method is None:
        return inject_atoms(model, atoms, targets=targets)
    if atoms.max_tasks is None:
        raise ValueError("model.atoms.max_tasks is null: set it (every method sizes its layers from it)")
    return method.inject(model, list(targets), max_tasks=atoms.max_tasks, seed=atoms.seed)


def atom_layers(model: nn.Module) -> list[tuple[str, AtomLinear]]:
    """MoRAM's layers of ``model`` in module order, named without wrapper prefixes."""
    return [(clean_name(name), m) for name, m in model.named_modules() if isinstance(m, AtomLinear)]


def atom_banks(model: nn.Module) -> Iterator[AtomBank]:
    """Every atom bank of ``model`` (found by type, never by parameter name)."""
    return (m for m in model.modules() if isinstance(m, AtomBank))


def current_atom_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable current-task atom Parameters of every bank."""
    return [p for bank in atom_banks(model) for p in (bank.current_keys, bank.current_values)]


def consolidate_atoms(model: nn.Module) -> None:
    """Consolidate every MoRAM layer (``AtomLinear``) of ``model`` (end of a task); an error names the layer."""
    for name, layer in atom_layers(model):
        try:
            layer.consolidate()
        except RuntimeError as err:
            raise RuntimeError(f"layer '{name}': {err}") from err
