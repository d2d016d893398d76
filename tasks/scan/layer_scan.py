"""The per-layer initial loss: for each depth l, the contrastive loss of the model pruned to l.

One forward pass per batch gives every depth's embeddings (``Encoder.encode(all_layers=True)``);
the loss is then computed for all depths at once. Queries carry their task instruction,
documents none, as in the paper's training data. Duplicate positives are masked out of the
negatives as in stage 2 (``tasks.training.loss.false_negative_mask``) unless switched off.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from tasks.model.encoder import Encoder
from tasks.training.loss import false_negative_mask, hard_negative_infonce, text_ids


def _texts(batch: dict[str, list]) -> tuple[int, list[str], list[str | None]]:
    size = len(batch["query"])
    texts = [*batch["query"], *batch["positive"], *batch["negative"]]
    instructions = [*(batch.get("instruction") or [None] * size), *([None] * (2 * size))]
    return size, texts, instructions


def duplicate_mask(batch: dict[str, list]) -> np.ndarray:
    """(B, 2B) bool: the batch's false negatives (``tasks.training.loss.false_negative_mask``)."""
    size, texts, instructions = _texts(batch)
    return false_negative_mask(*text_ids(texts, instructions).split(size)).numpy()


def batch_layer_losses(encoder: Encoder, batch: dict[str, list], scale: float,
                       mask_duplicates: bool = True) -> np.ndarray:
    """(L,) float64: the mean loss of this batch at each depth l = 1..L."""
    size, texts, instructions = _texts(batch)
    embeddings = encoder.encode(texts, instructions, all_layers=True)  # (L, 3B, H)
    queries, positives, negatives = embeddings.split(size, dim=1)
    exclude = torch.from_numpy(duplicate_mask(batch)) if mask_duplicates else None
    losses = hard_negative_infonce(queries, positives, negatives, scale, exclude)
    return losses.double().cpu().numpy()


def scan_batches(encoder: Encoder, batches: Iterable[tuple[int, dict[str, list]]], scale: float,
                 mask_duplicates: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (batch index, per-layer losses) for each (index, batch) in order."""
    for index, batch in batches:
        yield index, batch_layer_losses(encoder, batch, scale, mask_duplicates)


def combine(per_batch: dict[int, np.ndarray]) -> np.ndarray:
    """Per-layer mean over batches, summed in batch-index order so any split gives one result."""
    stacked = np.stack([per_batch[index] for index in sorted(per_batch)])
    return stacked.mean(axis=0)
