"""Stage 2's pluggable training objectives: what a batch of rows costs, for the training loop.

An objective says which row fields it reads, whether the model keeps its LM head, and, bound to
a tokenizer, turns (model, rows) into (loss, non-padding tokens). The loop (``tasks.training``)
does the rest the same way for every objective: DeepSpeed, checkpoints, resume, logging.

- ``ContrastiveObjective`` (L3Prune): hard-negative InfoNCE over the GLOBAL batch; every worker
  holds the same global loss (``loss_is_global``).
- ``ClassificationObjective`` ("Why Lift so Heavy?"): prompt-based fine-tuning; the cross-entropy
  of the verbalizer scores over this worker's rows; DeepSpeed's gradient averaging makes it the
  global batch's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tasks.encoder import position_ids_for
from tasks.loss import distributed_hard_negative_infonce
from tasks.pooling import pool
from tasks.prompts import PromptConfig, PromptFormatter
from tasks.verbalizer import ClassificationPrompt, VerbalizerScorer, classification_loss

StepLoss = Callable[[torch.nn.Module, dict, torch.device], tuple[torch.Tensor, int]]


def contrastive_loss(model, formatter: PromptFormatter, rows: dict[str, list], pooling: str,
                     scale: float, device: torch.device) -> tuple[torch.Tensor, int]:
    """(global-batch InfoNCE loss, this worker's non-padding tokens) for one step's rows.

    Queries carry their task instruction; positives and negatives (documents) none. All 3b
    texts run through the model in one forward pass.
    """
    b = len(rows["query"])
    texts = [*rows["query"], *rows["positive"], *rows["negative"]]
    instructions = [*rows.get("instruction", [None] * b), *[None] * (2 * b)]
    features = formatter(texts, instructions)
    attention_mask = features["attention_mask"].to(device)
    hidden = model(input_ids=features["input_ids"].to(device), attention_mask=attention_mask,
                   position_ids=position_ids_for(attention_mask), use_cache=False).last_hidden_state
    embeddings = pool(hidden, features["pool_mask"].to(device), pooling)
    queries, positives, negatives = embeddings.split(b)
    return distributed_hard_negative_infonce(queries, positives, negatives, scale), int(attention_mask.sum())


@dataclass(frozen=True)
class ContrastiveObjective:
    prompt: PromptConfig
    pooling: str
    scale: float

    name = "contrastive"
    fields = ("query", "positive", "negative", "instruction")
    lm_head = False
    loss_is_global = True

    def bind(self, tokenizer) -> StepLoss:
        formatter = PromptFormatter(tokenizer, self.prompt)

        def step_loss(model, rows, device):
            return contrastive_loss(model, formatter, rows, self.pooling, self.scale, device)
        return step_loss


def verbalizer_loss(model, scorer: VerbalizerScorer, rows: dict[str, list], mode: str,
                    device: torch.device) -> tuple[torch.Tensor, int]:
    """(mean classification loss over the rows, non-padding tokens) for one step's rows."""
    class_log_probs, tokens = scorer.score_with_tokens(model, list(rows["text"]), device)
    labels = torch.as_tensor([int(x) for x in rows["label"]], device=class_log_probs.device)
    return classification_loss(class_log_probs, labels, mode), tokens


@dataclass(frozen=True)
class ClassificationObjective:
    prompt: ClassificationPrompt
    loss: str = "classes"  # tasks.verbalizer.classification_loss

    name = "classification"
    fields = ("text", "label")
    lm_head = True
    loss_is_global = False

    def bind(self, tokenizer) -> StepLoss:
        scorer = VerbalizerScorer(tokenizer, self.prompt)

        def step_loss(model, rows, device):
            return verbalizer_loss(model, scorer, rows, self.loss, device)
        return step_loss
