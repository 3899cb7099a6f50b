"""Lightning callbacks for continual learning (installed as ``moram.callbacks``).

They depend only on Lightning, torch and :mod:`moram.protocols`, never on moram's LightningModule,
so they work in any project whose model has continual layers::

    from moram.callbacks import AtomUsageCallback, ContinualMetricsCallback, TaskBoundaryCallback

or in YAML, ``class_path: moram.callbacks.TaskBoundaryCallback``.
"""

from moram.callbacks.adapter_export import AdapterExportCallback
from moram.callbacks.atom_usage import AtomUsageCallback
from moram.callbacks.continual_metrics import ContinualMetricsCallback
from moram.callbacks.input_check import ImageSizeCheckCallback
from moram.callbacks.progress import ProgressLogCallback
from moram.callbacks.requeue import SlurmRequeueCallback
from moram.callbacks.task_boundary import TaskBoundaryCallback, reset_atom_optimizer_state, restart_lr_schedules

__all__ = [
    "AdapterExportCallback",
    "AtomUsageCallback",
    "ContinualMetricsCallback",
    "ImageSizeCheckCallback",
    "ProgressLogCallback",
    "SlurmRequeueCallback",
    "TaskBoundaryCallback",
    "reset_atom_optimizer_state",
    "restart_lr_schedules",
]
