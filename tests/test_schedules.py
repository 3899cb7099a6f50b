"""The per-task learning-rate schedules: each follows its formula over a task and restarts at every task."""

from __future__ import annotations

import math

import pytest
from helpers import fit_args
from lightning.pytorch import Callback

from moram.cli import main
from moram.module import lr_factor


class LRTrace(Callback):
    """The learning rate of the first parameter group at every training batch, per task."""

    def __init__(self):
        self.per_task: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.per_task.setdefault(trainer.current_epoch, []).append(lr)


def test_factors_follow_the_formulas():
    total, warmup = 6, 2
    cosine = [lr_factor("cosine", s, total, warmup) for s in range(total)]
    constant = [lr_factor("constant", s, total, warmup) for s in range(total)]
    assert constant == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert cosine == pytest.approx([0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    with pytest.raises(ValueError, match="model.lr_schedule"):
        lr_factor("linear", 0, total, warmup)


@pytest.mark.parametrize("schedule", ["cosine", pytest.param("constant", marks=pytest.mark.slow)])
def test_the_lr_over_each_task_follows_the_schedule_and_restarts(tmp_path, tiny_config, schedule):  # noqa: F811
    trace = LRTrace()
    steps, warmup, lr = 4, 2, 1e-3
    cli = main(fit_args(tmp_path, tiny_config, "--model.lr", str(lr), "--model.warmup_steps", str(warmup),
                        "--model.lr_schedule", schedule, "--data.steps_per_task", str(steps))[1:], run=False)
    cli.trainer.callbacks.append(trace)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    expected = [lr * lr_factor(schedule, s, steps, warmup) for s in range(steps)]
    assert sorted(trace.per_task) == [0, 1]
    for task in (0, 1):
        assert trace.per_task[task] == pytest.approx(expected)  # the same curve again: restarted per task


def test_an_unknown_schedule_names_the_option():
    from moram.backbones.lm import LMBackbone
    from moram.module import ContinualModule

    with pytest.raises(ValueError, match="model.lr_schedule"):
        ContinualModule(LMBackbone(), lr_schedule="linear")  # type: ignore[arg-type]
