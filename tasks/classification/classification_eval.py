"""Stage 3's unit of work for the classification objective: score chunks of texts, then metrics.

``ClassifierWorker`` loads the (cut) causal LM once and returns each text's class
log-probabilities (in-process, in a Ray streaming task as ``score_in_turn``, or as an actor in a pool);
``classification_metrics`` turns gold labels and predictions into accuracy and macro-F1
(scikit-learn's), with the majority-class rate beside them as the floor a classifier must beat.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from tasks.classification.verbalizer import ClassificationPrompt, VerbalizerScorer


class ClassifierWorker:
    """Scores chunks of texts with one loaded model (a Ray actor in a pool, or in-process)."""

    def __init__(self, spec, prompt: ClassificationPrompt, batch_size: int, threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.model, tokenizer = spec.load()
        self.scorer = VerbalizerScorer(tokenizer, prompt)
        self.device = next(self.model.parameters()).device
        self.batch_size = batch_size

    def score(self, index: int, texts: list[str]) -> tuple[int, np.ndarray, float]:
        """(chunk index, (texts, classes) log-probabilities, seconds spent)."""
        start = time.perf_counter()
        with torch.inference_mode():
            scores = [self.scorer.score(self.model, texts[i:i + self.batch_size], self.device)
                      .float().cpu().numpy() for i in range(0, len(texts), self.batch_size)]
        return index, np.concatenate(scores), time.perf_counter() - start


def score_in_turn(spec, prompt: ClassificationPrompt, batch_size: int, chunks: dict[int, list[str]],
                  threads: int = 0):
    """Load the model once and score ``chunks`` ({chunk index: texts}) one after another, yielding
    ``ClassifierWorker.score``'s (index, scores, seconds) as each finishes: in-process, or as a Ray
    streaming-generator task when one worker does all the work. A task's worker process is pooled,
    so the next scoring (the sweep's next trial) runs in it warm instead of paying a process start
    (10-20 s on two cores), as an actor would."""
    worker = ClassifierWorker(spec, prompt, batch_size, threads)
    for index, texts in chunks.items():
        yield worker.score(index, texts)


def classification_metrics(gold: list[int], predicted: list[int], label_names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(label_names)))
    counts = np.bincount(np.asarray(gold, dtype=np.int64), minlength=len(labels))
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)),
        "majority_rate": float(counts.max() / max(1, counts.sum())),
        "examples": len(gold),
        "per_class_f1": dict(zip(label_names, f1_score(gold, predicted, labels=labels, average=None,
                                                       zero_division=0).tolist())),
        "predicted_counts": dict(zip(label_names, np.bincount(
            np.asarray(predicted, dtype=np.int64), minlength=len(labels)).tolist())),
    }
