"""Export the memory after every task as a small adapter folder.

A checkpoint resumes a run; an adapter folder is what a user keeps: after task ``t`` the callback
writes ``<log_dir>/adapters/task<t>-<name>/`` holding every adapter parameter learned so far — task
``t``'s included — and nothing of the backbone. Loading it into the same backbone gives the model as
it was after task ``t``. moram's module writes every method's layers in one format,
:func:`moram.adapters.save_adapters` (``adapters.safetensors`` + ``adapters.json``), which
:func:`moram.adapters.load_adapters` rebuilds on the plain backbone.

Works with any LightningModule that is an :class:`~moram.protocols.AdapterExporter` (has
``export_adapters(directory)``); with any other it writes nothing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from moram.protocols import AdapterExporter, current_task


class AdapterExportCallback(Callback):
    """Write ``adapters/task<t>-<name>/`` after each task's training (see the module docstring).

    Args:
        output_dir: where the folders go; None means ``<trainer.log_dir>/adapters``.
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = output_dir
        self._dir: Path | None = None
        self.written: list[Path] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective (it broadcasts): resolved here on every rank
        self._dir = Path(self.output_dir) if self.output_dir is not None else Path(trainer.log_dir or ".") / "adapters"

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, AdapterExporter) or self._dir is None:
            return
        datamodule: Any = getattr(trainer, "datamodule", None)
        task = current_task(trainer)
        names = list(getattr(datamodule, "task_names", []))
        name = re.sub(r"[^\w.-]+", "_", str(names[task])) if task < len(names) else str(task)
        target = self._dir / f"task{task}-{name}"
        if trainer.is_global_zero:
            if pl_module.export_adapters(target):
                self.written.append(target)
        else:  # reading sharded parameters is a collective: every rank writes, only rank 0 keeps the files
            scratch = tempfile.mkdtemp(prefix="moram-adapter-")
            try:
                pl_module.export_adapters(Path(scratch))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
