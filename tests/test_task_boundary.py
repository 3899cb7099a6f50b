"""TaskBoundaryCallback on a plain LightningModule that is not moram's."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from moram import AtomConfig, inject_atoms, routed_layers
from moram.callbacks.task_boundary import TaskBoundaryCallback

RANK, TASKS, STEPS = 2, 3, 6


class PlainModule(pl.LightningModule):
    """A user's own model: an MLP with atoms injected, nothing else from moram."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
        inject_atoms(self.net, AtomConfig(rank=RANK, top_k=2, max_tasks=TASKS, targets=["0", "2"]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.05, weight_decay=0.3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Stream(pl.LightningDataModule):
    num_tasks = TASKS
    task_names = [f"t{i}" for i in range(TASKS)]

    @property
    def current_task(self):
        return self.trainer.current_epoch

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(self.current_task)
        x = torch.randn(STEPS * 4, 5, generator=gen) + self.current_task
        y = torch.randint(0, 3, (STEPS * 4,), generator=gen)
        return DataLoader(TensorDataset(x, y), batch_size=4)


class Probe(pl.Callback):
    """Runs after TaskBoundaryCallback and records what a task starts and ends with."""

    def __init__(self):
        self.ends, self.starts = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        opt = trainer.optimizers[0]
        layer = routed_layers(pl_module)[0][1]
        state = opt.state.get(layer.current_keys, {})
        self.starts.append({
            "lr": opt.param_groups[0]["lr"],
            "step": float(state["step"]) if "step" in state else None,
            "exp_avg_zero": bool((state["exp_avg"] == 0).all()) if "exp_avg" in state else None,
            "values_zero": bool((layer.current_values == 0).all()),
            "filled": [lay.num_frozen_atoms for _, lay in routed_layers(pl_module)],
        })

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends.append([(lay.current_keys.detach().clone(), lay.current_values.detach().clone())
                          for _, lay in routed_layers(pl_module)])


def fit(callbacks, **kwargs):
    module = PlainModule()
    trainer = pl.Trainer(
        max_epochs=TASKS, reload_dataloaders_every_n_epochs=1, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        **kwargs,
    )
    trainer.fit(module, datamodule=Stream())
    return module


def test_boundaries_freeze_grow_and_reset():
    probe = Probe()
    module = fit([TaskBoundaryCallback(), probe])
    # Fill counts: r x tasks seen, at the start of every task.
    assert [s["filled"] for s in probe.starts] == [[0, 0], [2, 2], [4, 4]]
    # Each later task starts with fresh atoms, Adam state zeroed in place and the schedule restarted.
    for start in probe.starts[1:]:
        assert start["values_zero"]
        assert start["step"] == 0.0
        assert start["exp_avg_zero"]
        assert start["lr"] == pytest.approx(0.05)
    # Frozen atoms equal, bit for bit, what each task ended with, despite weight decay afterwards.
    for task, snapshot in enumerate(probe.ends[:-1]):
        for (keys, values), (_, layer) in zip(snapshot, routed_layers(module), strict=True):
            rows = slice(task * RANK, (task + 1) * RANK)
            assert torch.equal(layer.frozen_keys[rows], keys)
            assert torch.equal(layer.frozen_values[rows], values)
    # The last task's atoms stay current and trained: they take part in routing at inference.
    layer = routed_layers(module)[0][1]
    layer.eval()
    assert layer.uses_current
    assert layer.num_routed == TASKS * RANK


def test_without_resets_optimizer_state_carries_over():
    probe = Probe()
    fit([TaskBoundaryCallback(reset_optimizer_state=False, restart_lr_schedule=False), probe])
    assert probe.starts[1]["step"] == STEPS
    assert probe.starts[1]["lr"] < 0.05


def test_capacity_smaller_than_stream_is_refused():
    class Small(PlainModule):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.net = nn.Sequential(nn.Linear(5, 3))
            inject_atoms(self.net, AtomConfig(rank=1, max_tasks=2, targets=["0"]))

    trainer = pl.Trainer(max_epochs=TASKS, reload_dataloaders_every_n_epochs=1, callbacks=[TaskBoundaryCallback()],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(ValueError, match="3 tasks but the layers hold max_tasks=2"):
        trainer.fit(Small(), datamodule=Stream())


def test_model_without_atoms_is_refused():
    class NoAtoms(PlainModule):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.net = nn.Linear(5, 3)

    trainer = pl.Trainer(max_epochs=1, callbacks=[TaskBoundaryCallback()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(ValueError, match="found no continual layers in NoAtoms"):
        trainer.fit(NoAtoms(), datamodule=Stream())
