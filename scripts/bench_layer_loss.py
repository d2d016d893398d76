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
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tasks.model.footprint import reset_resident_peak, resident_kib


def _rss_kib(field: str) -> int:
    value = resident_kib(field)
    if value is None:
        raise RuntimeError(f"{field} not readable: this benchmark needs Linux /proc")
    return value


def _reset_peak() -> int:
    reset_resident_peak()
    return _rss_kib("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/train/triplets.jsonl"))
    parser.add_argument("--batch-size", type=int, default=16, help="triplets per batch (3x texts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args)))
        return
    # Each method in a fresh process, so one method's allocations cannot hide in another's peak.
    results = {}
    for method in METHODS:
        # A fixed mmap threshold makes glibc return every large tensor's memory on free, so
        # resident memory tracks live tensors and the warm-up cannot hide a method's peak.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--method", method],
                               check=True, capture_output=True, text=True, env=env)
        results[method] = json.loads(child.stdout.strip().splitlines()[-1])
    first = results["one-pass"]
    reference = np.array(first["losses"])
    print(f"model {args.model}: L={first['layers']}; batch {args.batch_size} triplets = "
          f"{3 * args.batch_size} texts, {first['tokens']} tokens; {args.threads} threads; "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(f"{'method':<14}{'seconds':>10}{'peak MiB':>11}{'max |loss diff|':>18}")
    for name, result in results.items():
        diff = np.abs(np.array(result["losses"]) - reference).max()
        print(f"{name:<14}{result['seconds']:>10.2f}{result['peak_mib']:>11.1f}{diff:>18.2e}")
    speedup = results["per-depth"]["seconds"] / first["seconds"]
    print(f"speed-up one-pass vs per-depth: {speedup:.1f}x "
          f"(layer-forwards ratio (L+1)/2 = {(first['layers'] + 1) / 2:.1f})")
    print(f"peak memory above the loaded model: per-depth / one-pass = "
          f"{results['per-depth']['peak_mib'] / first['peak_mib']:.2f}x, hidden-states / one-pass = "
          f"{results['hidden-states']['peak_mib'] / first['peak_mib']:.2f}x")


METHODS = ("one-pass", "per-depth", "hidden-states")


def run_method(args) -> dict:
    torch.set_num_threads(args.threads)
    from tasks.model.encoder import build_encoder
    from tasks.model.models import ModelSpec, resolve_model
    from tasks.model.pooling import pool
    from tasks.model.prompts import PromptConfig
    from tasks.model.pruning import decoder_layers, final_norm
    from tasks.scan.layer_scan import batch_layer_losses
    from tasks.training.loss import hard_negative_infonce

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

    def split(emb):
        return emb.split(args.batch_size, dim=-2)

    def one_pass():
        return batch_layer_losses(encoder, batch, 50.0)

    def per_depth():
        # The model cut to l layers, run normally, for l = 1..L. The cut shares the loaded
        # weights (a shorter layer list), so memory measures activations, not model copies.
        out = []
        model, full = encoder.model, list(decoder_layers(encoder.model))
        try:
            for depth in range(1, total + 1):
                model.layers = torch.nn.ModuleList(full[:depth])
                model.config.num_hidden_layers = depth
                out.append(hard_negative_infonce(*split(encoder.encode(texts, instructions)), 50.0).item())
        finally:
            model.layers, model.config.num_hidden_layers = torch.nn.ModuleList(full), total
        return np.array(out)

    def hidden_states():
        norm = final_norm(encoder.model)
        with torch.inference_mode():
            mask = features["attention_mask"]
            states = encoder.model(input_ids=features["input_ids"], attention_mask=mask,
                                   position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                                   output_hidden_states=True, use_cache=False).hidden_states
            out = []  # all L full (B, S, H) tensors are alive here, as in the official scan
            for depth, state in enumerate(states[1:], start=1):
                state = state if depth == total else norm(state)
                out.append(hard_negative_infonce(*split(pool(state, features["pool_mask"], encoder.pooling)), 50.0).item())
        return np.array(out)

    fn = {"one-pass": one_pass, "per-depth": per_depth, "hidden-states": hidden_states}[args.method]
    batch_layer_losses(encoder, batch, 50.0)  # warm-up (same for every method)
    start_rss = _reset_peak()
    began = time.perf_counter()
    losses = fn()
    seconds = time.perf_counter() - began
    return {"losses": losses.tolist(), "seconds": seconds, "layers": total,
            "peak_mib": (_rss_kib("VmHWM") - start_rss) / 1024,
            "tokens": int(features["attention_mask"].sum())}


if __name__ == "__main__":
    main()
