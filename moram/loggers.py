"""moram's default logger: Lightning's ``CSVLogger`` that never deletes a run's history.

Lightning's CSV writer deletes ``metrics.csv`` when it opens a folder that already holds files
("Previous log files in this directory will be deleted"), which is exactly what a resumed run
does. This one appends instead: the rows already in ``metrics.csv`` stay (its header is read and
extended when new columns appear), so a resumed run's file holds the whole history. When a
command fails before its run wrote anything worth keeping (a checkpoint, results, logged metrics),
the run folder this logger created is removed again, so failed starts leave no empty
``version_N`` behind. Folders that existed before the command are never removed.

``moram fit`` uses it when no logger is configured, and in place of a configured
``lightning.pytorch.loggers.CSVLogger`` (same options).

Example::

    trainer = Trainer(logger=moram.loggers.AppendingCSVLogger("runs", name="lightning_logs"))
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricWriter
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from typing_extensions import override

DISPOSABLE = frozenset({"config.yaml", "hparams.yaml"})
"""Files a failed start may leave in its new run folder without the folder being kept."""


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, appending to an existing ``metrics.csv``."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir)
        path = Path(self.metrics_file_path)
        if path.is_file():  # continue the existing columns; a new column rewrites the header, keeping rows
            with path.open(newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(header))

    @override
    def _check_log_dir_exists(self) -> None:
        """Keep what the folder holds (Lightning deletes ``metrics.csv`` here)."""


class AppendingCSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` (same options) that appends to a run's ``metrics.csv`` (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._created_dir = False

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> _FabricWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._created_dir = not Path(self.log_dir).exists()
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @override
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "failed" and self._created_dir:
            remove_if_empty_run(Path(self.log_dir))


def remove_if_empty_run(run_dir: Path) -> bool:
    """Remove ``run_dir`` when it holds nothing but :data:`DISPOSABLE` files and empty folders.

    Returns whether it was removed. A folder with a checkpoint, results or logged metrics stays.
    """
    if not run_dir.is_dir():
        return False
    kept = [p for p in run_dir.rglob("*") if p.is_file() and p.name not in DISPOSABLE]
    if kept:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
