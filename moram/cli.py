"""The ``moram`` command: LightningCLI over moram's (or any) LightningModule and DataModule.

``moram fit --config configs/clip_cl.yaml`` runs a whole task sequence (one epoch per task).
Model and data are chosen by ``class_path`` in the YAML; every option shows in ``--help``.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class MoramCLI(LightningCLI):
    """LightningCLI with moram's defaults."""


def main(args: list[str] | None = None, run: bool = True) -> MoramCLI:
    """Entry point of the ``moram`` console script."""
    kwargs: dict[str, Any] = {}
    return MoramCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
