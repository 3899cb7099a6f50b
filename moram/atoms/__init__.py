"""Rank-1 atom banks, the routed layer, injection and adapter files."""

from moram.atoms.bank import AtomBank, AtomStateError
from moram.atoms.config import AtomConfig
from moram.atoms.inject import (
    atom_banks,
    consolidate_atoms,
    current_atom_parameters,
    inject_atoms,
    register_atom_layer,
    routed_layers,
    target_matches,
)
from moram.atoms.linear import AtomLinear
from moram.atoms.state import load_atoms, read_atom_config, save_atoms

__all__ = [
    "AtomBank",
    "AtomConfig",
    "AtomLinear",
    "AtomStateError",
    "atom_banks",
    "consolidate_atoms",
    "current_atom_parameters",
    "inject_atoms",
    "load_atoms",
    "read_atom_config",
    "register_atom_layer",
    "routed_layers",
    "save_atoms",
    "target_matches",
]
