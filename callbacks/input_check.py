"""Refuse, before training, images of another size than the model's image tower takes.

An image folder read at 224 pixels fed to a tower built for 32 fails deep inside the model with
``The size of tensor a (3137) must match the size of tensor b (65)``. This callback compares the
size of the first training image with the tower's ``image_size`` (open_clip's ``visual``) when fit
starts, and stops with a message naming both values and the option to change.

Works with any LightningModule holding an open_clip-style ``visual`` tower and any datamodule with
``tasks`` (:class:`moram.data.tasks.Task`); does nothing otherwise.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from moram.errors import ConfigError


def tower_image_size(module: Any) -> int | None:
    """The side of the square images the module's ``visual`` tower takes, or None when there is none."""
    for name, sub in module.named_modules():
        if name.split(".")[-1] == "visual" and hasattr(sub, "image_size"):
            size = sub.image_size
            return int(size[0] if isinstance(size, (tuple, list)) else size)
    return None


class ImageSizeCheckCallback(Callback):
    """Raise ``ValueError`` at fit start when data images and the image tower disagree in size."""

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        want = tower_image_size(pl_module)
        tasks = getattr(getattr(trainer, "datamodule", None), "tasks", None)
        if want is None or not tasks:
            return
        image = tasks[0].train[0][0]
        if not hasattr(image, "shape") or len(image.shape) != 3:
            return
        got = int(image.shape[-1])
        if got != want:
            raise ConfigError(
                f"data.source.image_size gives {got}-pixel images but the model's image tower takes {want} "
                f"(model.backbone.model_config / model.backbone.model_name); set data.source.image_size: {want}"
            )
