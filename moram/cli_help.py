"""How a user finds moram's options: the guide atop every ``--help``, and nested ``--*.help`` flags.

``moram fit --help`` lists the Trainer's options in full; moram's own are listed per class, and
:data:`HELP_GUIDE` (printed first by every parser of :class:`moram.cli.MoramCLI`) says how.
jsonargparse advertises nested help flags such as ``--model.method.help`` but, with moram's
subclass-mode model and data, does not accept them: :func:`nested_help` answers them instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from moram.errors import ConfigError

HELP_GUIDE = """moram's own options (model, method, data source) are listed by class:
  moram fit --config configs/clip_cl.yaml --print_config      every option of a run, with its value
  moram fit --model.help moram.module.ContinualModule           the module's (backbone, method, targets, optimiser)
  moram fit --model.backbone.help moram.backbones.clip.CLIPBackbone   a backbone's (or moram.backbones.lm.LMBackbone)
  moram fit --model.method.help moram.atoms.MoRAMConfig         MoRAM's options (the default method)
  moram fit --model.method.help moram.baselines.OLoRAConfig     a baseline's options
  moram fit --data.help moram.data.stream.TaskStreamDataModule  the task stream's options
  moram fit --data.source.help moram.data.folder.FolderTasks    a data source's options
Other subcommand: moram data {prepare,check} NAME --root DIR   benchmark datasets (moram data --help)
Errors print one line; MORAM_TRACEBACK=1 shows the traceback. Resume a killed run: --ckpt_path last."""

_NESTED_HELP = re.compile(r"--(model|data)\.([\w.]+)\.help(?:=(.*))?$")


def _unwrap(annotation: Any) -> type | None:
    """The class in ``X | None`` / ``Optional[X]`` (or ``X`` itself)."""
    import typing

    if isinstance(annotation, type):
        return annotation
    return next((a for a in typing.get_args(annotation) if isinstance(a, type) and a is not type(None)), None)


def import_object(path: str) -> Any:
    """The object at a dotted path (``moram.data.folder.FolderTasks``)."""
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _owner_class(args: list[str], group: str) -> type:
    value = None
    for i, arg in enumerate(args):
        if arg == f"--{group}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{group}="):
            value = arg.split("=", 1)[1]
        elif arg in ("-c", "--config") and i + 1 < len(args) and value is None:
            import yaml

            node = (yaml.safe_load(Path(args[i + 1]).read_text()) or {}).get(group) or {}
            value = node.get("class_path") if isinstance(node, dict) else None
    if not value or "." not in value:
        raise ConfigError(f"--{group}.*.help needs the {group} class first: add --config FILE or --{group} CLASS.PATH")
    return import_object(value)


def _configured_class(args: list[str], group: str, path: list[str]) -> type | None:
    """The class a config or the command line sets for ``--group.path`` (``--data.source CLASS``), else None."""
    dotted = f"--{group}.{'.'.join(path)}"
    value = None
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            import yaml

            node: Any = (yaml.safe_load(Path(args[i + 1]).read_text()) or {}).get(group)
            for name in path:
                node = node.get("init_args", node) if isinstance(node, dict) else None
                node = node.get(name) if isinstance(node, dict) else None
            path_value = node.get("class_path") if isinstance(node, dict) else node if isinstance(node, str) else None
            value = path_value or value
        elif arg == dotted and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
        elif arg.startswith(dotted + "="):
            value = arg.split("=", 1)[1]
    return import_object(value) if isinstance(value, str) and "." in value else None


def _nested_class(owner: type, path: list[str]) -> type:
    import dataclasses
    import typing

    cls = owner
    for name in path:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else typing.get_type_hints(cls.__init__)  # type: ignore[misc]
        found = _unwrap(hints.get(name))
        if found is None:
            raise ConfigError(f"{cls.__name__} has no option {name!r} holding a class; see --help of {cls.__name__}")
        cls = found
    return cls


def _concrete(cls: type) -> type:
    """``cls``, or the default of an abstract option type (a method option without a class: MoRAM's config)."""
    from moram.adapters.method import MethodConfig

    if cls is MethodConfig:
        from moram.atoms.config import MoRAMConfig

        return MoRAMConfig
    return cls


def nested_help(args: list[str]) -> bool:
    """Print the help of a nested option's class (``--model.method.help``, ``--data.source.help CLASS``).

    jsonargparse advertises these flags but, with moram's subclass-mode model and data, does not
    accept them; returns False when ``args`` asks for no such help.
    """
    from jsonargparse import ArgumentParser

    for i, arg in enumerate(args):
        match = _NESTED_HELP.match(arg)
        if not match:
            continue
        group, path, value = match.groups()
        if value is None and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
        if value and "." not in value:
            raise ConfigError(
                f"--{group}.{path}.help {value}: give the full class path, e.g. moram.baselines.MoELoRAConfig"
            )
        cls = (import_object(value) if value else _configured_class(args, group, path.split("."))
               or _nested_class(_owner_class(args, group), path.split(".")))
        cls = _concrete(cls)
        parser = ArgumentParser(prog=f"moram {args[0] if args else 'fit'}", description=f"Options of {cls.__name__}")
        parser.add_class_arguments(cls, f"{group}.{path}", fail_untyped=False, sub_configs=True)
        parser.print_help()
        return True
    return False
