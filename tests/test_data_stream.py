"""The task stream: sampler contract, exact mid-task resume under Lightning, few-shot draws, errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset

from moram.data.sampler import ContiguousShardSampler, TaskBatchSampler, TaskLoader
from moram.data.stream import SHOTS_FILE, TaskStreamDataModule
from moram.data.synthetic import SyntheticTasks
from moram.data.tasks import Task, TaskSource
from moram.data.transforms import ImageTensorDataset
from moram.protocols import TaskStream

# -- sampler ---------------------------------------------------------------------------------


def batches(num_samples=10, batch_size=4, steps=7, seed=0, task=0, rank=0, world_size=1):
    return list(TaskBatchSampler(num_samples, batch_size, steps, seed, task, rank, world_size))


def test_sampler_yields_exactly_steps_batches_covering_each_permutation():
    out = batches(num_samples=10, batch_size=4, steps=7)
    assert len(out) == 7
    assert all(len(b) == 4 for b in out)
    flat = [i for b in out for i in b]
    assert sorted(flat[:10]) == list(range(10))  # first cycle is a permutation
    assert sorted(flat[10:20]) == list(range(10))  # so is the second
    assert flat[:10] != flat[10:20]


def test_sampler_is_deterministic_and_differs_per_task_and_seed():
    assert batches() == batches()
    assert batches(task=0) != batches(task=1)
    assert batches(seed=0) != batches(seed=1)


def test_sampler_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    batches()
    assert torch.equal(torch.rand(3), expected)


def test_rank_shards_concatenate_to_the_single_process_batch():
    single = batches(batch_size=6, steps=5)
    r0 = batches(batch_size=6, steps=5, rank=0, world_size=2)
    r1 = batches(batch_size=6, steps=5, rank=1, world_size=2)
    assert [len(b) for b in r0] == [3] * 5
    assert [a + b for a, b in zip(r0, r1, strict=True)] == single


def test_batch_size_not_divisible_by_world_size_names_the_option():
    with pytest.raises(ValueError, match=r"data\.batch_size \(5\).*divisible.*\(2\)"):
        TaskBatchSampler(10, 5, 3, world_size=2)


def test_loader_state_round_trip_continues_at_the_next_batch():
    data = ImageTensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10))
    full = [b[0].flatten().tolist() for b in TaskLoader(data, TaskBatchSampler(10, 3, 6, seed=4))]
    first = TaskLoader(data, TaskBatchSampler(10, 3, 6, seed=4))
    it = iter(first)
    for _ in range(2):
        next(it)
    state = first.state_dict()
    assert state["consumed"] == 2
    resumed = TaskLoader(data, TaskBatchSampler(10, 3, 6, seed=4))
    resumed.load_state_dict(state)
    assert len(resumed) == 6  # Lightning adds the batches already done itself
    assert [b[0].flatten().tolist() for b in resumed] == full[2:]
    assert [b[0].flatten().tolist() for b in resumed] == full  # a second pass starts over
    with_workers = TaskLoader(data, TaskBatchSampler(10, 3, 6, seed=4), num_workers=2)
    with_workers.load_state_dict(state)
    assert [b[0].flatten().tolist() for b in with_workers] == full[2:]
    other = TaskLoader(data, TaskBatchSampler(10, 4, 6, seed=4))
    with pytest.raises(RuntimeError, match="batch_size: 3 -> 4"):
        other.load_state_dict(state)


def test_eval_shards_cover_each_sample_once_without_padding():
    shards = [list(ContiguousShardSampler(7, r, 3)) for r in range(3)]
    assert [i for s in shards for i in s] == list(range(7))


# -- Lightning resume ------------------------------------------------------------------------


class Indexed(Dataset):
    """Items (image, label, index) so a test can see which samples a batch holds."""

    def __init__(self, base: ImageTensorDataset) -> None:
        self.base, self.labels = base, base.labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return image, label, i


class IndexedSynthetic(SyntheticTasks):
    def build(self) -> list[Task]:
        tasks = super().build()
        for t in tasks:
            t.train = Indexed(t.train)
        return tasks


class Recorder(pl.LightningModule):
    """A plain module (nothing from moram) recording (epoch, task, sample indices) per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        images, _, index = batch
        self.seen.append((self.current_epoch, self.trainer.datamodule.current_task, index.tolist()))
        return ((self.w - images.mean()) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_datamodule(**kwargs) -> TaskStreamDataModule:
    options = {"batch_size": 4, "steps_per_task": 3, "seed": 7}
    options.update(kwargs)
    return TaskStreamDataModule(IndexedSynthetic(num_tasks=3, samples_per_class=5, image_size=4), **options)


def fit(root: Path, ckpt_path: str | None = None, checkpoint_dir: Path | None = None, **dm_kwargs) -> Recorder:
    callbacks = []
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(checkpoint_dir, "{step}", every_n_train_steps=1, save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoint_dir is not None,
        callbacks=callbacks,
        default_root_dir=root,
    )
    module = Recorder()
    trainer.fit(module, datamodule=make_datamodule(**dm_kwargs), ckpt_path=ckpt_path)
    return module


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    return fit(root, checkpoint_dir=root / "ckpt").seen, root / "ckpt"


def test_one_fit_runs_every_task_for_its_steps(full_run):
    seen, _ = full_run
    assert [(epoch, task) for epoch, task, _ in seen] == [(t, t) for t in range(3) for _ in range(3)]
    assert all(len(index) == 4 for _, _, index in seen)
    assert seen[0][2] != seen[3][2]  # another task, another order


@pytest.mark.parametrize("step", [1, 2, 3, 5, 6, 8])  # mid-task and last-batch-of-task checkpoints
def test_resume_continues_exactly_where_the_checkpoint_left(full_run, tmp_path, step):
    seen, ckpt_dir = full_run
    resumed = fit(tmp_path, ckpt_path=str(ckpt_dir / f"step={step}.ckpt")).seen
    assert resumed == seen[step:]


def test_resume_refuses_another_task_list(full_run, tmp_path):
    _, ckpt_dir = full_run
    trainer = pl.Trainer(
        max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    dm = TaskStreamDataModule(IndexedSynthetic(num_tasks=2, samples_per_class=5, image_size=4), 4, steps_per_task=3)
    with pytest.raises(ValueError, match="checkpoint was written for the tasks"):
        trainer.fit(Recorder(), datamodule=dm, ckpt_path=str(ckpt_dir / "step=2.ckpt"))


def test_reload_every_epoch_is_required(tmp_path):
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        trainer.fit(Recorder(), datamodule=make_datamodule())


# -- the data module -------------------------------------------------------------------------


def test_datamodule_is_a_task_stream_and_knows_num_tasks_before_loading():
    class Counting(SyntheticTasks):
        builds = 0

        def build(self):
            Counting.builds += 1
            return super().build()

    dm = TaskStreamDataModule(Counting(num_tasks=3), batch_size=2)
    assert (dm.num_tasks, dm.current_task, Counting.builds) == (3, 0, 0)
    assert isinstance(dm.source, TaskSource)
    assert isinstance(dm, TaskStream)  # on Python < 3.12 this reads the properties, so builds
    assert dm.task_names == ["synthetic 0", "synthetic 1", "synthetic 2"]
    dm.setup("fit")
    assert Counting.builds == 1


def test_eval_loaders_one_per_task_in_order_unshuffled():
    dm = TaskStreamDataModule(SyntheticTasks(num_tasks=2, samples_per_class=3, image_size=4), eval_batch_size=4)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    for loader, task in zip(loaders, dm.tasks, strict=True):
        labels = torch.cat([y for _, y in loader])
        assert torch.equal(labels, task.test.labels)


def shot_indices(shots: int, seed: int) -> dict[str, list[int]]:
    dm = TaskStreamDataModule(SyntheticTasks(num_tasks=2, samples_per_class=6), shots=shots, seed=seed)
    dm.setup("fit")
    for name, task in zip(dm.task_names, dm.tasks, strict=True):
        labels = task.train.labels[dm.shot_indices[name]]
        assert torch.bincount(labels).tolist() == [shots, shots]
    assert len(dm.train_set(1)) == 2 * shots
    return dm.shot_indices


def test_few_shot_draws_exactly_shots_per_class_seeded():
    assert shot_indices(2, seed=0) == shot_indices(2, seed=0)
    assert shot_indices(2, seed=0) != shot_indices(2, seed=1)
    with pytest.raises(ValueError, match=r"has 6 training samples but data\.shots is 7"):
        shot_indices(7, seed=0)


def test_few_shot_indices_are_written_to_the_log_dir_and_checkpointed(tmp_path):
    module = fit(tmp_path, shots=2)
    assert len(module.seen) == 9
    record = json.loads((tmp_path / SHOTS_FILE).read_text())
    assert record["shots"] == 2
    assert set(record["indices"]) == {"synthetic 0", "synthetic 1", "synthetic 2"}
    assert all(set(index) <= set(record["indices"]["synthetic 0"]) for _, task, index in module.seen if task == 0)
    dm = make_datamodule(shots=2, seed=99)
    dm.load_state_dict({"task_names": dm.task_names, "seed": 7, "shots": 2, "shot_indices": record["indices"]})
    assert (dm.seed, dm.shot_indices) == (7, record["indices"])


# -- errors ----------------------------------------------------------------------------------


class OneTask:
    def __init__(self, train_size: int = 4, classnames: list[str] | None = None) -> None:
        self.train_size, self.classnames = train_size, ["a", "b"] if classnames is None else classnames

    @property
    def num_tasks(self) -> int:
        return 1

    def build(self) -> list[Task]:
        train = ImageTensorDataset(torch.zeros(self.train_size, 3, 2, 2), torch.zeros(self.train_size))
        test = ImageTensorDataset(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]))
        return [Task("lonely", self.classnames, "a {}.", train, test)]


def test_task_without_training_samples_is_named():
    with pytest.raises(ValueError, match="task 'lonely' has no training samples; check"):
        TaskStreamDataModule(OneTask(train_size=0)).setup("fit")


def test_task_without_class_names_is_named():
    with pytest.raises(ValueError, match="task 'lonely' has no class names"):
        TaskStreamDataModule(OneTask(classnames=[])).setup("fit")


def test_labels_outside_the_task_are_rejected():
    test = ImageTensorDataset(torch.zeros(2, 3, 2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels span 0..2 but the task has 2 class names"):
        Task("t", ["a", "b"], "{}", test, test).check()


def test_template_without_slot_is_rejected():
    data = ImageTensorDataset(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no '\\{\\}' slot"):
        Task("t", ["a", "b"], "a photo", data, data).check()
