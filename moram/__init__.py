"""moram: continual learning of large pre-trained models with Mixture of Rank-1 Associative Memory.

``import moram`` is light: it needs torch only; open_clip, transformers and Lightning are imported
where they are used.
"""

from moram.atoms import (
    AtomBank,
    AtomConfig,
    AtomLinear,
    AtomStateError,
    atom_banks,
    consolidate_atoms,
    current_atom_parameters,
    inject_atoms,
    load_atoms,
    register_atom_layer,
    routed_layers,
    save_atoms,
)

__version__ = "0.1.0"

__all__ = [
    "AtomBank",
    "AtomConfig",
    "AtomLinear",
    "AtomStateError",
    "__version__",
    "atom_banks",
    "consolidate_atoms",
    "current_atom_parameters",
    "inject_atoms",
    "load_atoms",
    "register_atom_layer",
    "routed_layers",
    "save_atoms",
]
