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


def gather_keeping_local_grad(local: torch.Tensor) -> torch.Tensor:
    """All workers' rows concatenated in rank order; only this worker's rows carry gradient.

    The other workers' rows arrive without gradient; each worker then computes the loss of the
    WHOLE global batch (see ``distributed_hard_negative_infonce``), which gives every worker the
    exact gradient for its own rows, with plain ``all_gather`` on any backend (gloo included).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts, dim=0)


def distributed_hard_negative_infonce(queries: torch.Tensor, positives: torch.Tensor,
                                      negatives: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """The loss of the global batch: every query against the candidates of ALL workers.

    Shapes (b, H) per worker, equal b on all workers. Every worker returns the same value, the
    loss one worker would compute on the concatenated W x b batch. Its gradient with respect to
    this worker's rows is exact; data-parallel training averages gradients over W workers, so
    backpropagate ``loss * world_size`` to get the single-worker gradient of the W x b batch.
    """
    return hard_negative_infonce(gather_keeping_local_grad(queries),
                                 gather_keeping_local_grad(positives),
                                 gather_keeping_local_grad(negatives), scale)
