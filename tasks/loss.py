"""Hard-negative InfoNCE, the contrastive loss of the paper's training and of L3Prune's scan."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_SCALE = 50.0  # the official training script's scale (temperature 0.02)


def hard_negative_infonce(queries: torch.Tensor, positives: torch.Tensor,
                          negatives: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """Mean InfoNCE loss; any leading dims (e.g. one per layer) are kept.

    Shapes (..., B, H). Query i is scored (cosine x scale) against all 2B candidates of the batch,
    [positives; negatives]; its own positive (index i) is the target.
    Returns a tensor of shape (...,): one mean loss per leading index.
    """
    candidates = torch.cat([positives, negatives], dim=-2)  # (..., 2B, H)
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).transpose(-1, -2)
    scores = scores * scale  # (..., B, 2B)
    batch = queries.shape[-2]
    targets = torch.arange(batch, device=queries.device)
    log_probs = scores.log_softmax(dim=-1)
    return -log_probs[..., targets, targets].mean(dim=-1)
