"""Progress a person can follow: a bar per task on a terminal, plain lines in a log without one."""

from __future__ import annotations

import json
import re
import sys

from helpers import TINY, fit_args

from moram.callbacks import ProgressLogCallback
from moram.callbacks.progress import TaskProgressBar
from moram.cli import continual_callbacks, main


def kinds(callbacks):
    return {type(c).__name__ for c in callbacks}


def test_a_terminal_gets_the_task_bar_and_a_log_gets_lines(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert "TaskProgressBar" in kinds(continual_callbacks([]))
    assert "ProgressLogCallback" not in kinds(continual_callbacks([]))
    assert "TaskProgressBar" not in kinds(continual_callbacks([], progress_bar=False))  # enable_progress_bar false
    from lightning.pytorch.callbacks import RichProgressBar

    assert "TaskProgressBar" not in kinds(continual_callbacks([RichProgressBar()]))  # the user's own bar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert "ProgressLogCallback" in kinds(continual_callbacks([]))
    assert "TaskProgressBar" not in kinds(continual_callbacks([]))


def test_the_bar_and_the_lines_name_the_task_and_its_step(tmp_path, capfd):
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    args = fit_args(tmp_path, tiny, "--trainer.enable_progress_bar", "true",
                    "--trainer.callbacks+=moram.callbacks.progress.TaskProgressBar",
                    "--trainer.callbacks+=moram.callbacks.ProgressLogCallback",
                    "--trainer.callbacks.every_n_steps", "2")
    cli = main(args)
    assert any(isinstance(c, TaskProgressBar) for c in cli.trainer.callbacks)
    assert sum(isinstance(c, ProgressLogCallback) for c in cli.trainer.callbacks) == 1
    out = capfd.readouterr()
    text = out.out + out.err
    # the bar: named after the task, counting its 3 steps, the run's step out of 6 beside it
    assert re.search(r"task 1/2 'synthetic 0': 100%.*3/3 .*step=3/6", text), text[-3000:]
    assert re.search(r"task 2/2 'synthetic 1': 100%.*3/3 .*step=6/6", text), text[-3000:]
    # the lines
    assert "[moram] task 2/2 'synthetic 1': started (step 3 of 6)" in text
    assert re.search(r"\[moram\] task 1/2 'synthetic 0': step 2/3, loss \d+\.\d+, ", text)
    assert "[moram] task 2/2 'synthetic 1': trained (3 steps, " in text
