"""MoRAM: the routing formula, its fast kernels, its method config, its layer, the short API and adapter files.

Read in this order: :mod:`moram.atoms.routing` (the method in one page), :mod:`moram.atoms.config`
(MoRAM's method config), :mod:`moram.atoms.linear` (the layer: its tensors and routing; the lifecycle
is the layer base's, :mod:`moram.adapters.layer`), :mod:`moram.atoms.inject` (the short Python API),
:mod:`moram.atoms.state` (adapter files); :mod:`moram.atoms.kernels` is the fast path, tested equal
to the reference.
"""

from moram.adapters.inject import target_matches
from moram.atoms.config import AtomConfig, MoRAMConfig
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
from moram.errors import StateError as AtomStateError
from moram.protocols import routed_layers

__all__ = [
    "AtomConfig",
    "AtomLinear",
    "AtomStateError",
    "MoRAM",
    "MoRAMConfig",
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
