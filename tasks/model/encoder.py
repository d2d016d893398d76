"""An LLM backbone used as a text encoder: format, run, pool; optionally every layer at once.

``encode_layers`` obtains, in ONE forward pass, the embedding each depth l = 1..L would output if
the model were pruned to l layers: the final norm applied to decoder layer l's output, pooled.
Pooling happens inside a forward hook as each layer finishes, so only L pooled (B, H) tensors are
kept, never L full (B, S, H) hidden-state tensors.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from tasks.model.pooling import PoolingMode, pool
from tasks.model.prompts import PromptFormatter
from tasks.model.pruning import decoder_layers, final_norm


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token, so left padding changes nothing."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class Encoder:
    def __init__(self, model: nn.Module, formatter: PromptFormatter,
                 pooling: PoolingMode = "weighted_mean", batch_size: int = 32):
        self.model = model
        self.formatter = formatter
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.model))

    def _run(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        attention_mask = features["attention_mask"].to(self.device)
        return self.model(
            input_ids=features["input_ids"].to(self.device),
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            use_cache=False,
        ).last_hidden_state

    def embed_features(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) embeddings of already formatted inputs at the model's own depth."""
        hidden = self._run(features)
        return pool(hidden, features["pool_mask"].to(self.device), self.pooling)

    @contextmanager
    def _pool_every_layer(self, pool_mask: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        norm = final_norm(self.model)
        pooled: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            pooled.append(pool(norm(hidden), pool_mask, self.pooling))

        handles = [layer.register_forward_hook(hook) for layer in decoder_layers(self.model)]
        try:
            yield pooled
        finally:
            for handle in handles:
                handle.remove()

    def embed_features_all_layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(L, B, H): for each l, what the model pruned to l layers would output, in one pass."""
        with self._pool_every_layer(features["pool_mask"].to(self.device)) as pooled:
            self._run(features)
        return torch.stack(pooled)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], instructions: Sequence[str | None] | None = None,
               *, all_layers: bool = False, on_batch: Callable[[], None] | None = None) -> torch.Tensor:
        """Embeddings of ``texts`` in input order: (N, H), or (L, N, H) with ``all_layers``.

        Texts are run in chunks of ``batch_size`` sorted by length (less padding); since position
        ids ignore padding, the grouping does not change any embedding beyond float noise.
        ``on_batch`` is called after each chunk (a progress bar's tick).
        """
        if instructions is None:
            instructions = [None] * len(texts)
        rendered_lengths = [len(self.formatter.render(t, i)[0]) for t, i in zip(texts, instructions)]
        order = sorted(range(len(texts)), key=lambda k: -rendered_lengths[k])
        chunks = []
        for begin in range(0, len(order), self.batch_size):
            idx = order[begin:begin + self.batch_size]
            features = self.formatter([texts[k] for k in idx], [instructions[k] for k in idx])
            run = self.embed_features_all_layers if all_layers else self.embed_features
            chunks.append(run(features))
            if on_batch is not None:
                on_batch()
        stacked = torch.cat(chunks, dim=-2)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return stacked[..., inverse.to(stacked.device), :]


def build_encoder(spec, prompt, pooling: PoolingMode = "weighted_mean", batch_size: int = 32) -> Encoder:
    """Load ``spec`` (a ``tasks.model.models.ModelSpec``) and wrap it with a ``PromptConfig``."""
    model, tokenizer = spec.load()
    return Encoder(model, PromptFormatter(tokenizer, prompt), pooling=pooling, batch_size=batch_size)
