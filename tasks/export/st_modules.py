"""The one piece of custom sentence-transformers code a layercut artifact may carry: text-span
pooling for ``mean`` and ``weighted_mean``. ``last_token`` artifacts carry none.

Every artifact renders its inputs with sentence-transformers' own ``Transformer`` in its chat
("message") mode: the artifact's ``sentence_bert_config.json`` holds an embedding template (the
model's chat-template prefix, the query instruction from the prompt and the separator, the
stripped text, and the closing template when it is pooled), and sentence-transformers' own
truncation keeps that closing template at the end of a long text. So the model sees exactly
layercut's tokens, and ``Pooling("lasttoken")`` already pools what layercut pools.

What sentence-transformers 6.2 cannot express is which tokens are the text:

- In chat mode it records no prompt length at all (``Pooling(include_prompt=False)`` then
  pools the chat prefix and the instruction too). In plain-text mode it counts a prompt's tokens
  by tokenizing the prompt alone, once per batch: a prompt that ends in the separator's space
  ("<instruction>; ") counts one token too many whenever the tokenizer merges that space into
  the text's first word (" guitar"), and a chat prefix ending in "\\n\\n" one too few where the
  newlines merge alone but not before a word. The same prompt has a different true length per
  text, and ``Pooling`` takes one length for the whole batch.
- Its ``weightedmean`` weights a token by its position from the start of the input, prompt
  included, even with ``include_prompt=False``; layercut (and LLM2Vec, whose pooling the paper
  uses) weights the i-th pooled token by i. ``sum((P + i) h_i) / sum(P + i)`` is not
  ``sum(i h_i) / sum(i)`` for any fixed module after it: the mix depends on each text's length.
- An empty text pools nothing there (a zero vector); layercut pools the last prompt token.

``TextSpanTransformer`` is sentence-transformers' ``Transformer`` with one more output: the
pooled-span mask, found from the tokenizer's character offsets (layercut's rule,
``tasks.model.prompts``); ``TextSpanPooling`` pools that span. The file is self-contained (torch and
sentence-transformers only) and is loaded from the model directory, which sentence-transformers
allows with ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.module import Module
from sentence_transformers.base.modules.transformer import Transformer

_SLOT = "\uE000LAYERCUT-TEXT\uE001"


class TextSpanTransformer(Transformer):
    """sentence-transformers' Transformer; its inputs also carry ``span_mask``, the pooled tokens
    (the text, and the closing template when the embedding template renders one).

    Texts are rendered by the artifact's embedding template (``processing_kwargs["chat_template"]``)
    exactly as sentence-transformers' chat mode renders them; a text longer than
    ``max_seq_length`` loses tokens from its end, never the template around it.
    """

    def preprocess(self, inputs, prompt: str | None = None, processing_kwargs=None, **kwargs) -> dict[str, Any]:
        if not all(isinstance(text, str) for text in inputs):
            raise ValueError("this layercut model embeds texts (str) only")
        head, tail = self._wrapper(prompt)
        rendered = [head + text.strip() + tail for text in inputs]
        encoded = self.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        rows = [self._row(ids, offsets, len(head), len(head) + len(text.strip()))
                for ids, offsets, text in zip(encoded["input_ids"], encoded["offset_mapping"], inputs)]
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        span_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (ids, span) in enumerate(rows):  # right padding: positions start at 0 in every row
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention_mask[row, :len(ids)] = 1
            span_mask[row, :len(ids)] = torch.tensor(span)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "span_mask": span_mask,
                "modality": "text"}

    def _wrapper(self, prompt: str | None) -> tuple[str, str]:
        """(what comes before the text, what comes after it), from the embedding template."""
        messages = ([{"role": "system", "content": prompt}] if prompt else []) + [{"role": "user", "content": _SLOT}]
        template = self.processing_kwargs["chat_template"]["chat_template"]
        full = self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        head, tail = full.split(_SLOT)
        return head, tail

    def _row(self, ids: list[int], offsets, start: int, end: int) -> tuple[list[int], list[bool]]:
        # Text tokens overlap the text's characters; the closing template follows the text.
        text = [s < end and e > start and e > s for s, e in offsets]
        excess = len(ids) - self.max_seq_length
        if excess > 0:
            positions = [i for i, is_text in enumerate(text) if is_text]
            if excess >= len(positions):
                raise ValueError(f"max_seq_length {self.max_seq_length} leaves no room for text")
            drop = set(positions[-excess:])
            keep = [i for i in range(len(ids)) if i not in drop]
            ids, offsets = [ids[i] for i in keep], [offsets[i] for i in keep]
        span = [e > start and e > s for s, e in offsets]  # the text and everything after it
        if not any(span):  # an empty text: the last prompt token stands for it (tasks.model.prompts)
            prompt_tokens = next((i for i, (s, e) in enumerate(offsets) if e > start and e > s), len(offsets))
            if prompt_tokens == 0:
                raise ValueError("an empty text with no prompt token cannot be embedded")
            span = [i == prompt_tokens - 1 for i in range(len(offsets))]
        return ids, span

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        span = features.pop("span_mask")
        features = super().forward(features, **kwargs)
        features["span_mask"] = span
        return features


class TextSpanPooling(Module):
    """Pools the span ``TextSpanTransformer`` marks: ``weighted_mean`` (span token i gets weight
    i, normalised) or ``mean``."""

    config_keys = ["embedding_dimension", "pooling_mode"]
    config_file_name = "config.json"

    def __init__(self, embedding_dimension: int, pooling_mode: str = "weighted_mean") -> None:
        super().__init__()
        if pooling_mode not in ("weighted_mean", "mean"):
            raise ValueError(f"unknown pooling mode {pooling_mode!r}")
        self.embedding_dimension = embedding_dimension
        self.pooling_mode = pooling_mode

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        hidden = features["token_embeddings"]
        span = features["span_mask"].to(hidden.device)
        weights = span.long().cumsum(dim=1) * span if self.pooling_mode == "weighted_mean" else span.long()
        weights = weights.to(torch.float32).unsqueeze(-1)
        summed = torch.where(span.unsqueeze(-1), hidden.float() * weights, 0.0).sum(dim=1)
        features["sentence_embedding"] = summed / weights.sum(dim=1).clamp(min=1.0)
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
