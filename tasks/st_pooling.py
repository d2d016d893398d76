"""Text-token pooling for sentence-transformers, copied into every layercut artifact.

sentence-transformers' built-in ``weightedmean`` weights a token by its position from the start
of the input, prompt included; layercut (and LLM2Vec, whose pooling the paper uses) weights the
i-th token OF THE TEXT by i. This module pools exactly as layercut does, so a layercut artifact
gives the same embeddings in sentence-transformers as in layercut. It is self-contained (torch
and sentence-transformers only) and is loaded from the model directory, which sentence-transformers
allows with ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.module import Module


class TextTokenPooling(Module):
    """Pools the text tokens only: the prompt (chat-template prefix and instruction) is skipped.

    Modes: ``weighted_mean`` (text token i gets weight i), ``mean``, ``last_token``.
    """

    config_keys = ["embedding_dimension", "pooling_mode"]
    config_file_name = "config.json"

    def __init__(self, embedding_dimension: int, pooling_mode: str = "weighted_mean") -> None:
        super().__init__()
        if pooling_mode not in ("weighted_mean", "mean", "last_token"):
            raise ValueError(f"unknown pooling mode {pooling_mode!r}")
        self.embedding_dimension = embedding_dimension
        self.pooling_mode = pooling_mode

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        hidden = features["token_embeddings"]
        attention = features["attention_mask"].to(torch.bool)
        prompt = features.get("prompt_length", 0)
        prompt = int(prompt.reshape(-1)[0].item()) if isinstance(prompt, torch.Tensor) else int(prompt or 0)
        # Count real tokens from the left, so left and right padding both work.
        real_index = attention.long().cumsum(dim=1)
        text = attention & (real_index > prompt)
        if self.pooling_mode == "last_token":
            positions = torch.arange(text.shape[1], device=text.device).expand_as(text)
            last = torch.where(text, positions, -1).max(dim=1).values.clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        else:
            weights = (text.long().cumsum(dim=1) * text) if self.pooling_mode == "weighted_mean" else text.long()
            weights = weights.to(torch.float32).unsqueeze(-1)
            summed = torch.where(text.unsqueeze(-1), hidden.float() * weights, 0.0).sum(dim=1)
            pooled = summed / weights.sum(dim=1).clamp(min=1.0)
        features["sentence_embedding"] = pooled
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
