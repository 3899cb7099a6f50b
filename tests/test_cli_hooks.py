"""The one private LightningCLI hook moram overrides (MoramCLI._parse_ckpt_path) is still where moram needs it.

Everything else MoramCLI changes goes through public LightningCLI methods (parse_arguments,
instantiate_trainer, after_<subcommand>). If Lightning renames the private hook or moves its call,
this test fails instead of moram silently losing its checkpoint checks.
"""

from __future__ import annotations

import inspect

from lightning.pytorch.cli import LightningCLI

from moram.cli import MoramCLI


def test_lightning_calls_parse_ckpt_path_after_parsing_and_before_building_classes():
    source = inspect.getsource(LightningCLI.__init__)
    order = [source.index(call) for call in
             ("self.parse_arguments(", "self._parse_ckpt_path()", "self.instantiate_classes()")]
    assert order == sorted(order)
    private = {name for name in vars(MoramCLI) if name.startswith("_") and not name.startswith("__")}
    assert private & {name for name in vars(LightningCLI)} == {"_parse_ckpt_path"}


def test_the_public_hooks_moram_uses_exist_with_their_signatures():
    assert list(inspect.signature(LightningCLI.instantiate_trainer).parameters) == ["self", "kwargs"]
    assert list(inspect.signature(LightningCLI.parse_arguments).parameters) == ["self", "parser", "args"]
    run = inspect.getsource(LightningCLI._run_subcommand)
    assert 'getattr(self, f"after_{subcommand}"' in run  # after_fit & co. run after a subcommand succeeded
