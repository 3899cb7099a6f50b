"""Every private Lightning or torch field moram still uses (no public API gives it): each test fails when it changes.

Kept, with the reason (replace one when its library gives a public way):

* ``trainer._results`` (:func:`moram.callbacks.continual_metrics._sanity_check_metrics`): the sanity
  check's per-dataloader scores, which ``callback_metrics`` does not receive during the sanity check;
* ``trainer._accelerator_connector.cluster_environment`` (:class:`moram.callbacks.requeue.SlurmRequeueCallback`):
  the cluster environment on every strategy (``strategy.cluster_environment`` exists only on parallel ones);
* ``scheduler._last_lr`` and ``scheduler._get_closed_form_lr``
  (:func:`moram.callbacks.task_boundary.restart_lr_schedules`): what ``get_last_lr()`` reports after a
  restart, which torch sets only inside ``step()``;
* ``ModelParallelStrategy._data_parallel_size`` / ``_tensor_parallel_size`` and
  ``lightning.pytorch.strategies.model_parallel._METADATA_FILENAME`` / ``_is_sharded_checkpoint``
  (:class:`moram.strategies.FSDP2Strategy`): the mesh sizes Lightning fills in only in ``setup_environment``,
  and Lightning's own test for its sharded-checkpoint folders;
* ``CSVLogger._experiment`` / ``_fs``, ``ExperimentWriter._check_log_dir_exists`` and
  ``lightning.fabric.loggers.csv_logs._ExperimentWriter`` (:class:`moram.loggers.AppendingCSVLogger`):
  the writer a CSV logger builds, and the step that deletes an existing ``metrics.csv``;
* ``LightningCLI._parse_ckpt_path``: guarded in ``tests/test_cli_hooks.py``.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from moram.protocols import score_key


class _TwoTasks(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log(score_key(f"t{dataloader_idx}"), 10.0 * (dataloader_idx + 1), add_dataloader_idx=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 2)), batch_size=1)

    def val_dataloader(self):
        return [DataLoader(TensorDataset(torch.ones(2, 2)), batch_size=1) for _ in range(2)]


def test_sanity_check_scores_are_in_the_trainers_results(tmp_path):
    from moram.callbacks.continual_metrics import _sanity_check_metrics

    seen: dict = {}

    class Probe(Callback):
        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                assert hasattr(trainer, "_results")
                seen.update(_sanity_check_metrics(trainer) or {})

    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, num_sanity_val_steps=-1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Probe()])
    trainer.fit(_TwoTasks())
    assert {k: float(v) for k, v in seen.items()} == {score_key("t0"): 10.0, score_key("t1"): 20.0}


def test_accelerator_connector_has_the_cluster_environment():
    from lightning.fabric.plugins.environments import ClusterEnvironment

    trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer._accelerator_connector.cluster_environment, ClusterEnvironment)


def test_schedulers_report_the_last_lr_from_their_private_field():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [0.5]
    scheduler.last_epoch = 0
    assert scheduler._get_closed_form_lr() == [1.0]  # the restart value, without the warning of get_lr()
    scheduler._last_lr = [1.0]
    assert scheduler.get_last_lr() == [1.0]
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    assert hasattr(lambda_lr, "_last_lr")  # LambdaLR has no closed form: restart_lr_schedules uses get_lr()


def test_model_parallel_strategy_fields(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning.pytorch.strategies.model_parallel import _METADATA_FILENAME, _is_sharded_checkpoint

    strategy = ModelParallelStrategy()
    assert strategy._data_parallel_size == "auto"
    assert strategy._tensor_parallel_size == "auto"
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    assert not _is_sharded_checkpoint(folder)
    (folder / _METADATA_FILENAME).write_bytes(b"")
    assert _is_sharded_checkpoint(folder)


def test_csv_logger_fields(tmp_path):
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    logger = CSVLogger(tmp_path)
    assert logger._experiment is None
    assert callable(logger._fs.makedirs)
    assert isinstance(logger.experiment, _ExperimentWriter)
    assert logger._experiment is logger.experiment
    assert callable(ExperimentWriter._check_log_dir_exists)
