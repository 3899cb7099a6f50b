"""X-TAIL, MTIL and class-incremental CIFAR-100 as task sources, over fakes in the datasets' real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.image_benchmarks import write_fake

from moram.data.benchmarks import MTIL_ORDERS, XTAIL_ORDER, CIFAR100CILTasks, MTILTasks, XTailTasks
from moram.data.benchmarks.classnames import CIFAR100, CLASSNAMES, TEMPLATES
from moram.data.stream import TaskStreamDataModule
from moram.data.tasks import TaskSource

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_orders_and_cheap_num_tasks(tmp_path):
    missing = str(tmp_path / "no-data-here")  # num_tasks must not read any data
    assert XTAIL_ORDER == ["fgvc_aircraft", "caltech101", "dtd", "eurosat", "flowers102", "food101", "mnist",
                           "oxford_pets", "stanford_cars", "sun397"]
    assert MTIL_ORDERS["I"] == ["fgvc_aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers102", "food101",
                                "mnist", "oxford_pets", "stanford_cars", "sun397"]
    assert MTIL_ORDERS["II"] == ["stanford_cars", "food101", "mnist", "oxford_pets", "flowers102", "sun397",
                                 "fgvc_aircraft", "caltech101", "dtd", "eurosat", "cifar100"]
    sources = [XTailTasks(root=missing), MTILTasks("I", root=missing), MTILTasks("II", root=missing),
               CIFAR100CILTasks(steps=20, root=missing)]
    assert [s.num_tasks for s in sources] == [10, 11, 11, 20]
    assert all(isinstance(s, TaskSource) for s in sources)
    assert CIFAR100CILTasks(steps=50).num_tasks == 50


def test_invalid_options_name_the_option():
    with pytest.raises(ValueError, match=r"data.source.order .* \['I', 'II'\]"):
        MTILTasks(order="III")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"data.source.steps must divide .* got 7"):
        CIFAR100CILTasks(steps=7)
    with pytest.raises(ValueError, match=r"data.source.datasets .* unknown \['imagenet'\]"):
        XTailTasks(datasets=["imagenet"])
    with pytest.raises(ValueError, match="data.source.split"):
        XTailTasks(split="random")  # type: ignore[arg-type]


def test_missing_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MORAM_DATA", raising=False)
    with pytest.raises(ValueError, match="MORAM_DATA"):
        XTailTasks().build()
    with pytest.raises(FileNotFoundError, match=r"FGVC-Aircraft: .*fgvc-aircraft-2013b.* does not exist"):
        MTILTasks(root=str(tmp_path)).build()


def two_task_root(tmp_path, names):
    for name in names:  # every class present, so that few-shot draws succeed
        write_fake(name, tmp_path, classes=len(CLASSNAMES[name]), counts=(2, 1))
    return str(tmp_path)


def test_xtail_shaped_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("MORAM_DATA", two_task_root(tmp_path, ["eurosat", "mnist"]))
    source = XTailTasks(datasets=["eurosat", "mnist"], image_size=8)  # CoOp split for EuroSAT, IDX for MNIST
    stream = TaskStreamDataModule(source, batch_size=4, steps_per_task=1, shots=1)
    assert stream.task_names == ["eurosat", "mnist"]
    eurosat, mnist = stream.tasks
    assert eurosat.classnames == CLASSNAMES["eurosat"]
    assert mnist.prompts()[3] == 'a photo of the number: "3".'
    assert eurosat.template == TEMPLATES["eurosat"]
    assert [len(stream.train_set(i)) for i in range(2)] == [10, 10]  # 1 shot x 10 classes
    assert [len(t.test) for t in stream.tasks] == [10, 10]


def test_mtil_shaped_stream(tmp_path):
    source = MTILTasks(order="II", root=two_task_root(tmp_path, ["mnist", "cifar100"]), image_size=8,
                       datasets=["mnist", "cifar100"])
    tasks = source.build()
    assert [t.name for t in tasks] == ["mnist", "cifar100"]
    assert tasks[1].classnames == CIFAR100
    assert len(tasks[1].train) == 200
    assert tasks[1].train[0][0].shape == (3, 8, 8)


def test_cifar100_class_incremental_split(tmp_path):
    write_fake("cifar100", tmp_path, classes=100, counts=(1, 1))
    source = CIFAR100CILTasks(steps=10, class_order_seed=1993, root=str(tmp_path), image_size=8)
    assert source.class_order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]  # iCaRL / PyCIL's order
    tasks = source.build()
    assert [t.name for t in tasks][:2] == ["cifar100 step 1", "cifar100 step 2"]
    assert tasks[0].classnames[:2] == [CIFAR100[68], CIFAR100[56]]
    assert sorted(c for t in tasks for c in t.classnames) == sorted(CIFAR100)
    for task in tasks:
        assert len(task.train) == len(task.test) == 10
        assert sorted(task.train.labels.tolist()) == list(range(10))
        for image, label in zip(task.train.images, task.train.labels, strict=True):  # fakes: value 20 * class
            assert int(image[0, 0, 0]) == (20 * CIFAR100.index(task.classnames[label])) % 256
    assert tasks[0].template == "a photo of a {}."


@pytest.mark.slow  # agnostic <= aware in a fit runs by default in test_clip_cl.py
def test_fit_over_a_fake_xtail_stream_scores_agnostic_at_most_aware(tmp_path, tiny_config):
    from moram.cli import main

    root = two_task_root(tmp_path / "data", ["eurosat", "mnist"])
    cli = main([
        "fit", "--config", str(ROOT / "configs" / "clip_cl.yaml"),
        "--model.backbone.model_config", str(tiny_config), "--model.backbone.pretrained", "null",
        "--model.method.rank", "2", "--model.method.top_k", "2",
        "--data.source", "moram.data.benchmarks.XTailTasks", "--data.source.root", root,
        "--data.source.datasets", "[eurosat, mnist]", "--data.source.image_size", "16",
        "--data.shots", "1", "--data.steps_per_task", "2", "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ])
    log_dir = Path(cli.trainer.log_dir)
    aware = json.loads((log_dir / "continual_metrics.json").read_text())
    agnostic = json.loads((log_dir / "continual_metrics_task_agnostic.json").read_text())
    assert aware["task_names"] == agnostic["task_names"] == ["eurosat", "mnist"]
    for row_aware, row_agnostic in zip([aware["zero_shot"], *aware["matrix"]],
                                       [agnostic["zero_shot"], *agnostic["matrix"]], strict=True):
        assert all(b <= a for a, b in zip(row_aware, row_agnostic, strict=True))
    assert (log_dir / "shot_indices.json").is_file()
