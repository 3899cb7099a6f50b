"""The CLIP continual-learning loss (docs/design.md §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_class_loss(image_features: Tensor, text_features: Tensor, labels: Tensor, logit_scale: Tensor) -> Tensor:
    """Image→text plus text→image cross-entropy over the current task's class prompts.

    With L2-normalised features, ``logits = logit_scale · img · textᵀ`` ``(B, C)``:

    * image→text: cross-entropy of each image's row against its class;
    * text→image: for each class ``c``, cross-entropy of column ``c`` against the uniform
      distribution over the batch images of class ``c`` (soft multi-hot), averaged over all ``C``
      classes; a class absent from the batch has an all-zero target and contributes 0.

    Features are L2-normalised here (a no-op up to rounding for normalised inputs).

    Args:
        image_features: ``(B, D)`` image embeddings.
        text_features: ``(C, D)`` class-prompt embeddings.
        labels: ``(B,)`` class index of each image in ``0..C-1``.
        logit_scale: the model's temperature (already exponentiated).

    Returns:
        The scalar loss, image→text + text→image.
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale * image_features @ text_features.T  # (B, C)
    image_to_text = F.cross_entropy(logits, labels)
    targets = F.one_hot(labels, num_classes=text_features.shape[0]).to(logits.dtype).T  # (C, B)
    targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=1.0)  # rows sum to 1, or all zero
    text_to_image = -(targets * torch.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return image_to_text + text_to_image
