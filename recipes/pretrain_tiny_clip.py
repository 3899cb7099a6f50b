"""Recipe: contrastive pretraining of moram's tiny CLIP image tower against a frozen MiniLM text tower.

``python -m recipes.pretrain_tiny_clip`` (from the repository root; it runs ``fit`` with
``recipes/pretrain_tiny_clip.yaml``, and takes LightningCLI options after it) trains the small ViT of
``moram-tiny-minilm`` on Fashion-MNIST's 60,000 training images against the class prompts, with the
pretrained all-MiniLM-L6-v2 transformer frozen, and writes ``tiny_clip.safetensors`` (image tower,
text projection and ``logit_scale`` in fp16) plus ``MODEL_CARD.md`` to ``export_dir``. These are the
weights that :func:`moram.backbones.clip.tiny.load_tiny_clip` loads.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from moram.backbones.clip.loss import clip_class_loss
from moram.backbones.clip.tiny import FROZEN_PREFIX, export_tiny_clip
from moram.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist
from moram.data.transforms import to_clip_images


class _ClipCollate:
    """Batch-wise collate: stack uint8 images and turn them into CLIP inputs (picklable for workers)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        images = torch.stack([image for image, _ in items])
        labels = torch.stack([label for _, label in items])
        return to_clip_images(images, self.image_size), labels


class FashionMNISTDataModule(LightningDataModule):
    """Fashion-MNIST from IDX files as CLIP inputs: train split to train, test split to validate and test.

    Args:
        root: folder with the four IDX files (``.gz`` or plain; torchvision's layout works too).
        batch_size: images per training step.
        image_size: side of the square CLIP input the 28×28 images are resized to.
        num_workers: DataLoader workers.
        val_subset: validate on this many test images (a fixed random subset) for speed; ``test`` uses all.
    """

    classnames = FASHION_MNIST_CLASSES

    def __init__(
        self,
        root: str = "/usr/share/datasets/fashion-mnist",
        batch_size: int = 256,
        image_size: int = 32,
        num_workers: int = 0,
        val_subset: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or image_size < 1 or num_workers < 0 or (val_subset is not None and val_subset < 1):
            raise ValueError("FashionMNISTDataModule: batch_size, image_size, val_subset must be ≥ 1, num_workers ≥ 0")
        self.save_hyperparameters()
        self.root, self.batch_size, self.image_size = root, batch_size, image_size
        self.num_workers, self.val_subset = num_workers, val_subset
        self.train_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self.test_set = TensorDataset(*map(torch.from_numpy, load_fashion_mnist(self.root, "test")))
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = TensorDataset(*map(torch.from_numpy, load_fashion_mnist(self.root, "train")))

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_ClipCollate(self.image_size),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        dataset: Any = self.test_set
        if self.val_subset is not None and self.val_subset < len(dataset):
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
            dataset = torch.utils.data.Subset(dataset, order[: self.val_subset].tolist())
        return self._loader(dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class ContrastivePretrainModule(LightningModule):
    """Train a CLIP image tower (+ text projection, ``logit_scale``) against a frozen pretrained text transformer.

    Args:
        model_config: moram model-config name or JSON path (see ``moram.backbones.clip.load_model_config``).
        classnames: class names for the prompts; ``None`` takes ``classnames`` from the datamodule.
        template: prompt template, formatted with each class name.
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices (not on biases, norms, embeddings-as-vectors, logit_scale).
        warmup_steps: linear warm-up steps before the cosine decay to 0 at ``trainer.max_steps``.
        export_dir: where to write ``tiny_clip.safetensors`` and ``MODEL_CARD.md`` at the end of ``fit``.
    """

    def __init__(
        self,
        model_config: str = "moram-tiny-minilm",
        classnames: list[str] | None = None,
        template: str = "a photo of a {}.",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        from moram.backbones.clip.build import build_clip_from_config, load_model_config

        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' for the class name, got {template!r}")
        self.save_hyperparameters()
        self.model_config, self.template, self.export_dir = model_config, template, export_dir
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.model: Any
        self.model, self.tokenizer = build_clip_from_config(load_model_config(model_config))
        for name, param in self.model.named_parameters():
            param.requires_grad_(not name.startswith(FROZEN_PREFIX))
        self.classnames = classnames
        self.register_buffer("prompt_pooled", torch.empty(0), persistent=False)
        self._fit_start = 0.0

    def setup(self, stage: str) -> None:
        if self.classnames is None:
            self.classnames = getattr(self._datamodule(), "classnames", None)
        if not self.classnames:
            raise ValueError("no class names: set --model.classnames or use a datamodule with a `classnames` attribute")
        self.prompt_pooled = self._pool_prompts([self.template.format(c) for c in self.classnames])

    def _datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None)

    @torch.no_grad()
    def _pool_prompts(self, prompts: list[str]) -> Tensor:
        """Pooled output of the frozen text transformer, (C, width): fixed, so computed once."""
        text = self.model.text
        tokens = self.tokenizer(prompts).to(self.device)
        mask = (tokens != text.config.pad_token_id).long()
        was_training = text.transformer.training
        text.transformer.eval()  # no dropout in the cached features
        pooled = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
        text.transformer.train(was_training)
        return pooled.detach()

    def class_features(self) -> Tensor:
        """Text features of the class prompts, (C, embed_dim): the trainable projection of the cached pooling."""
        return self.model.text.proj(self.prompt_pooled)

    def _logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().clamp(max=100.0)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = clip_class_loss(
            self.model.encode_image(images), self.class_features(), labels, self._logit_scale()
        )
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self._logit_scale())
        return loss

    def _predict(self, images: Tensor) -> Tensor:
        img = F.normalize(self.model.encode_image(images), dim=-1)
        return (img @ F.normalize(self.class_features(), dim=-1).t()).argmax(dim=-1)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        acc = (self._predict(images) == labels).float().mean()
        self.log("val/zero_shot_acc", acc, prog_bar=True, batch_size=len(labels))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("test/zero_shot_acc", (self._predict(images) == labels).float().mean(), batch_size=len(labels))

    def configure_optimizers(self) -> Any:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError("the cosine schedule needs a step budget: set --trainer.max_steps")
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": self.weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.98), eps=1e-6)
        warmup = self.warmup_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, max_steps - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self) -> None:
        if self.export_dir is None or not self.trainer.is_global_zero:
            return
        minutes = (time.perf_counter() - self._fit_start) / 60.0
        accuracy, n_test = self._full_test_accuracy()
        path = export_tiny_clip(self.model, self.export_dir, self._card_facts(minutes, accuracy, n_test))
        rank_zero_info(f"exported {path} (zero-shot Fashion-MNIST test accuracy {accuracy:.2%} on {n_test} images)")

    @torch.no_grad()
    def _full_test_accuracy(self) -> tuple[float, int]:
        datamodule = self._datamodule()
        if datamodule is None or not hasattr(datamodule, "test_dataloader"):
            return float("nan"), 0
        was_training = self.training
        self.eval()
        correct = total = 0
        for images, labels in datamodule.test_dataloader():
            correct += int((self._predict(images.to(self.device)).cpu() == labels).sum())
            total += len(labels)
        self.train(was_training)
        return correct / max(total, 1), total

    def _card_facts(self, minutes: float, accuracy: float, n_test: int) -> dict[str, Any]:
        datamodule = self._datamodule()
        exported = sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith(FROZEN_PREFIX))
        argv0 = Path(sys.argv[0]).name
        recipe = argv0 == "pretrain_tiny_clip.py" or sys.argv[0].endswith("recipes/pretrain_tiny_clip.py")
        accelerator = type(self.trainer.accelerator).__name__.removesuffix("Accelerator").lower()
        threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
        return {
            "model_config": self.model_config,
            "prompts": f"{self.template!r} with {self.classnames}",
            "train_images": len(datamodule.train_set) if getattr(datamodule, "train_set", None) else "?",
            "image_size": getattr(datamodule, "image_size", "?"),
            "steps": self.trainer.global_step,
            "batch_size": getattr(datamodule, "batch_size", "?"),
            "recipe": f"AdamW (betas 0.9/0.98, eps 1e-6), peak lr {self.lr}, "
            f"weight decay {self.weight_decay} on matrices, {self.warmup_steps} linear warm-up steps "
            f"then cosine to 0 at step {self.trainer.max_steps}",
            "precision": str(self.trainer.precision),
            "seed": os.environ.get("PL_GLOBAL_SEED", "not set"),
            "minutes": f"{minutes:.1f} min; {self.trainer.num_devices} × {accelerator}, "
            f"{torch.get_num_threads()} torch thread(s)",
            "command": f"{threads}{shlex.join(['python', '-m', 'recipes.pretrain_tiny_clip', *sys.argv[1:]])}"
            if recipe else None,
            "accuracy": accuracy,
            "n_test": n_test,
            "exported_params": exported,
            "total_params": sum(p.numel() for p in self.model.parameters()),
        }


def main(argv: list[str] | None = None) -> None:
    """``python -m recipes.pretrain_tiny_clip [LightningCLI options]``: fit with ``pretrain_tiny_clip.yaml``."""
    from lightning.pytorch.cli import LightningCLI

    config = Path(__file__).resolve().with_suffix(".yaml")
    args = ["fit", "--config", str(config), *(sys.argv[1:] if argv is None else argv)]
    LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args)


if __name__ == "__main__":
    main()
