"""Save and requeue a SLURM job on its warning signal, between two training steps, on every rank at once.

A SLURM job submitted with ``--signal=SIGUSR1@90 --requeue`` (``configs/cluster/slurm.sbatch``)
receives SIGUSR1 90 s before its time limit (or when an operator sends it, ``scancel
--signal=USR1 JOB.0``). Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves
``hpc_ckpt_N.ckpt`` inside the signal handler, wherever the main thread happens to be: in the
middle of an optimizer step (the atoms half updated, the step not yet counted), or, under DDP, in
the middle of a collective, where its own collective save can deadlock. This callback installs a
handler that only records the signal; at the end of the next training step (where a
``ModelCheckpoint`` saves too, so the resumed run is exact) every rank agrees on it (one
all-reduce per step when there are several), then

1. the checkpoint is written as ``<default_root_dir>/hpc_ckpt_<N+1>.ckpt``, the name Lightning
   resumes from by itself when the job starts again under SLURM (``ckpt_path`` left unset): a
   moram checkpoint, atoms and training state without the frozen backbone;
2. global rank zero runs ``scontrol requeue <job>`` (array jobs: ``<array job>_<task>``);
3. every rank waits for the SIGTERM with which SLURM ends the job before putting it back in the
   queue, and stops before another step runs. If ``scontrol`` fails, training simply goes on.

The requeued job runs the same command; ``moram fit`` then writes into the run folder it wrote
before (:func:`moram.cli.requeued_version`). The signal is only acted on during training steps: one
that arrives during a task's final validation is handled at the next task's first step (and never,
after the last task's training). Outside SLURM (no ``SLURMEnvironment`` with ``auto_requeue``) the
callback does nothing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

HPC_PREFIX = "hpc_ckpt_"


def hpc_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``hpc_ckpt_<N>.ckpt`` in ``folder`` (the one Lightning resumes from), or None."""
    numbers = [int(m.group(1)) for p in Path(folder).glob(f"{HPC_PREFIX}*.ckpt")
               if (m := re.fullmatch(rf"{HPC_PREFIX}(\d+)\.ckpt", p.name))]
    return Path(folder) / f"{HPC_PREFIX}{max(numbers)}.ckpt" if numbers else None


def next_hpc_checkpoint(folder: str | Path) -> Path:
    """Where the next requeue checkpoint goes: ``hpc_ckpt_<N+1>.ckpt`` after the newest one (1 when none)."""
    newest = hpc_checkpoint(folder)
    number = int(newest.stem.removeprefix(HPC_PREFIX)) + 1 if newest is not None else 1
    return Path(folder) / f"{HPC_PREFIX}{number}.ckpt"


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (``<array job>_<task>`` in a job array), or None."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeueCallback(Callback):
    """Checkpoint and requeue on SLURM's warning signal at a step boundary (see the module docstring).

    Args:
        wait_for_sigterm: seconds to wait, after a successful ``scontrol requeue``, for the SIGTERM
            that ends the job before stopping on our own.
    """

    def __init__(self, wait_for_sigterm: float = 120.0) -> None:
        self.wait_for_sigterm = wait_for_sigterm
        self._signal: int | None = None
        self._previous: Any = None
        self._requested = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before Lightning registers its handlers (right after on_fit_start): it keeps a handler it finds.
        # private: strategy.cluster_environment exists only on parallel strategies (tests/test_lightning_internals.py)
        environment = trainer._accelerator_connector.cluster_environment
        if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        self._signal = int(environment.requeue_signal or signal.SIGUSR1)
        self._requested = False
        self._previous = signal.signal(self._signal, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self._requested = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signal is None:
            return
        requested = self._requested
        if trainer.world_size > 1:  # every rank must save at the same step: any rank that saw it decides
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        self._requested = False
        path = next_hpc_checkpoint(trainer.default_root_dir)
        path = Path(trainer.strategy.broadcast(str(path), src=0))
        rank_zero_info(f"[moram] SLURM signal {self._signal}: saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path)
        requeued = self._requeue() if trainer.is_global_zero else True
        if trainer.world_size > 1:
            requeued = trainer.strategy.reduce_boolean_decision(requeued, all=True)
        if not requeued:
            return
        deadline = time.monotonic() + self.wait_for_sigterm
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.2)
        raise SIGTERMException()  # no further step: the saved checkpoint is where the requeued job starts

    @staticmethod
    def _requeue() -> bool:
        job = slurm_job_id()
        if job is None or not re.fullmatch(r"[0-9_]+", job):
            rank_zero_warn(f"[moram] not requeued: no usable SLURM job id ({job!r})")
            return False
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            rank_zero_warn(f"[moram] scontrol requeue {job} failed ({err}); training goes on")
            return False
        if result.returncode != 0:
            rank_zero_warn(f"[moram] scontrol requeue {job} failed ({result.stderr.strip()}); training goes on")
            return False
        rank_zero_info(f"[moram] requeued SLURM job {job}; it continues from the checkpoint when it starts again")
        return True

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._signal is not None and self._previous is not None:
            signal.signal(self._signal, self._previous)
        self._signal = self._previous = None
