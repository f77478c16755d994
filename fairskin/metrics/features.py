"""The classifier as a feature extractor: the forward pass that FID, KID, IS and memorisation see.

Shared by :mod:`fairskin.metrics.extractors` (through torch-fidelity) and ``benchmarks/gpu.py``; it
imports only torch (no pandas, torch-fidelity, ray, mlflow or pydantic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier_forward(model, x: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> (pre_logits (N, hidden), logits (N, num_labels)), float32 on the input's device.

    The input is converted as in training (``fairskin.classify.train._to_input``): float in
    [-1, 1], bilinear antialiased resize to ``image_size``. The model runs in eval mode and
    its train/eval state is restored afterwards.
    """
    param = next(model.parameters())
    x = x.to(param.device).float().div_(127.5).sub_(1.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cls = model.vit(pixel_values=x.to(param.dtype)).last_hidden_state[:, 0]
            logits = model.classifier(cls)
    finally:
        model.train(was_training)
    return cls.float(), logits.float()
