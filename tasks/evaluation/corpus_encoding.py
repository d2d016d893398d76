"""Encoding one large input set (a retrieval corpus) over a Ray Data actor pool.

A single mteb task can hold millions of documents; instead of one worker encoding them all, the
texts become a Ray Dataset and ``map_batches`` sends them to a pool of actors (one GPU each on a
cluster), each of which loads the model once. Embeddings come back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from tasks.model.models import ModelSpec
    from tasks.model.prompts import PromptConfig


@dataclass(frozen=True)
class EncoderFactory:
    """Picklable recipe for an embedding function: (texts, instructions) -> (N, H) tensor."""

    spec: ModelSpec
    prompt: PromptConfig
    pooling: str
    batch_size: int

    def __call__(self):
        from tasks.model.encoder import build_encoder

        return build_encoder(self.spec, self.prompt, pooling=self.pooling,
                             batch_size=self.batch_size).encode


class _EmbedBatches:
    """Ray Data actor: loads the model once, then embeds the batches it is handed."""

    def __init__(self, factory: EncoderFactory, threads: int):
        if threads:
            torch.set_num_threads(threads)
        self.embed = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        instructions = [value or None for value in batch["instruction"].tolist()]
        embeddings = self.embed(batch["text"].tolist(), instructions).float().cpu().numpy()
        return {"index": batch["index"], "embedding": embeddings}


def embed_with_ray_data(texts: Sequence[str], instructions: Sequence[str | None],
                        factory: EncoderFactory, *, workers: int, use_gpu: bool,
                        cpus_per_worker: float = 1.0, rows_per_batch: int = 256) -> torch.Tensor:
    import ray.data

    dataset = ray.data.from_items([{"index": k, "text": text, "instruction": instruction or ""}
                                   for k, (text, instruction) in enumerate(zip(texts, instructions))])
    threads = 0 if use_gpu else max(1, int(cpus_per_worker))
    embedded = dataset.map_batches(
        _EmbedBatches, fn_constructor_args=(factory, threads), batch_size=rows_per_batch,
        batch_format="numpy", concurrency=workers, num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_worker)
    parts = list(embedded.iter_batches(batch_size=None, batch_format="numpy"))
    index = np.concatenate([part["index"] for part in parts])
    vectors = np.concatenate([np.stack(list(part["embedding"])) for part in parts])
    ordered = np.empty_like(vectors)
    ordered[index] = vectors
    return torch.from_numpy(ordered)
