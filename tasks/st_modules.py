"""sentence-transformers modules copied into every layercut embedding artifact.

Two differences from sentence-transformers' own modules would change the embeddings:

- Where the text starts. sentence-transformers counts a prompt's tokens by tokenizing the prompt
  alone. A prompt ending in a space ("<instruction>; ") then counts one token too many whenever
  the tokenizer merges that space into the text's first word (" word" is one token), and a
  prompt ending in a special token counts one too few (the count drops a trailing special
  token, meant for an EOS). ``TextSpanTransformer`` counts, per input, the tokens before the
  first one that reaches into the text, from the tokenizer's character offsets: layercut's own
  rule (``tasks.prompts``).
- How tokens are weighted. The built-in ``weightedmean`` weights a token by its position from
  the start of the input, prompt included; layercut (and LLM2Vec, whose pooling the paper uses)
  weights the i-th token OF THE TEXT by i. ``TextTokenPooling`` pools the text tokens only.

Three more of layercut's input rules are applied here as well: texts are stripped of surrounding
whitespace; an empty text is pooled from the last prompt token (``tasks.prompts``); and the
artifact's ``max_seq_length`` is layercut's ``max_length`` less the closing template tokens
layercut adds after the text (and sentence-transformers does not), so a long text keeps the same
tokens in both.

So a layercut artifact gives the same embeddings in sentence-transformers as in layercut, for
documents and for queries with an instruction. The file is self-contained (torch and
sentence-transformers only) and is loaded from the model directory, which sentence-transformers
allows with ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.module import Module
from sentence_transformers.base.modules.transformer import Transformer


class TextSpanTransformer(Transformer):
    """sentence-transformers' Transformer; ``prompt_length`` is counted per input, exactly."""

    def preprocess(self, inputs, prompt: str | None = None, processing_kwargs=None, **kwargs) -> dict[str, Any]:
        # Stripped, as layercut renders texts: a whitespace-only text is an empty one.
        inputs = [text.strip() if isinstance(text, str) else text for text in inputs]
        features = super().preprocess(inputs, prompt=prompt, processing_kwargs=processing_kwargs, **kwargs)
        if prompt and "prompt_length" in features and all(isinstance(text, str) for text in inputs):
            features["prompt_length"] = self._prompt_tokens(list(inputs), prompt)
        return features

    def _prompt_tokens(self, texts: list[str], prompt: str) -> torch.Tensor:
        """Per input: the tokens before the first token that reaches past the prompt's characters
        (a token spanning the prompt's last space and the text's first word is a text token)."""
        add_special_tokens = self.processing_kwargs.get("text", {}).get("add_special_tokens", True)
        encoded = self.tokenizer([prompt + text for text in texts], add_special_tokens=add_special_tokens,
                                 return_offsets_mapping=True)
        counts = [next((i for i, (start, end) in enumerate(offsets) if end > len(prompt) and end > start),
                       len(offsets))
                  for offsets in encoded["offset_mapping"]]
        return torch.tensor(counts, dtype=torch.long)


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
        # An int, or a tensor: one count per input (TextSpanTransformer) or one for all.
        prompt = features.get("prompt_length")
        prompt = torch.as_tensor(0 if prompt is None else prompt, device=attention.device).reshape(-1, 1)
        # Count real tokens from the left, so left and right padding both work.
        real_index = attention.long().cumsum(dim=1)
        text = attention & (real_index > prompt)
        # An empty text: the last real token (the prompt's last) stands for it, as in layercut.
        last_real = attention & (real_index == attention.long().sum(dim=1, keepdim=True))
        text = torch.where(text.any(dim=1, keepdim=True), text, last_real)
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
