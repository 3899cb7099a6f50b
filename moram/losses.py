"""The CLIP continual-learning loss (DESIGN.md §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_class_loss(image_features: Tensor, text_features: Tensor, labels: Tensor, logit_scale: Tensor) -> Tensor:
    """Image→text plus text→image cross-entropy over the current task's class prompts.

    With L2-normalised features, ``logits = logit_scale · img · textᵀ`` ``(B, C)``:

    * image→text: cross-entropy of each image's row against its class;
    * text→image: for each class ``c`` present in the batch, cross-entropy of column ``c`` against
      the uniform distribution over the batch images of class ``c`` (soft multi-hot), averaged over
      the classes present; classes absent from the batch contribute nothing.

    Args:
        image_features: ``(B, D)`` L2-normalised image embeddings.
        text_features: ``(C, D)`` L2-normalised class-prompt embeddings.
        labels: ``(B,)`` class index of each image in ``0..C-1``.
        logit_scale: the model's temperature (already exponentiated).

    Returns:
        The scalar loss, image→text + text→image.
    """
    logits = logit_scale * image_features @ text_features.T  # (B, C)
    image_to_text = F.cross_entropy(logits, labels)
    onehot = F.one_hot(labels, num_classes=text_features.shape[0]).to(logits.dtype).T  # (C, B)
    counts = onehot.sum(dim=1)  # (C,)
    present = counts > 0
    targets = onehot[present] / counts[present, None]  # (C_present, B), rows sum to 1
    log_probs = torch.log_softmax(logits.T[present], dim=1)  # (C_present, B)
    text_to_image = -(targets * log_probs).sum(dim=1).mean()
    return image_to_text + text_to_image
