"""A layercut model as an mteb 2.x encoder: mteb's own tasks and evaluators score it unchanged.

Queries (and symmetric inputs such as STS pairs) carry the task's instruction, documents none,
as in LLM2Vec and the paper. Texts are encoded sorted by length; a non-finite embedding is an
error naming the task and batch, never a silently wrong score.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.model_meta import ScoringFunction
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from tasks.errors import LayercutError

# (texts, instructions) -> (N, H); layercut's encoders also take on_batch=, a per-batch callback.
EmbedFn = Callable[[Sequence[str], Sequence[str | None]], torch.Tensor]


def progress_bar(total: int, desc: str):
    """A bar over ``total`` batches with rate and ETA, on stderr; inside a Ray worker a Ray tqdm,
    which the driver draws (a plain tqdm's carriage returns turn into log lines there)."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        return ray_tqdm(total=total, desc=desc, unit="batch")
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


def model_meta(name: str, revision: str, **extra: Any) -> ModelMeta:
    """mteb's description of a layercut model; it names the result folder (name/revision)."""
    # The enum member, not the string: mteb compares similarity_fn_name by identity.
    return ModelMeta.create_empty(overwrites={
        "name": name, "revision": revision, "similarity_fn_name": ScoringFunction.COSINE, **extra})


class LayercutMTEBModel(AbsEncoder):
    def __init__(self, embed: EmbedFn, *, name: str, revision: str | None = None,
                 instructions: dict[str, str] | None = None, batch_size: int = 32,
                 extra_meta: dict[str, Any] | None = None,
                 large_embed: EmbedFn | None = None, large_min_texts: int = 0,
                 progress: bool = False):
        self.embed = embed
        # A bar per encoded input set, ticked by ``embed``'s on_batch (the large path has Ray
        # Data's own progress bars).
        self.progress = progress
        # For input sets of at least large_min_texts (retrieval corpora): e.g. a Ray Data pool.
        self.large_embed = large_embed
        self.large_min_texts = large_min_texts
        self.instructions = instructions or {}
        self.batch_size = batch_size
        self.mteb_model_meta = model_meta(name, revision or "local", **(extra_meta or {}))
        self.texts_encoded = 0
        self.encode_seconds = 0.0

    def instruction_for(self, task_name: str, prompt_type: PromptType | None) -> str | None:
        if prompt_type == PromptType.document:
            return None
        return self.instructions.get(task_name)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.instruction_for(task_metadata.name, prompt_type)
        began = time.perf_counter()
        try:
            if self.large_embed and len(texts) >= self.large_min_texts:
                embeddings = self.large_embed(texts, [instruction] * len(texts))
            elif self.progress:
                bar = progress_bar(math.ceil(len(texts) / self.batch_size),
                                   f"{task_metadata.name} {hf_subset}/{hf_split}")
                try:
                    embeddings = self.embed(texts, [instruction] * len(texts), on_batch=bar.update)
                finally:
                    bar.close()
            else:
                embeddings = self.embed(texts, [instruction] * len(texts))
        except LayercutError as exc:  # say where: the formatter knows only the text
            raise LayercutError(f"task {task_metadata.name} ({hf_split}/{hf_subset}): {exc}") from None
        embeddings = embeddings.float().cpu()
        self.encode_seconds += time.perf_counter() - began
        self.texts_encoded += len(texts)
        finite = torch.isfinite(embeddings).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise LayercutError(
                f"non-finite embedding in task {task_metadata.name} ({hf_split}/{hf_subset}), "
                f"batch {row // self.batch_size} (text {row}: {texts[row][:60]!r})")
        return embeddings.numpy()


def sentence_transformer_embed(model_dir: str, device: str = "cpu", batch_size: int = 32,
                               show_progress: bool = False) -> EmbedFn:
    """Embedding function of a sentence-transformers directory (reference encoders); with
    ``show_progress``, sentence-transformers' own bar over its batches."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=device)

    def embed(texts, instructions):
        # Reference encoders are scored as their authors publish them: without instructions.
        return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                            show_progress_bar=show_progress)

    return embed
