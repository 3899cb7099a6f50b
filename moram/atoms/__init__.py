"""MoRAM: the routing formula, its fast kernels, the atom bank, the routed layer, injection and adapter files.

Read in this order: :mod:`moram.atoms.routing` (the method in one page), :mod:`moram.atoms.bank`
(storage and lifecycle), :mod:`moram.atoms.linear` (the layer), :mod:`moram.atoms.inject` (MoRAM as a
method), :mod:`moram.atoms.state` (adapter files); :mod:`moram.atoms.kernels` is the fast path,
tested equal to the reference.
"""

from moram.adapters.inject import target_matches
from moram.atoms.bank import AtomBank, AtomStateError
from moram.atoms.config import AtomConfig
from moram.atoms.inject import (
    MoRAM,
    atom_banks,
    atom_layers,
    consolidate_atoms,
    current_atom_parameters,
    inject_atoms,
    register_atom_layer,
)
from moram.atoms.linear import AtomLinear
from moram.atoms.state import load_atoms, read_atom_config, save_atoms
from moram.protocols import routed_layers

__all__ = [
    "AtomBank",
    "AtomConfig",
    "AtomLinear",
    "AtomStateError",
    "MoRAM",
    "atom_banks",
    "atom_layers",
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
