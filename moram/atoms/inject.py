"""The short names of the Python API for MoRAM (``inject_atoms``, ``consolidate_atoms``, ...).

MoRAM is a method config like the baselines (:class:`~moram.atoms.config.MoRAMConfig`, injected by
the one injector); these functions take an :class:`~moram.atoms.config.AtomConfig`, which adds the
capacity, targets and seed to MoRAM's options. Matching follows
:func:`moram.adapters.inject.target_matches` (exact name, dotted suffix, ``re:`` regex).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn

from moram.adapters.inject import register_layer_type
from moram.atoms.config import AtomConfig, MoRAMConfig
from moram.atoms.linear import AtomLinear
from moram.errors import CapacityError, ConfigError
from moram.protocols import clean_name

register_atom_layer = register_layer_type
"""Let injection adapt a module type (kept name; see :func:`moram.adapters.inject.register_layer_type`)."""


MoRAM = MoRAMConfig
"""The earlier name of :class:`~moram.atoms.config.MoRAMConfig` (MoRAM as a method)."""


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
        ['0.current_keys', '0.current_values', '2.current_keys', '2.current_values']
    """
    config.capacity  # noqa: B018 -- raises the clear error when max_tasks is unset
    assert config.max_tasks is not None
    patterns = list(targets if targets is not None else config.targets or [])
    if not patterns:
        raise ConfigError(
            "no target modules: set AtomConfig.targets (e.g. ['q_proj', 'v_proj']) or pass the backbone's defaults"
        )
    return config.method.inject(model, patterns, max_tasks=config.max_tasks, seed=config.seed)


def atom_layers(model: nn.Module) -> list[tuple[str, AtomLinear]]:
    """MoRAM's layers of ``model`` in module order, named without wrapper prefixes."""
    return [(clean_name(name), m) for name, m in model.named_modules() if isinstance(m, AtomLinear)]


def atom_banks(model: nn.Module) -> Iterator[AtomLinear]:
    """Every MoRAM layer of ``model`` (found by type; the earlier name of the layers that hold the atoms)."""
    return (m for m in model.modules() if isinstance(m, AtomLinear))


def current_atom_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable current-task atom Parameters of every MoRAM layer."""
    return [p for layer in atom_banks(model) for p in layer.current_parameters()]


def consolidate_atoms(model: nn.Module) -> None:
    """Consolidate every MoRAM layer (``AtomLinear``) of ``model`` (end of a task); an error names the layer."""
    for name, layer in atom_layers(model):
        try:
            layer.consolidate()
        except CapacityError as err:
            raise CapacityError(f"layer '{name}': {err}") from err
