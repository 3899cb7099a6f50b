"""configs/llm_trace.yaml carries every value of the official TRACE runner, task by task.

The official values, read from ``TRACE/runner_moram.sh`` of Artificer-AI-Lab/MoRAM (commit 05c3d61) and the
defaults of its ``TRACE/training/main.py`` (``--meetingbank_max_prompt_len`` 4096, the constant schedule
``get_constant_schedule_with_warmup`` it builds whatever ``--lr_scheduler_type`` says) and
``TRACE/utils/ds_utils.py`` (``gradient_clipping`` 1.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moram.cli import main
from moram.data.stream import TaskStreamDataModule
from moram.data.text import TextDataset, TextTask
from moram.data.text_benchmarks import TRACETasks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "llm_trace.yaml"

OFFICIAL = {
    "order": ["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten"],
    "epochs": [2, 1, 3, 2, 1, 2, 2, 3],  # --num_train_epochs 2,1,3,2,1,2,2,3
    "train_examples": 500,  # LLM-CL-Benchmark_500
    "global_batch": 1 * 8 * 4,  # --per_device_train_batch_size 1, --gradient_accumulation_steps 8, 4 GPUs
    "max_prompt_len": 1024,
    "meetingbank_max_prompt_len": 4096,
    "max_ans_len": 512,
    "seed": 1234,
    "lr": 5e-4,
    "warmup": 0,
    "weight_decay": 0.0,
    "betas": (0.9, 0.95),
    "clip": 1.0,
    "rank": 8, "top_k": 8, "temperature": 0.03, "threshold": 0.2,
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace")
    return main(["--config", str(CONFIG), "--trainer.default_root_dir", str(root)], run=False)


def test_the_stream_and_its_schedule_are_the_official_ones(cli):
    data, source = cli.datamodule, cli.datamodule.source
    assert isinstance(source, TRACETasks)
    assert source.order == OFFICIAL["order"]
    assert data.epochs_per_task == OFFICIAL["epochs"]
    assert source.max_train == OFFICIAL["train_examples"]
    assert data.batch_size == OFFICIAL["global_batch"]
    assert data.seed == OFFICIAL["seed"]
    assert cli.config["seed_everything"] == OFFICIAL["seed"]


def test_prompt_and_answer_lengths_are_the_official_ones(cli):
    backbone, source = cli.model.backbone, cli.datamodule.source
    assert backbone.max_new_tokens == OFFICIAL["max_ans_len"]
    assert backbone.max_length - backbone.max_new_tokens == OFFICIAL["max_prompt_len"]
    assert source.max_length == {"MeetingBank": OFFICIAL["meetingbank_max_prompt_len"] + OFFICIAL["max_ans_len"]}


def test_optimiser_and_atoms_are_the_official_ones(cli):
    model, atoms = cli.model, cli.model.method
    assert (model.lr, model.lr_schedule, model.warmup_steps) == (OFFICIAL["lr"], "constant", OFFICIAL["warmup"])
    assert (model.weight_decay, model.betas) == (OFFICIAL["weight_decay"], OFFICIAL["betas"])
    assert cli.trainer.gradient_clip_val == OFFICIAL["clip"]
    assert (atoms.rank, atoms.top_k, atoms.temperature, atoms.threshold) == (
        OFFICIAL["rank"], OFFICIAL["top_k"], OFFICIAL["temperature"], OFFICIAL["threshold"])


def _trace_folder(root: Path, n_train: int) -> None:
    for task in OFFICIAL["order"]:
        folder = root / "TRACE" / task
        folder.mkdir(parents=True)
        rows = [{"prompt": f"{task} {i}", "answer": "A"} for i in range(n_train)]
        (folder / "train.json").write_text(json.dumps(rows))
        (folder / "test.json").write_text(json.dumps(rows[:3]))


def test_official_epochs_give_the_steps_of_500_examples_in_batches_of_32(cli, tmp_path):
    _trace_folder(tmp_path, 600)
    source = TRACETasks(root=str(tmp_path / "TRACE"), max_train=500, max_test=2, max_length={"MeetingBank": 4608})
    data = TaskStreamDataModule(source, batch_size=32, epochs_per_task=cli.datamodule.epochs_per_task)
    # ceil(epochs * 500 / 32): every one of the epochs * 500 examples is drawn once
    assert [data.steps_for(i) for i in range(8)] == [32, 16, 47, 32, 16, 32, 32, 47]
    assert [t.max_length for t in data.tasks] == [None, None, 4608, None, None, None, None, None]


def test_per_task_schedules_accept_one_number_or_one_per_task():
    data = TextDataset([{"prompt": "p", "answer": "a"}] * 10)

    class Source:
        num_tasks = 3

        def build(self):
            return [TextTask(name, data, data) for name in "abc"]

    assert [TaskStreamDataModule(Source(), batch_size=4, steps_per_task=7).steps_for(i) for i in range(3)] == [7] * 3
    listed = TaskStreamDataModule(Source(), batch_size=4, steps_per_task=[5, 1, 9])
    assert [listed.steps_for(i) for i in range(3)] == [5, 1, 9]
    by_epochs = TaskStreamDataModule(Source(), batch_size=4, epochs_per_task=[1, 2.5, 3])
    assert [by_epochs.steps_for(i) for i in range(3)] == [3, 7, 8]  # ceil(10 / 4), ceil(25 / 4), ceil(30 / 4)
    with pytest.raises(ValueError, match="data.steps_per_task lists 2 values but the stream has 3 tasks"):
        TaskStreamDataModule(Source(), steps_per_task=[5, 1])
    with pytest.raises(ValueError, match="data.epochs_per_task"):
        TaskStreamDataModule(Source(), epochs_per_task=[1, 0, 2])
    with pytest.raises(ValueError, match="data.steps_per_task must be a positive integer"):
        TaskStreamDataModule(Source(), steps_per_task=[3, -1, 2])


class _LRTrace:
    """Records the learning rate of every optimizer step (a Lightning callback)."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_a_per_task_schedule_trains_each_task_its_steps_with_its_own_cosine(tmp_path):
    from helpers import lm_args
    from lightning.pytorch import Callback

    from moram.module import lr_factor

    trace = type("LRTrace", (_LRTrace, Callback), {})()
    args = lm_args(tmp_path, "--data.steps_per_task", "[3, 6]", "--model.warmup_steps", "0")
    cli = main(args[1:], run=False)
    cli.trainer.callbacks.append(trace)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 9
    lr = cli.model.lr
    expected = [lr * lr_factor("cosine", s, n, 0) for n in (3, 6) for s in range(n)]
    assert trace.lrs == pytest.approx(expected)
