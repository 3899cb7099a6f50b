"""Tasks from image folders: one domain per task, in torchvision's ``ImageFolder`` layout.

::

    root/<domain>/train/<class name>/<image>.{jpg,jpeg,png,bmp,webp}
    root/<domain>/test/<class name>/<image>...

Class names are the folder names with ``_`` read as spaces. Every image is decoded once when
the tasks are built (``check_images``), so an unreadable or truncated file stops the run before
training, named, instead of crashing it hours later. Images are loaded on access and
preprocessed like CLIP: resize the short side to ``image_size`` (bicubic), centre crop, normalise.
This is the generic reader for users' own domains; the paper's benchmark datasets in their
distributed layouts have their own readers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from moram.data.tasks import Task
from moram.data.transforms import CLIP_MEAN, CLIP_STD
from moram.errors import ConfigError, DataError, DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DATA_ROOT_ENV = "MORAM_DATA"


def resolve_root(root: str | None) -> Path:
    """``root``, or the ``MORAM_DATA`` environment variable when it is None."""
    value = root if root is not None else os.environ.get(DATA_ROOT_ENV)
    if not value:
        raise ConfigError(
            f"no data root: set data.source.root in the config or the {DATA_ROOT_ENV} environment variable"
        )
    return Path(value).expanduser()


class ImageFileDataset(Dataset):
    """Image files with labels, read with PIL and preprocessed like CLIP; ``labels`` is a LongTensor."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int) -> None:
        from torchvision import transforms as T

        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.transform = T.Compose([
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.files[index]) as image:
                tensor = self.transform(image.convert("RGB"))
        except OSError as err:
            raise OSError(f"cannot read image '{self.files[index]}': {err}") from err
        return tensor, int(self.labels[index])


def check_image_files(files: list[Path]) -> None:
    """Decode every file in full; raise ``ValueError`` naming the unreadable or truncated ones."""
    from PIL import Image

    bad: list[str] = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()  # a full decode: verify() misses truncated JPEGs
        except (OSError, SyntaxError, ValueError) as err:
            bad.append(f"'{path}' ({err})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(
            f"{len(bad)} unreadable or truncated image(s): {'; '.join(bad[:3])}{more}; replace or delete "
            "them (or set data.source.check_images: false to skip this check)"
        )


def _scan_split(domain_dir: Path, split: str, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
    split_dir = domain_dir / split
    if not split_dir.is_dir():
        raise DataNotFoundError(
            f"missing folder '{split_dir}': expected the layout <root>/<domain>/{{train,test}}/<class>/<images>"
        )
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = folders if classes is None else classes
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        found = sorted(p for p in class_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found and split == "train":
            empty.append(str(class_dir))
        files += found
        labels += [label] * len(found)
    if empty:
        raise DataError(
            f"class folder(s) with no images ({', '.join(sorted(IMAGE_SUFFIXES))}): {', '.join(empty)}; a class "
            "needs training images: add some, or remove the folder"
        )
    return classes, files, labels


class FolderTasks:
    """One task per domain folder under ``root`` (see the module docstring for the layout).

    Args:
        domains: domain folder names, in task order.
        root: the data root; None reads the ``MORAM_DATA`` environment variable.
        templates: prompt template per domain (``{}`` is the class name); others use ``default_template``.
        default_template: the template of domains not in ``templates``.
        image_size: side of the square images fed to the image tower; it must be the tower's own
            size (32 for the shipped ``moram-tiny-minilm``, 224 for ViT-B/16): a mismatch is refused
            before training, naming both.
        check_images: decode every image once when the tasks are built and refuse unreadable or
            truncated files, naming them (one pass over the data).
    """

    def __init__(
        self,
        domains: list[str],
        root: str | None = None,
        templates: dict[str, str] | None = None,
        default_template: str = "a photo of a {}.",
        image_size: int = 224,
        check_images: bool = True,
    ) -> None:
        if not domains:
            raise ConfigError("data.source.domains is empty; list the domain folders in task order")
        self.domains = list(domains)
        self.root = root
        self.templates = dict(templates or {})
        self.default_template = default_template
        self.image_size = image_size
        self.check_images = check_images

    @property
    def num_tasks(self) -> int:
        return len(self.domains)

    def build(self) -> list[Task]:
        root = resolve_root(self.root)
        if not root.is_dir():
            raise DataNotFoundError(
                f"data.source.root '{root}' is not a folder; point it (or MORAM_DATA) at the folder holding "
                "<domain>/{train,test}/<class>/<images>"
            )
        tasks: list[Task] = []
        files: list[Path] = []
        for domain in self.domains:
            domain_dir = root / domain
            if not domain_dir.is_dir():
                raise DataNotFoundError(
                    f"domain '{domain}' not found: no folder '{domain_dir}' (data root '{root}'); expected "
                    "<root>/<domain>/{train,test}/<class>/<images>"
                )
            classes, train_files, train_labels = _scan_split(domain_dir, "train", None)
            _, test_files, test_labels = _scan_split(domain_dir, "test", classes)
            files += train_files + test_files
            task = Task(
                name=domain,
                classnames=[c.replace("_", " ") for c in classes],
                template=self.templates.get(domain, self.default_template),
                train=ImageFileDataset(train_files, train_labels, self.image_size),
                test=ImageFileDataset(test_files, test_labels, self.image_size),
            )
            tasks.append(task.check())
        if self.check_images:
            check_image_files(files)  # every domain's files: all the bad ones named at once
        return tasks
