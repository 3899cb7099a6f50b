"""The config a run keeps, and its history: LightningCLI's config saving, made safe for resuming.

LightningCLI's ``SaveConfigCallback`` writes ``config.yaml`` into the run folder when ``fit`` sets
up, which on a resume replaces the config the run was started with, and does so before the
checkpoint has even been checked. :class:`RunFolderConfig` instead:

* on a fresh run, writes ``config.yaml`` as Lightning does;
* on a resumed run, writes nothing until the checkpoint has been restored (``on_train_start``);
  then keeps ``config.yaml`` and, when the resumed config differs from it (``ckpt_path`` aside),
  stores the new one beside it as ``config_resumed_K.yaml``;
* appends one line per start or resume to ``history.jsonl``: the time, the command line, the
  checkpoint, the global step and task, the config file that applies, the host and the SLURM job.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from moram.protocols import current_task
from moram.runs import CONFIG_FILE, HISTORY_FILE


class RunFolderConfig(SaveConfigCallback):
    """``SaveConfigCallback`` that keeps a run's first config and appends to its history (module docstring)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._resumed:
            return  # resumed: nothing is written before the checkpoint restored (on_train_start)
        super().setup(trainer, pl_module, stage)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective: every rank asks
        if not log_dir or not trainer.is_global_zero:
            return
        run_dir = Path(log_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._resumed
        config_file = CONFIG_FILE
        if resumed:
            config_file = self._store_resumed_config(run_dir)
        entry: dict[str, Any] = {
            "event": "resume" if resumed else "start",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv[1:],
            "checkpoint": str(self.config.get("ckpt_path")) if resumed else None,
            "global_step": int(trainer.global_step),
            "task": current_task(trainer),
            "config": config_file,
            "host": socket.gethostname(),
            "processes": int(trainer.world_size),
        }
        if os.environ.get("SLURM_JOB_ID"):
            entry["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        with (run_dir / HISTORY_FILE).open("a") as file:
            file.write(json.dumps(entry) + "\n")

    @property
    def _resumed(self) -> bool:
        return bool(self.config.get("ckpt_path"))  # the CLI resolved it (``last``: a file) before fit

    def _dump(self) -> str:
        return str(self.parser.dump(self.config, skip_none=False))

    def _store_resumed_config(self, run_dir: Path) -> str:
        """Keep ``config.yaml``; store the resumed config beside it when it differs. Returns the file that applies."""
        text = self._dump()
        first = run_dir / CONFIG_FILE
        if not first.exists():
            first.write_text(text)
            return CONFIG_FILE
        if _without_ckpt_path(first.read_text()) == _without_ckpt_path(text):
            return CONFIG_FILE
        k = 1
        while (run_dir / f"config_resumed_{k}.yaml").exists():
            k += 1
        name = f"config_resumed_{k}.yaml"
        (run_dir / name).write_text(text)
        return name


def _without_ckpt_path(text: str) -> Any:
    config = yaml.safe_load(text) or {}
    if isinstance(config, dict):
        config.pop("ckpt_path", None)
    return config
