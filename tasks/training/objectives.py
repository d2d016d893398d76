"""Stage 2's pluggable training objectives: what a batch of rows costs, for the training loop.

An objective says which row fields it reads, whether the model keeps its LM head, and, bound to
a tokenizer, turns (model, rows) into (loss, non-padding tokens, extra entries for the step's
log). The loop (``tasks.training.train_loop``) does the rest the same way for every objective: DeepSpeed,
checkpoints, resume, logging.

- ``ContrastiveObjective`` (L3Prune): hard-negative InfoNCE over the GLOBAL batch; every worker
  holds the same global loss (``loss_is_global``). Duplicate positives are masked out of the
  negatives unless switched off; each step logs ``masked_pairs`` (global batch).
- ``ClassificationObjective`` ("Why Lift so Heavy?"): prompt-based fine-tuning; the cross-entropy
  of the verbalizer scores over this worker's rows; DeepSpeed's gradient averaging makes it the
  global batch's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tasks.classification.verbalizer import ClassificationPrompt, VerbalizerScorer, classification_loss
from tasks.model.encoder import position_ids_for
from tasks.model.pooling import pool
from tasks.model.prompts import PromptConfig, PromptFormatter
from tasks.training.loss import distributed_hard_negative_infonce, global_false_negative_mask, text_ids

# (model, rows, device) -> (loss, non-padding tokens, extra entries for the step's log)
StepLoss = Callable[[torch.nn.Module, dict, torch.device], tuple[torch.Tensor, int, dict[str, float]]]


def contrastive_loss(model, formatter: PromptFormatter, rows: dict[str, list], pooling: str,
                     scale: float, device: torch.device, mask_duplicates: bool = True
                     ) -> tuple[torch.Tensor, int, dict[str, float]]:
    """(global-batch InfoNCE loss, this worker's non-padding tokens, {"masked_pairs": n}) for
    one step's rows.

    Queries carry their task instruction; positives and negatives (documents) none. All 3b
    texts run through the model in one forward pass. With ``mask_duplicates``, candidates that
    are another correct answer of a query (``tasks.training.loss.false_negative_mask``, decided on the
    global batch) are left out of its negatives; n counts them (0 without the mask).
    """
    b = len(rows["query"])
    texts = [*rows["query"], *rows["positive"], *rows["negative"]]
    instructions = [*rows.get("instruction", [None] * b), *[None] * (2 * b)]
    exclude = None
    if mask_duplicates:
        ids = text_ids(texts, instructions).to(device)
        exclude = global_false_negative_mask(*ids.split(b))
    features = formatter(texts, instructions)
    attention_mask = features["attention_mask"].to(device)
    hidden = model(input_ids=features["input_ids"].to(device), attention_mask=attention_mask,
                   position_ids=position_ids_for(attention_mask), use_cache=False).last_hidden_state
    embeddings = pool(hidden, features["pool_mask"].to(device), pooling)
    queries, positives, negatives = embeddings.split(b)
    loss = distributed_hard_negative_infonce(queries, positives, negatives, scale, exclude)
    masked = int(exclude.sum()) if exclude is not None else 0
    return loss, int(attention_mask.sum()), {"masked_pairs": masked}


@dataclass(frozen=True)
class ContrastiveObjective:
    prompt: PromptConfig
    pooling: str
    scale: float
    mask_duplicates: bool = True  # loss.mask_duplicate_positives

    name = "contrastive"
    fields = ("query", "positive", "negative", "instruction")
    lm_head = False
    loss_is_global = True

    def bind(self, tokenizer) -> StepLoss:
        formatter = PromptFormatter(tokenizer, self.prompt)

        def step_loss(model, rows, device):
            return contrastive_loss(model, formatter, rows, self.pooling, self.scale, device,
                                    self.mask_duplicates)
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
    loss: str = "classes"  # tasks.classification.verbalizer.classification_loss

    name = "classification"
    fields = ("text", "label")
    lm_head = True
    loss_is_global = False

    def bind(self, tokenizer) -> StepLoss:
        scorer = VerbalizerScorer(tokenizer, self.prompt)

        def step_loss(model, rows, device):
            loss, tokens = verbalizer_loss(model, scorer, rows, self.loss, device)
            return loss, tokens, {}
        return step_loss
