#!/usr/bin/env python
"""Benchmark the evaluation stage, side by side in one run.

1. Encode throughput of the evaluation path (mteb wrapper -> prompt formatting, length-sorted
   batches, masked pooling) against a raw batched forward pass of the same model over the same
   model inputs (the texts as rendered with chat template and instruction; tokenize, forward,
   mean-pool, in input order) in the same batch size. Target: ratio >= 0.9. For scale, it also
   times the raw forward over the bare texts: the price of the template and instruction tokens.
2. The quick preset through `layercut evaluate` with 2 Ray workers against 1 worker.

  .venv/bin/python scripts/bench_evaluate.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch


def encode_throughput(args) -> None:
    from torch.utils.data import DataLoader

    from pipelines.evaluate import packaged_instructions
    from tasks.evaluation.mteb_model import LayercutMTEBModel
    from tasks.evaluation.mteb_tasks import load_task
    from tasks.model.encoder import build_encoder
    from tasks.model.models import ModelSpec, resolve_model
    from tasks.model.prompts import PromptConfig

    table = pq.read_table(Path(args.data_root) / "STSBenchmark" / "test.parquet")
    texts = (table["sentence1"].to_pylist() + table["sentence2"].to_pylist())[:args.texts]
    encoder = build_encoder(ModelSpec(source=resolve_model(args.model), layers=args.layers),
                            PromptConfig(), batch_size=args.batch_size)
    model = LayercutMTEBModel(encoder.encode, name="bench", instructions=packaged_instructions(),
                              batch_size=args.batch_size)
    metadata = load_task("STSBenchmark", args.data_root).metadata
    loader = DataLoader([{"text": t} for t in texts], batch_size=args.batch_size,
                        collate_fn=lambda rows: {"text": [r["text"] for r in rows]})
    tokenizer = encoder.formatter.tokenizer
    tokenizer.padding_side = "left"

    instruction = model.instruction_for("STSBenchmark", None)
    rendered = [encoder.formatter.render(t, instruction)[0] for t in texts]

    @torch.inference_mode()
    def raw_forward(inputs):
        out = []
        for begin in range(0, len(inputs), args.batch_size):
            batch = tokenizer(inputs[begin:begin + args.batch_size], padding=True,
                              add_special_tokens=False, return_tensors="pt")
            hidden = encoder.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1)
            out.append((hidden * mask).sum(1) / mask.sum(1))
        return torch.cat(out)

    def ours():
        return model.encode(loader, task_metadata=metadata, hf_split="test", hf_subset="default")

    methods = (("evaluation path", ours), ("raw forward, same inputs", lambda: raw_forward(rendered)),
               ("raw forward, bare texts", lambda: raw_forward(texts)))
    for _, fn in methods:
        fn()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(2):  # interleaved repeats, so drifting machine load hits all methods alike
        for name, fn in methods:
            began = time.perf_counter()
            fn()
            rates[name].append(len(texts) / (time.perf_counter() - began))
    tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered)
    bare = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    print(f"encode: {len(texts)} STSBenchmark texts, {args.model}"
          f"{f' cut to {args.layers} layers' if args.layers else ''}, batch {args.batch_size}; "
          f"{tokens / len(texts):.1f} tokens per model input, {bare / len(texts):.1f} per bare text")
    best = {name: max(values) for name, values in rates.items()}
    for name, rate in best.items():
        print(f"  {name:<28}{rate:>8.1f} texts/s  (runs: {', '.join(f'{r:.1f}' for r in rates[name])})")
    print(f"  ratio evaluation path / raw forward on the same inputs: "
          f"{best['evaluation path'] / best['raw forward, same inputs']:.2f} (target >= 0.9)")


def workers_scaling(args) -> None:
    from pipelines.config import load_config
    from pipelines.evaluate import EvaluateConfig, run

    mirror = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    for name in ("STSBenchmark", "SICK-R"):  # the quick preset, cut to --pairs test pairs each
        (mirror / name).mkdir()
        table = pq.read_table(Path(args.data_root) / name / "test.parquet")
        pq.write_table(table.slice(0, args.pairs), mirror / name / "test.parquet")
    out = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    results = {}
    for workers in (1, 2):
        config = load_config(EvaluateConfig, None, [], {
            "output_dir": str(out), "name": f"w{workers}", "layers": args.layers, "tasks": ["quick"],
            "data_root": str(mirror),
            "workers": {"num_workers": workers, "cpus_per_worker": os.cpu_count() // workers}})
        began = time.perf_counter()
        summary = run(config)
        results[workers] = (time.perf_counter() - began, summary.mean)
    print(f"quick preset ({args.pairs} pairs per task), {args.model}"
          f"{f' cut to {args.layers} layers' if args.layers else ''}, {os.cpu_count()} cores:")
    for workers, (seconds, mean) in results.items():
        print(f"  {workers} Ray worker(s): {seconds:7.1f} s, mean score {mean:.4f}")
    print(f"  speed-up 2 workers vs 1: {results[1][0] / results[2][0]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    encode_throughput(args)
    workers_scaling(args)


if __name__ == "__main__":
    main()
