"""moram: continual learning of large pre-trained models with Mixture of Rank-1 Associative Memory.

``import moram`` is light: it needs torch only; open_clip, transformers and Lightning are imported
where they are used.
"""

from moram.adapters import AdapterMethod, ContinualLinear, MethodConfig, inject_layers, load_adapters, save_adapters
from moram.atoms import (
    AtomConfig,
    AtomLinear,
    AtomStateError,
    MoRAM,
    MoRAMConfig,
    atom_banks,
    atom_layers,
    consolidate_atoms,
    current_atom_parameters,
    inject_atoms,
    load_atoms,
    register_atom_layer,
    save_atoms,
)
from moram.protocols import continual_layers, routed_layers

__version__ = "0.2.0"

__all__ = [
    "AdapterMethod",
    "AtomConfig",
    "AtomLinear",
    "AtomStateError",
    "ContinualLinear",
    "MethodConfig",
    "MoRAM",
    "MoRAMConfig",
    "__version__",
    "atom_banks",
    "atom_layers",
    "consolidate_atoms",
    "continual_layers",
    "current_atom_parameters",
    "inject_atoms",
    "inject_layers",
    "load_adapters",
    "load_atoms",
    "register_atom_layer",
    "routed_layers",
    "save_adapters",
    "save_atoms",
]
