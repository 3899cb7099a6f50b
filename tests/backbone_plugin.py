"""A third kind of backbone, outside the package: the plugin contract of moram.backbones.base in ~30 lines.

A plain-torch image classifier (a frozen random MLP encoder; a head of fixed per-class prototypes),
continual through the same ContinualModule, callbacks and CLI as CLIP and LMs:
``--model.backbone backbone_plugin.PrototypeClassifier``.
"""

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from moram.backbones.base import Backbone, EvalScores, StepLoss


class PrototypeClassifier(Backbone):
    def __init__(self, image_size: int = 8, width: int = 32, seed: int = 0) -> None:
        self.image_size, self.width, self.seed = image_size, width, seed

    def build_options(self):
        return {"image_size": self.image_size, "width": self.width, "seed": self.seed}

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * self.image_size**2, self.width), nn.GELU(),
                              nn.Linear(self.width, self.width))
        return model.requires_grad_(False)

    def default_targets(self, model):
        return ["1", "3"]  # both linears

    def prototypes(self, host, task):  # a fixed unit vector per class name
        names = task.spec.classnames  # the hooks receive the task they work on (moram.backbones.base.TaskInfo)
        seeds = [torch.Generator().manual_seed(zlib.crc32(n.encode())) for n in names]
        rows = [torch.randn(self.width, generator=g) for g in seeds]
        return F.normalize(torch.stack(rows), dim=-1).to(host.device)

    def logits(self, host, images, task):
        return 10.0 * F.normalize(host.model(images), dim=-1) @ self.prototypes(host, task).T

    def training_loss(self, host, batch, task):
        images, labels = batch
        loss = F.cross_entropy(self.logits(host, images, task), labels)
        return StepLoss(loss, loss, len(labels))

    def eval_scores(self, host, batch, task, keep_records):
        images, labels = batch
        return EvalScores({"": 100.0 * (self.logits(host, images, task).argmax(1) == labels).double()})

    def predict(self, host, batch, task):
        return self.logits(host, batch[0], task).argmax(1)
