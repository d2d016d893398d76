#!/usr/bin/env python
"""Benchmark stage 1's one-pass per-layer scan against the alternatives, side by side.

  one-pass      layercut: one forward per batch, every layer normed and pooled as it is produced
  per-depth     the official fallback: run the model cut to l layers once per depth l = 1..L
  hidden-states the official scan: output_hidden_states=True, all L (B, S, H) tensors kept

Same model, same batch, same process, one after the other. Prints wall time, the speed-up of
the one-pass scan over the per-depth re-run (expect about (L+1)/2), and each method's peak
memory above the loaded model (Linux VmHWM, reset before each method).

  .venv/bin/python scripts/bench_layer_loss.py --data ../shared/data/train/triplets.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _measure(fn):
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    start_rss = _rss_kib("VmRSS")
    began = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - began
    return result, elapsed, (_rss_kib("VmHWM") - start_rss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/train/triplets.jsonl"))
    parser.add_argument("--batch-size", type=int, default=16, help="triplets per batch (3x texts)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tasks.encoder import Encoder, build_encoder
    from tasks.layer_scan import batch_layer_losses
    from tasks.loss import hard_negative_infonce
    from tasks.models import ModelSpec, resolve_model
    from tasks.pooling import pool
    from tasks.prompts import PromptConfig
    from tasks.pruning import final_norm, prune_model

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in rng.choice(len(rows), args.batch_size, replace=False)]
    batch = {f: [r.get(f) for r in picked] for f in ("query", "positive", "negative", "instruction")}
    texts = [*batch["query"], *batch["positive"], *batch["negative"]]
    instructions = [*batch["instruction"], *([None] * (2 * args.batch_size))]

    encoder = build_encoder(ModelSpec(source=resolve_model(args.model)), PromptConfig(),
                            batch_size=len(texts))
    total = encoder.num_layers
    features = encoder.formatter(texts, instructions)
    tokens = int(features["attention_mask"].sum())
    batch_layer_losses(encoder, batch, 50.0)  # warm-up

    def one_pass():
        return batch_layer_losses(encoder, batch, 50.0)

    def split(emb):
        return emb.split(args.batch_size, dim=-2)

    pruned = {}
    for depth in range(1, total + 1):  # built outside the timing: only the forwards are compared
        pruned[depth] = Encoder(prune_model(copy.deepcopy(encoder.model), depth), encoder.formatter,
                                batch_size=len(texts))

    def per_depth():
        out = []
        with torch.inference_mode():
            for depth in range(1, total + 1):
                out.append(hard_negative_infonce(*split(pruned[depth].encode(texts, instructions)), 50.0).item())
        return np.array(out)

    def hidden_states():
        norm = final_norm(encoder.model)
        with torch.inference_mode():
            mask = features["attention_mask"]
            states = encoder.model(input_ids=features["input_ids"], attention_mask=mask,
                                   position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                                   output_hidden_states=True, use_cache=False).hidden_states
            kept = [s.clone() for s in states[1:]]  # all L full tensors alive at once, as the official scan
            out = []
            for depth, state in enumerate(kept, start=1):
                state = state if depth == total else norm(state)
                emb = pool(state, features["pool_mask"], encoder.pooling)
                out.append(hard_negative_infonce(*split(emb), 50.0).item())
        return np.array(out)

    results = {}
    for name, fn in (("one-pass", one_pass), ("per-depth", per_depth), ("hidden-states", hidden_states)):
        results[name] = _measure(fn)
    reference = results["one-pass"][0]
    print(f"model {args.model}: L={total}; batch {args.batch_size} triplets = {len(texts)} texts, "
          f"{tokens} tokens; {args.threads} threads; {platform.processor() or platform.machine()}")
    print(f"{'method':<14}{'seconds':>10}{'peak MiB':>11}{'max |loss diff|':>18}")
    for name, (losses, seconds, peak) in results.items():
        print(f"{name:<14}{seconds:>10.2f}{peak:>11.1f}{np.abs(losses - reference).max():>18.2e}")
    speedup = results["per-depth"][1] / results["one-pass"][1]
    print(f"speed-up one-pass vs per-depth: {speedup:.1f}x (layer-forwards ratio (L+1)/2 = {(total + 1) / 2:.1f})")
    print(f"peak memory: hidden-states / one-pass = "
          f"{results['hidden-states'][2] / max(results['one-pass'][2], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
