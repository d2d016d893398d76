"""What a model costs to serve: encode latency per batch and peak memory while encoding.

Measured in a fresh process (a Ray task with one worker's resources), so the numbers belong to
this model alone: on GPU, torch's peak allocated memory; on CPU, the process's peak resident
memory (Linux VmHWM, reset after the imports), both including the weights.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch


def resident_kib(field: str) -> int | None:
    """A memory field of this process from /proc/self/status (VmRSS, VmHWM) in KiB; None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_resident_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS high-water mark
    except OSError:
        pass


def _kib_to_mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def measure_encoding(spec, prompt, pooling: str, texts: Sequence[str], batch_size: int,
                     threads: int = 0, repeats: int = 3) -> dict[str, float | None]:
    """Milliseconds per batch of ``batch_size`` texts (the median over batches of each batch's
    fastest of ``repeats`` runs: other processes only ever add time) and peak memory (MiB).

    The first batch is a warm-up (kernels, allocator) and is not timed.
    """
    from tasks.model.encoder import build_encoder

    if threads:
        torch.set_num_threads(threads)
    if len(texts) < 2 * batch_size:
        raise ValueError(f"need at least {2 * batch_size} texts to time batches of {batch_size}")
    reset_resident_peak()
    encoder = build_encoder(spec, prompt, pooling=pooling, batch_size=batch_size)
    cuda = encoder.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(encoder.device)
    batches = [list(texts[k:k + batch_size]) for k in range(0, len(texts) - batch_size + 1, batch_size)]
    encoder.encode(batches[0])
    timings = []
    for batch in batches[1:]:
        runs = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(encoder.device)
            start = time.perf_counter()
            encoder.encode(batch)
            if cuda:
                torch.cuda.synchronize(encoder.device)
            runs.append(time.perf_counter() - start)
        timings.append(min(runs))
    peak = (torch.cuda.max_memory_allocated(encoder.device) / 2**20 if cuda
            else _kib_to_mib(resident_kib("VmHWM")))
    return {"latency_ms": 1000 * statistics.median(timings), "latency_batch_size": batch_size,
            "peak_memory_mib": peak, "memory_kind": "gpu_allocated" if cuda else "process_rss"}
