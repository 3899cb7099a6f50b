"""What every continual adapter method shares: the layer base, seeding, the one injector, the method base."""

from moram.adapters.files import AdapterFileError, load_adapters, read_adapter_config, save_adapters
from moram.adapters.inject import (
    inject_layers,
    layer_widths,
    register_layer_type,
    select_targets,
    supported_types,
    target_matches,
)
from moram.adapters.layer import ContinualLinear, LayerCost
from moram.adapters.method import AdapterMethod, MethodConfig, method_from_dict
from moram.adapters.seeding import kaiming_rows, layer_seed, task_generator

__all__ = [
    "AdapterFileError",
    "AdapterMethod",
    "ContinualLinear",
    "LayerCost",
    "MethodConfig",
    "inject_layers",
    "kaiming_rows",
    "layer_seed",
    "layer_widths",
    "load_adapters",
    "method_from_dict",
    "read_adapter_config",
    "register_layer_type",
    "save_adapters",
    "select_targets",
    "supported_types",
    "target_matches",
    "task_generator",
]
