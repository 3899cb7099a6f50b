"""moram.callbacks as a user meets it: re-exported names, YAML class paths, a layer of the user's own."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import moram.callbacks
from moram.adapters import ContinualLinear, LayerCost, inject_layers
from moram.callbacks import AtomUsageCallback, ContinualMetricsCallback, TaskBoundaryCallback
from moram.callbacks.task_boundary import TaskBoundaryCallback as FromModule
from moram.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_callbacks_are_re_exported_like_lightnings():
    assert TaskBoundaryCallback is FromModule
    assert {"TaskBoundaryCallback", "ContinualMetricsCallback", "AtomUsageCallback"} <= set(moram.callbacks.__all__)
    assert all(issubclass(c, pl.Callback) for c in (AtomUsageCallback, ContinualMetricsCallback))


def test_yaml_class_path_of_the_package_builds_the_callback(tmp_path):
    fragment = tmp_path / "callbacks.yaml"
    fragment.write_text(
        "trainer:\n  callbacks:\n    - class_path: moram.callbacks.TaskBoundaryCallback\n"
        "      init_args: {reset_optimizer_state: false}\n"
    )
    cli = main(["--config", str(CONFIGS / "clip_cl.yaml"), "--config", str(fragment),
                "--trainer.default_root_dir", str(tmp_path)], run=False)
    found = [c for c in cli.trainer.callbacks if isinstance(c, TaskBoundaryCallback)]
    assert len(found) == 1  # the configured one; the CLI adds none of its own beside it
    assert found[0].reset_optimizer_state is False


class Shift(ContinualLinear):
    """A user's own continual layer: a trainable output shift per task, earlier shifts frozen and summed."""

    def __init__(self, base, d_in, d_out, *, max_tasks, seed=0):
        super().__init__(base, d_in, d_out, max_tasks=max_tasks, seed=seed)
        self.shift = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("frozen", torch.zeros(d_out))

    def delta(self, x):
        return (self.shift + self.frozen).expand(*x.shape[:-1], -1)

    def end_task(self):
        self.frozen += self.shift.detach()

    def start_task(self):
        with torch.no_grad():
            self.shift.zero_()

    def current_parameters(self):
        return [self.shift]

    def settings(self):
        return {"max_tasks": self.max_tasks}

    def cost(self, num_tasks):
        return LayerCost(self.out_features, self.out_features, self.out_features)


class Stream(pl.LightningDataModule):
    """Three tasks of 6 steps (batch 4) with shifted inputs; a task stream by its attributes."""

    num_tasks = 3
    task_names = ["t0", "t1", "t2"]

    @property
    def current_task(self):
        return self.trainer.current_epoch

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(self.current_task)
        x = torch.randn(24, 5, generator=gen) + self.current_task
        return DataLoader(TensorDataset(x, torch.randint(0, 3, (24,), generator=gen)), batch_size=4)


class UserModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 3))
        inject_layers(self.net, ["0"], lambda base, d_in, d_out, seed: Shift(base, d_in, d_out, max_tasks=3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_task_boundary_drives_a_layer_the_user_wrote():
    module = UserModule()
    seen = []

    class Probe(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(pl_module.net[0].shift.detach().clone())

    trainer = pl.Trainer(max_epochs=3, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[TaskBoundaryCallback(),
                                                                                           Probe()])
    trainer.fit(module, datamodule=Stream())
    layer = module.net[0]
    assert layer.task_index == 2  # two boundaries crossed
    torch.testing.assert_close(layer.frozen, seen[0] + seen[1])  # each task's shift frozen exactly once
    assert not torch.equal(seen[0], seen[1])
    state = trainer.optimizers[0].state[layer.shift]
    assert float(state["step"]) == 6  # Adam's state was zeroed at the last boundary: one task's steps
