"""Contrastive pretraining of the tiny CLIP: loss, CLI run and export, and the shipped weights."""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moram.backbones.clip.loss import clip_class_loss
from moram.backbones.clip.tiny import TINY_CLIP_CARD, TINY_CLIP_WEIGHTS, card_sha256, load_tiny_clip
from moram.data.transforms import CLIP_MEAN as OPENAI_MEAN
from moram.data.transforms import CLIP_STD as OPENAI_STD
from moram.data.transforms import to_clip_images
from recipes.pretrain_tiny_clip import FashionMNISTDataModule

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "recipes" / "pretrain_tiny_clip.yaml"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_fashion_mnist(root: Path, n_train: int, n_test: int) -> None:
    """A tiny Fashion-MNIST in the real IDX format (gzipped), with class-dependent images."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = (rng.integers(0, 60, size=(n, 28, 28)) + 19 * labels[:, None, None]).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))


def test_loss_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [-1.0, 1.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])  # class 2 is absent from the batch
    scale = 10.0
    u = [[a / math.hypot(*row) for a in row] for row in img.tolist()]
    v = [[b / math.hypot(*row) for b in row] for row in txt.tolist()]
    logits = [[scale * (a[0] * b[0] + a[1] * b[1]) for b in v] for a in u]  # (B, C)

    def log_softmax(row: list[float], j: int) -> float:
        return row[j] - math.log(sum(math.exp(x) for x in row))

    image_to_text = -sum(log_softmax(logits[i], int(labels[i])) for i in range(4)) / 4
    text_to_image = 0.0
    for c in range(3):
        column = [logits[i][c] for i in range(4)]
        members = [i for i in range(4) if labels[i] == c]
        text_to_image -= sum(log_softmax(column, i) / len(members) for i in members)  # nothing for c = 2
    expected = image_to_text + text_to_image / 3

    got = clip_class_loss(img, txt, labels, torch.tensor(scale))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_datamodule_turns_grey_into_clip_inputs(tmp_path):
    write_fashion_mnist(tmp_path / "fm", 8, 6)
    datamodule = FashionMNISTDataModule(str(tmp_path / "fm"), batch_size=4, val_subset=5)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 32, 32)
    assert labels.dtype == torch.int64
    assert sum(len(b[1]) for b in datamodule.val_dataloader()) == 5
    assert sum(len(b[1]) for b in datamodule.test_dataloader()) == 6
    white = torch.full((1, 28, 28), 255, dtype=torch.uint8)

    expected = [(1.0 - m) / s for m, s in zip(OPENAI_MEAN, OPENAI_STD, strict=True)]
    torch.testing.assert_close(to_clip_images(white, 32)[0, :, 5, 7], torch.tensor(expected))


def test_cli_fit_trains_image_tower_only_and_exports(tmp_path, monkeypatch):
    from moram.cli import main

    monkeypatch.setattr(sys, "argv", ["pytest"])  # LightningCLI warns when sys.argv and args both hold options
    root, export = tmp_path / "fm", tmp_path / "export"
    write_fashion_mnist(root, 64, 32)
    cli = main(
        ["--config", str(CONFIG), "--data.root", str(root), "--data.batch_size", "16",
         "--data.val_subset", "8", "--trainer.max_steps", "3", "--trainer.val_check_interval", "2",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path), "--model.export_dir", str(export)],
        run=False,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in cli.model.model.named_parameters()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = dict(cli.model.model.named_parameters())

    assert cli.trainer.global_step == 3
    assert "val/zero_shot_acc" in cli.trainer.callback_metrics
    for name, param in after.items():
        changed = not torch.equal(before[name], param)
        if name.startswith("text.transformer."):
            assert not changed, f"frozen MiniLM weight {name} changed"
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["visual.transformer.resblocks.3.mlp.c_fc.weight"],
                           after["visual.transformer.resblocks.3.mlp.c_fc.weight"])  # fmt: skip
    assert not torch.equal(before["text.proj.weight"], after["text.proj.weight"])

    weights, card = export / "tiny_clip.safetensors", export / "MODEL_CARD.md"
    assert card_sha256(card) == hashlib.sha256(weights.read_bytes()).hexdigest()
    text = card.read_text()
    assert "| steps | 3 |" in text
    assert "(32 images" in text  # the accuracy is over the whole test split
    from safetensors.torch import load_file

    stored = load_file(str(weights))
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert {n for n in after if not n.startswith("text.transformer.")} == set(stored)

    model, _ = load_tiny_clip(load_text_weights=False, weights=weights)
    for name, tensor in model.named_parameters():
        if not name.startswith("text.transformer."):
            torch.testing.assert_close(tensor, after[name].detach().half().float())


def test_shipped_weights_match_their_model_card():
    assert TINY_CLIP_WEIGHTS.is_file()
    assert TINY_CLIP_WEIGHTS.stat().st_size < 4_000_000
    assert card_sha256(TINY_CLIP_CARD) == hashlib.sha256(TINY_CLIP_WEIGHTS.read_bytes()).hexdigest()
    model, tokenizer = load_tiny_clip()
    assert not model.training
    assert tokenizer(["a photo of a bag."]).shape == (1, 32)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_shipped_weights_classify_real_test_images():
    from moram.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist(DEBIAN_FASHION_MNIST, "test")
    images, labels = torch.from_numpy(images[:200]), torch.from_numpy(labels[:200])
    model, tokenizer = load_tiny_clip()
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"a photo of a {c}." for c in FASHION_MNIST_CLASSES]))
        text = torch.nn.functional.normalize(text, dim=-1)

        def predict() -> torch.Tensor:
            img = torch.nn.functional.normalize(model.encode_image(to_clip_images(images, 32)), dim=-1)
            return (img @ text.t()).argmax(dim=-1)

        first = predict()
        assert torch.equal(first, predict())
    assert (first == labels).float().mean().item() > 0.5


def test_missing_or_corrupt_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.safetensors"):
        load_tiny_clip(weights=tmp_path / "nothing.safetensors")
    weights = tmp_path / "tiny_clip.safetensors"
    data = bytearray(TINY_CLIP_WEIGHTS.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError, match=r"MODEL_CARD\.md"):
        load_tiny_clip(weights=weights)
    shutil.copy(TINY_CLIP_CARD, tmp_path / "MODEL_CARD.md")
    with pytest.raises(ValueError, match=rf"{weights.name} are corrupt"):
        load_tiny_clip(weights=weights)
