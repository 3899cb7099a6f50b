"""Turn raw image arrays into the normalised (N, 3, S, S) float tensors a CLIP image tower expects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from moram.errors import ConfigError

TrainTransform = Literal["clip_train", "eval"]
"""How training images are preprocessed: open_clip's training preprocessing, or the evaluation transform."""

# OpenAI CLIP's preprocessing statistics (open_clip's OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _channels_first(x: Tensor) -> Tensor:
    """(N, H, W) | (N, H, W, C) | (N, C, H, W) with C in {1, 3} -> (N, C, H, W)."""
    if x.ndim == 3:
        return x.unsqueeze(1)  # (N, 1, H, W)
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[-1] in (1, 3):
            return x.permute(0, 3, 1, 2)  # (N, C, H, W)
    raise ConfigError(
        f"images must be (N, H, W) grayscale or (N, H, W, 3) / (N, 3, H, W) RGB; got shape {tuple(x.shape)}"
    )


def to_clip_images(
    images: Tensor | np.ndarray,
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    max_value: float | None = None,
) -> Tensor:
    """Scale to [0, 1], resize (bilinear, antialiased when shrinking), make RGB and normalise.

    Args:
        images: Grayscale (N, H, W) or RGB (N, H, W, 3) / (N, 3, H, W), integer or float.
        image_size: Side ``S`` of the square output.
        mean: Per-channel mean subtracted after scaling.
        std: Per-channel standard deviation divided by after scaling.
        max_value: The value that maps to 1.0 (16 for scikit-learn's digits); by default 255 for
            integer arrays and 1 for float arrays.

    Returns:
        Float tensor (N, 3, S, S).

    Example:
        >>> x = to_clip_images(np.full((2, 8, 8), 16, dtype=np.uint8), 4, max_value=16)
        >>> tuple(x.shape), round(float(x[0, 0, 0, 0]), 4)
        ((2, 3, 4, 4), 1.9303)
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if max_value is None:
        max_value = 1.0 if x.is_floating_point() else 255.0
    if image_size < 1:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    x = _channels_first(x.to(torch.float32) / float(max_value))
    if x.shape[-2:] != (image_size, image_size):
        shrink = x.shape[-2] > image_size or x.shape[-1] > image_size
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrink)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # (N, 3, S, S)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


class ClipImageTransform:
    """Per-item :func:`to_clip_images` for one image (picklable, for DataLoader workers)."""

    def __init__(self, image_size: int, max_value: float | None = None) -> None:
        self.image_size = image_size
        self.max_value = max_value

    def __call__(self, image: Tensor) -> Tensor:
        return to_clip_images(image.unsqueeze(0), self.image_size, max_value=self.max_value)[0]


class ClipTrainTransform:
    """open_clip's *training* preprocessing for one image: a random resized crop, RGB, normalise.

    ``open_clip.image_transform(image_size, is_train=True)`` with its default augmentation:
    ``RandomResizedCrop(image_size, scale=(0.9, 1.0), bicubic)``, then ``ToTensor`` and CLIP's
    normalisation -- the preprocessing the official X-TAIL trainer, MoE-Adapters4CL (MTIL) and
    open_clip's ``preprocess_train`` apply to training images. Takes a PIL image, or a raw image
    tensor ``(H, W)`` / ``(H, W, 3)`` / ``(3, H, W)`` as the in-memory datasets hold them.

    The crops draw from the transform's own generator (seeded by ``seed`` and the DataLoader worker),
    never from the global RNG, so atom dropout draws what it would without augmentation. A run resumed
    mid-task draws other crops than the uninterrupted run.

    Args:
        image_size: side of the square output.
        max_value: the value that maps to 1.0 in a raw tensor (default: 255 for integers, 1 for floats).
        seed: seed of the crops.

    Example:
        >>> t = ClipTrainTransform(8)
        >>> tuple(t(torch.zeros(12, 10, dtype=torch.uint8)).shape)
        (3, 8, 8)
    """

    def __init__(self, image_size: int, max_value: float | None = None, seed: int = 0) -> None:
        self.image_size, self.max_value, self.seed = image_size, max_value, seed
        self._pipeline: Any = None
        self._generator: torch.Generator | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "max_value": self.max_value, "seed": self.seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _to_pil(self, image: Tensor) -> Any:
        from PIL import Image

        x = image
        if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
            x = x.permute(1, 2, 0)  # (H, W, C)
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        scale = self.max_value if self.max_value is not None else (1.0 if x.is_floating_point() else 255.0)
        pixels = (x.to(torch.float32) / float(scale) * 255.0).round().clamp(0, 255).to(torch.uint8)
        return Image.fromarray(pixels.numpy())

    def __call__(self, image: Any) -> Tensor:
        if self._pipeline is None:
            import open_clip

            self._pipeline = open_clip.image_transform(self.image_size, is_train=True)
            info = torch.utils.data.get_worker_info()
            worker = 0 if info is None else info.id + 1
            self._generator = torch.Generator().manual_seed(self.seed * 1_000_003 + worker)
        if isinstance(image, Tensor):
            image = self._to_pil(image)
        seed = int(torch.randint(2**62, (1,), generator=self._generator))
        with torch.random.fork_rng(devices=[]):  # the global RNG state is restored on exit
            torch.manual_seed(seed)
            return self._pipeline(image)


def use_train_transform(dataset: Dataset, transform: Callable[[Any], Tensor]) -> None:
    """Preprocess the items of a training set with ``transform`` (an image file or in-memory dataset).

    The dataset must be a training set only (its ``transform`` attribute is replaced in place).
    """
    if not hasattr(dataset, "transform"):
        raise ConfigError(
            f"{type(dataset).__name__} has no transform to replace; use data.source.train_transform: eval"
        )
    dataset.transform = transform


class ImageTensorDataset(Dataset):
    """In-memory images with integer labels; ``labels`` is a public LongTensor.

    Args:
        images: Tensor whose first dimension indexes the samples.
        labels: One label per image.
        transform: Optional per-item function applied to ``images[i]`` (e.g. keep small raw images
            in memory and produce the CLIP tensor on access).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | Sequence[int],
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
