"""Hard-negative InfoNCE, the contrastive loss of the paper's training and of L3Prune's scan.

False negatives: a batch may hold the same query twice (two correct answers) or the same positive
for two queries. Scored plainly, another correct answer of a query counts as one of its
negatives. ``false_negative_mask`` finds such candidates by text identity (hashes of the texts,
``text_ids``, which can be gathered from every worker like the embeddings); the loss then leaves
them out of the softmax, as sentence-transformers' GISTEmbed-style false-negative masking does.
The paper's recipe has no mask (``loss.mask_duplicate_positives: false``).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_SCALE = 50.0  # the official training script's scale (temperature 0.02)


def text_ids(texts: Sequence[str], instructions: Sequence[str | None] | None = None) -> torch.Tensor:
    """(N,) int64 identities of texts (as the model sees them: stripped), for duplicate masking.

    Equal texts (with equal instructions) get equal ids; the 64-bit hash makes a collision of
    two different texts negligible. Stable across processes (unlike Python's ``hash``).
    """
    if instructions is None:
        instructions = [None] * len(texts)
    ids = [int.from_bytes(hashlib.blake2b(f"{(i or '').strip()}\0{t.strip()}".encode(),
                                          digest_size=8).digest(), "big", signed=True)
           for t, i in zip(texts, instructions)]
    return torch.tensor(ids, dtype=torch.int64)


def false_negative_mask(query_ids: torch.Tensor, positive_ids: torch.Tensor,
                        negative_ids: torch.Tensor) -> torch.Tensor:
    """(B, 2B) bool, True where candidate j of [positives; negatives] is a false negative of
    query i: a text equal to query i's own positive, or the positive of another row with the
    same query (another correct answer). The target (i, i) is never masked.

    Shapes (B,) int64 from ``text_ids`` (queries with their instruction).
    """
    batch = query_ids.shape[0]
    candidates = torch.cat([positive_ids, negative_ids])  # (2B,)
    mask = candidates.unsqueeze(0) == positive_ids.unsqueeze(1)
    mask[:, :batch] |= query_ids.unsqueeze(0) == query_ids.unsqueeze(1)
    mask[torch.arange(batch), torch.arange(batch)] = False
    return mask


def hard_negative_infonce(queries: torch.Tensor, positives: torch.Tensor,
                          negatives: torch.Tensor, scale: float = DEFAULT_SCALE,
                          exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE loss; any leading dims (e.g. one per layer) are kept.

    Shapes (..., B, H). Query i is scored (cosine x scale) against all 2B candidates of the batch,
    [positives; negatives]; its own positive (index i) is the target. ``exclude`` (B, 2B) bool
    (``false_negative_mask``) leaves candidates out of query i's softmax; it must not exclude
    the target. Returns a tensor of shape (...,): one mean loss per leading index.
    """
    candidates = torch.cat([positives, negatives], dim=-2)  # (..., 2B, H)
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).transpose(-1, -2)
    scores = scores * scale  # (..., B, 2B)
    if exclude is not None:
        scores = scores.masked_fill(exclude.to(scores.device), float("-inf"))
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


def global_false_negative_mask(query_ids: torch.Tensor, positive_ids: torch.Tensor,
                               negative_ids: torch.Tensor) -> torch.Tensor:
    """``false_negative_mask`` of the global batch: this worker's (b,) ids gathered from every
    worker in rank order, as ``gather_keeping_local_grad`` gathers the embeddings. (W b, 2 W b)."""
    return false_negative_mask(*(gather_keeping_local_grad(ids) for ids in
                                 (query_ids, positive_ids, negative_ids)))


def distributed_hard_negative_infonce(queries: torch.Tensor, positives: torch.Tensor,
                                      negatives: torch.Tensor, scale: float = DEFAULT_SCALE,
                                      exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of the global batch: every query against the candidates of ALL workers.

    Shapes (b, H) per worker, equal b on all workers; ``exclude`` is the GLOBAL batch's mask
    (``global_false_negative_mask``), or None. Every worker returns the same value, the
    loss one worker would compute on the concatenated W x b batch. Its gradient with respect to
    this worker's rows is exact; data-parallel training averages gradients over W workers, so
    backpropagate ``loss * world_size`` to get the single-worker gradient of the W x b batch.
    """
    return hard_negative_infonce(gather_keeping_local_grad(queries),
                                 gather_keeping_local_grad(positives),
                                 gather_keeping_local_grad(negatives), scale, exclude)
