"""The Ray unit of work of stage 1: one task loads the model once and scans its share of batches.

The task is a Ray generator: it yields each batch's per-layer losses as soon as they exist, so
the driver can show progress and save finished batches while the rest still run.
"""

from __future__ import annotations

import ray
import torch

from tasks.model.encoder import build_encoder
from tasks.scan.layer_scan import scan_batches


@ray.remote
def layer_loss_task(spec, prompt, pooling, encode_batch_size, scale, batches, threads,
                    mask_duplicates=True):
    if threads:
        torch.set_num_threads(threads)
    encoder = build_encoder(spec, prompt, pooling=pooling, batch_size=encode_batch_size)
    yield from scan_batches(encoder, batches, scale, mask_duplicates)
