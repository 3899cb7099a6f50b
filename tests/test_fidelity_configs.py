"""The paper configs carry the official code's settings; paper protocols train on open_clip's training preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes.image_benchmarks import write_fake

from moram.cli import main
from moram.data.benchmarks import CIFAR100CILTasks, MTILTasks, XTailTasks
from moram.data.transforms import ClipImageTransform, ClipTrainTransform

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CLIP_PAPER = ["clip_xtail.yaml", "clip_mtil.yaml", "clip_cifar100_cil.yaml"]


def parsed(name: str, tmp_path: Path):
    return main(["--config", str(CONFIG_DIR / name), "--trainer.default_root_dir", str(tmp_path)], run=False)


def test_trace_config_has_the_official_trace_settings(tmp_path):
    cli = parsed("llm_trace.yaml", tmp_path)
    model, atoms = cli.model, cli.model.method
    assert (model.lr, model.lr_schedule, model.warmup_steps, model.betas) == (5e-4, "constant", 0, (0.9, 0.95))
    assert cli.trainer.gradient_clip_val == 1.0
    assert (atoms.rank, atoms.top_k, atoms.temperature, atoms.threshold, atoms.dropout) == (8, 8, 0.03, 0.2, 0.1)


@pytest.mark.parametrize("name", CLIP_PAPER)
def test_clip_paper_configs_use_the_official_betas_and_training_preprocessing(name, tmp_path):
    cli = parsed(name, tmp_path)
    assert cli.model.betas == (0.9, 0.9999)
    assert cli.datamodule.source.train_transform == "clip_train"


def test_benchmark_training_sets_get_the_training_preprocessing(tmp_path):
    for name in ("dtd", "mnist", "cifar100"):
        write_fake(name, tmp_path, classes=2, counts=(2, 1))
    [dtd] = XTailTasks(root=str(tmp_path), image_size=16, split="official", datasets=["dtd"]).build()
    [mnist] = MTILTasks(root=str(tmp_path), image_size=16, datasets=["mnist"]).build()
    assert isinstance(dtd.train.transform, ClipTrainTransform)  # an image-file set
    assert isinstance(mnist.train.transform, ClipTrainTransform)  # an in-memory set
    assert isinstance(mnist.test.transform, ClipImageTransform)  # tests keep the evaluation transform
    [plain] = XTailTasks(root=str(tmp_path), image_size=16, split="official", datasets=["dtd"],
                         train_transform="eval").build()
    assert not isinstance(plain.train.transform, ClipTrainTransform)
    assert plain.train[0][0].shape == dtd.train[0][0].shape == (3, 16, 16)
    cil = CIFAR100CILTasks(steps=50, root=str(tmp_path), image_size=16)
    assert cil.train_transform == "clip_train"
    with pytest.raises(ValueError, match="data.source.train_transform"):
        XTailTasks(root=str(tmp_path), train_transform="random")  # type: ignore[arg-type]


def test_training_crops_vary_and_leave_the_global_rng_alone():
    transform = ClipTrainTransform(16)
    image = torch.arange(32 * 32 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(32, 32, 3)
    state = torch.get_rng_state()
    crops = [transform(image) for _ in range(4)]
    assert torch.equal(torch.get_rng_state(), state)  # atom dropout draws what it would without augmentation
    assert crops[0].shape == (3, 16, 16)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])  # random resized crops
    again = ClipTrainTransform(16)
    assert all(torch.equal(a, again(image)) for a in crops)  # seeded: the same crops in the same order
