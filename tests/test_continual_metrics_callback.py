"""ContinualMetricsCallback through a real lightning.Trainer, on a plain module that is not moram's."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from moram.callbacks import continual_metrics
from moram.callbacks.continual_metrics import ContinualMetricsCallback
from moram.metrics import CSV_NAME, HEATMAP_NAME, JSON_NAME
from moram.protocols import score_key

DIM, CLASSES_PER_TASK, TASKS = 8, 2, ["alpha", "beta", "gamma"]
NUM_TASKS = len(TASKS)


def make_task(t: int, n: int, seed: int) -> TensorDataset:
    """Task t: classes 2t and 2t+1, Gaussian blobs around task-specific centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(TASKS) * CLASSES_PER_TASK, DIM, generator=torch.Generator().manual_seed(0)) * 2
    y = t * CLASSES_PER_TASK + torch.randint(0, CLASSES_PER_TASK, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, DIM, generator=g), y)


class Stream(pl.LightningDataModule):
    """One task per epoch; one validation dataloader per task (4 batches each)."""

    def __init__(self) -> None:
        super().__init__()
        self.fixed_task: int | None = None  # set it to run one fit per task
        self.train_sets = [make_task(t, 64, seed=10 + t) for t in range(len(TASKS))]
        self.val_sets = [make_task(t, 64, seed=100 + t) for t in range(len(TASKS))]

    @property
    def task_names(self) -> list[str]:
        return list(TASKS)

    @property
    def num_tasks(self) -> int:
        return len(TASKS)

    @property
    def current_task(self) -> int:
        if self.fixed_task is not None:
            return self.fixed_task
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_sets[self.current_task], batch_size=16, shuffle=False)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(ds, batch_size=16) for ds in self.val_sets]


class NotAStream(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return Stream().train_dataloader()


class Classifier(pl.LightningModule):
    """A linear classifier over all tasks' classes; logs each task's accuracy under score_key."""

    def __init__(self, log_scores: str | None = "step") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(DIM, len(TASKS) * CLASSES_PER_TASK)
        self.log_scores = log_scores  # "step": per dataloader in validation_step; "epoch": at epoch end
        self.correct = torch.zeros(len(TASKS))
        self.seen = torch.zeros(len(TASKS))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        hits = (self.net(x).argmax(-1) == y).float()
        self.correct[dataloader_idx] += hits.sum()
        self.seen[dataloader_idx] += len(y)
        if self.log_scores == "step":
            self.log(score_key(TASKS[dataloader_idx]), hits.mean() * 100, batch_size=len(y), add_dataloader_idx=False)

    def on_validation_epoch_end(self):
        if self.log_scores == "epoch":
            self.log_dict({score_key(t): 100 * self.correct[i] / self.seen[i] for i, t in enumerate(TASKS)})
        self.correct.zero_()
        self.seen.zero_()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def accuracies(module: Classifier, dm: Stream) -> list[float]:
    """The scores worked out directly, to compare with what the callback read from Lightning."""
    with torch.no_grad():
        return [
            (module.net(ds.tensors[0]).argmax(-1) == ds.tensors[1]).float().mean().item() * 100 for ds in dm.val_sets
        ]


def make_trainer(tmp_path, callback, max_epochs=NUM_TASKS, sanity=-1, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        num_sanity_val_steps=sanity,
        reload_dataloaders_every_n_epochs=1,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[callback, *kwargs.pop("callbacks", [])],
        **kwargs,
    )


def by_hand(zs: list[float], rows: list[list[float]]) -> dict[str, float]:
    """docs/design.md §2 written out again, independently of moram.metrics."""
    t = len(rows)
    r = lambda i, j: rows[i - 1][j - 1]  # noqa: E731 - 1-based R[i, j]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    transfer = [mean([r(i, j) for i in range(1, j)]) for j in range(2, t + 1)]
    return {
        "transfer": mean(transfer),
        "average": mean([mean([r(i, j) for i in range(1, t + 1)]) for j in range(1, t + 1)]),
        "last": mean([r(t, j) for j in range(1, t + 1)]),
        "acc": mean([r(t, j) for j in range(1, t + 1)]),
        "bwt": mean([r(t, j) - r(j, j) for j in range(1, t)]),
        "fwt": mean([r(j - 1, j) - zs[j - 1] for j in range(2, t + 1)]),
        "forgetting": mean([max(r(i, j) for i in range(1, t)) - r(t, j) for j in range(1, t)]),
        "op": mean([r(t, j) for j in range(1, t + 1)]),
        "trace_bwt": mean([-min(r(t, j) - r(j, j), 0.0) for j in range(1, t + 1)]),
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    module, dm, callback = Classifier(), Stream(), ContinualMetricsCallback()
    before = accuracies(module, dm)
    trainer = make_trainer(tmp_path, callback)
    trainer.fit(module, datamodule=dm)
    return {"trainer": trainer, "callback": callback, "before": before, "after": accuracies(module, dm)}


def test_json_has_zero_shot_and_one_row_per_task(finished_run):
    trainer = finished_run["trainer"]
    data = json.loads((Path(trainer.log_dir) / JSON_NAME).read_text())
    assert data["task_names"] == TASKS
    assert len(data["zero_shot"]) == len(TASKS)
    assert len(data["matrix"]) == len(TASKS)  # zero-shot + T rows in all
    for row in [data["zero_shot"], *data["matrix"]]:
        assert all(0.0 <= v <= 100.0 for v in row)
    expected = by_hand(data["zero_shot"], data["matrix"])
    for key in ("transfer", "average", "last"):
        assert data[key]["mean"] == pytest.approx(expected[key]), key
    for key in ("acc", "bwt", "fwt", "forgetting", "op", "trace_bwt"):
        assert data[key] == pytest.approx(expected[key]), key
    assert data["transfer"]["per_task"][TASKS[0]] is None


def test_rows_are_the_scores_of_the_pass_that_just_ran(finished_run):
    # the sanity check's callback_metrics reach on_validation_end: the zero-shot row is the untrained model
    callback = finished_run["callback"]
    assert callback.zero_shot == pytest.approx(finished_run["before"], abs=1e-4)
    assert callback.rows[len(TASKS) - 1] == pytest.approx(finished_run["after"], abs=1e-4)
    assert len({tuple(r) for r in [callback.zero_shot, *callback.rows.values()]}) == len(TASKS) + 1


def test_files_and_logged_scalars(finished_run):
    out = Path(finished_run["trainer"].log_dir)
    assert finished_run["callback"].json_path == out / JSON_NAME
    assert (out / HEATMAP_NAME).read_bytes()[:4] == b"\x89PNG"
    with (out / CSV_NAME).open() as f:
        labels = [row[0] for row in csv.reader(f)][1:]
    assert labels == ["zero-shot", *(f"after {t}" for t in TASKS)]
    with (out / "metrics.csv").open() as f:
        logged = list(csv.DictReader(f))
    accs = [float(r["continual/acc"]) for r in logged if r.get("continual/acc")]
    assert len(accs) == len(TASKS)
    assert accs[-1] == pytest.approx(finished_run["callback"].summary()["acc"])


def test_state_dict_round_trip(finished_run, tmp_path):
    callback = finished_run["callback"]
    path = tmp_path / "state.pt"
    torch.save(callback.state_dict(), path)
    restored = ContinualMetricsCallback()
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.matrix == callback.matrix
    assert restored.summary() == callback.summary()
    tolerant = ContinualMetricsCallback()
    tolerant.load_state_dict({})
    assert (tolerant.zero_shot, tolerant.rows, tolerant.task_names) == (None, {}, None)


def test_resumed_run_keeps_its_matrix(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ContinualMetricsCallback(output_dir=tmp_path / "out")
    make_trainer(tmp_path, first, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(
        Classifier(), datamodule=Stream()
    )
    assert sorted(first.rows) == [0, 1]
    second = ContinualMetricsCallback(output_dir=tmp_path / "out")
    make_trainer(
        tmp_path, second, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")]
    ).fit(Classifier(), datamodule=Stream(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert second.zero_shot == first.zero_shot
    assert second.rows[0] == first.rows[0]
    assert second.rows[1] == first.rows[1]
    assert sorted(second.rows) == [0, 1, 2]
    assert len(json.loads((tmp_path / "out" / JSON_NAME).read_text())["matrix"]) == 3


def test_scores_logged_at_epoch_end_work_too(tmp_path):
    module, dm, callback = Classifier(log_scores="epoch"), Stream(), ContinualMetricsCallback(heatmap=False)
    before = accuracies(module, dm)
    make_trainer(tmp_path, callback, max_epochs=2).fit(module, datamodule=dm)
    assert callback.zero_shot == pytest.approx(before, abs=1e-4)
    assert callback.rows[1] == pytest.approx(accuracies(module, dm), abs=1e-4)


def test_one_fit_per_task(tmp_path):
    # rows follow the stream's current_task, not trainer.current_epoch (0 in every fresh Trainer)
    module, dm, callback = Classifier(), Stream(), ContinualMetricsCallback(output_dir=tmp_path / "out")
    before = accuracies(module, dm)
    after = []
    for task in range(len(TASKS)):
        dm.fixed_task = task
        make_trainer(tmp_path, callback, max_epochs=1).fit(module, datamodule=dm)
        after.append(accuracies(module, dm))
    assert callback.zero_shot == pytest.approx(before, abs=1e-4)
    assert [callback.rows[i] for i in range(len(TASKS))] == [pytest.approx(a, abs=1e-4) for a in after]
    assert json.loads((tmp_path / "out" / JSON_NAME).read_text())["matrix"] == callback.matrix.rows


def test_partial_sanity_check_is_not_a_zero_shot_row(tmp_path):
    callback = ContinualMetricsCallback(heatmap=False)
    with pytest.warns(UserWarning, match="num_sanity_val_steps=-1"):
        make_trainer(tmp_path, callback, max_epochs=1, sanity=2).fit(Classifier(), datamodule=Stream())
    assert callback.zero_shot is None
    assert sorted(callback.rows) == [0]
    assert callback.summary()["fwt"] is None


def test_no_sanity_check_no_zero_shot(tmp_path):
    callback = ContinualMetricsCallback(heatmap=False)
    make_trainer(tmp_path, callback, max_epochs=1, sanity=0).fit(Classifier(), datamodule=Stream())
    assert callback.zero_shot is None
    assert sorted(callback.rows) == [0]


def test_validate_outside_fit_records_nothing(tmp_path):
    callback = ContinualMetricsCallback(heatmap=False)
    make_trainer(tmp_path, callback).validate(Classifier(), datamodule=Stream())
    assert callback.zero_shot is None
    assert callback.rows == {}
    assert not (tmp_path / "lightning_logs" / "version_0" / JSON_NAME).exists()


@pytest.mark.parametrize("sanity", [-1, 2])
def test_missing_score_names_the_key_and_fails_before_training(tmp_path, sanity):
    trainer = make_trainer(tmp_path, ContinualMetricsCallback(), sanity=sanity)
    with pytest.raises(KeyError, match=r"eval/score/alpha.*score_key"):
        trainer.fit(Classifier(log_scores=None), datamodule=Stream())
    assert trainer.global_step == 0


def test_datamodule_must_be_a_task_stream(tmp_path):
    with pytest.raises(TypeError, match=r"TaskStream.*task_names"):
        make_trainer(tmp_path, ContinualMetricsCallback()).fit(Classifier(), datamodule=NotAStream())


def test_record_rejects_rows_beyond_the_stream():
    callback = ContinualMetricsCallback()
    callback.task_names = list(TASKS)
    with pytest.raises(ValueError, match="max_epochs"):
        callback.record(len(TASKS), dict.fromkeys(TASKS, 1.0))
    with pytest.raises(ValueError, match="one entry per task"):
        callback.record(0, {"alpha": 1.0})


def test_matrix_stops_at_a_missing_row():
    callback = ContinualMetricsCallback()
    callback.load_state_dict({"task_names": TASKS, "rows": {0: [1.0, 2.0, 3.0], 2: [4.0, 5.0, 6.0]}})
    assert callback.matrix.rows == [[1.0, 2.0, 3.0]]


def test_unreadable_sanity_check_internals_skip_the_zero_shot_row(tmp_path, monkeypatch):
    # if a Lightning release moves its result collection, training goes on without a zero-shot row
    with pytest.warns(UserWarning, match="cannot read the sanity check"):
        assert continual_metrics._sanity_check_metrics(SimpleNamespace(_results=object())) is None
    monkeypatch.setattr(continual_metrics, "_sanity_check_metrics", lambda trainer: None)
    callback = ContinualMetricsCallback(heatmap=False)
    make_trainer(tmp_path, callback, max_epochs=1).fit(Classifier(), datamodule=Stream())
    assert callback.zero_shot is None
    assert sorted(callback.rows) == [0]


def test_the_heatmap_is_redrawn_at_most_every_interval_and_always_at_the_end(tmp_path):
    """JSON and CSV follow every row; the PNG (about 0.1 s to draw) at most every heatmap_interval seconds."""
    callback = ContinualMetricsCallback(output_dir=tmp_path, heatmap_interval=3600.0)
    callback.task_names, callback._dir = ["a", "b"], tmp_path  # what setup() sets from the task stream
    png = tmp_path / "accuracy_matrix.png"
    callback.record(None, {"a": 10.0, "b": 20.0})
    callback._save()
    drawn = png.read_bytes()  # the first row is drawn at once
    callback.record(0, {"a": 80.0, "b": 30.0})
    callback._save()
    assert png.read_bytes() == drawn  # within the interval: not redrawn
    assert json.loads((tmp_path / "continual_metrics.json").read_text())["matrix"] == [[80.0, 30.0]]
    callback._save(final=True)  # the end of the fit (or an error) always draws
    assert png.read_bytes() != drawn
