"""Pooling token states into one embedding per text, over the text tokens only."""

from __future__ import annotations

from typing import Literal

import torch

PoolingMode = Literal["weighted_mean", "mean", "last_token"]
POOLING_MODES = ("weighted_mean", "mean", "last_token")


def pool(hidden: torch.Tensor, pool_mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """(B, S, H) states and a (B, S) bool mask of text tokens -> (B, H) float32 embeddings.

    weighted_mean (the paper's default): the i-th text token gets weight i, normalised, so later
    tokens, which have attended to more of the text in a causal model, count more.
    mean: plain average. last_token: the state of the last text token.
    Masked positions are zeroed with ``where`` rather than multiplied, so a NaN in a padding
    position (fully masked attention rows) cannot leak into the result.
    """
    mask = pool_mask.to(torch.bool)
    if mode == "last_token":
        # Index of the last True per row (left padding: text may be followed by template tokens).
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, -1).max(dim=1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    if mode == "weighted_mean":
        weights = mask.cumsum(dim=1) * mask
    elif mode == "mean":
        weights = mask.long()
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; choose from {POOLING_MODES}")
    weights = weights.to(torch.float32).unsqueeze(-1)
    summed = torch.where(mask.unsqueeze(-1), hidden.float() * weights, 0.0).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1.0)
