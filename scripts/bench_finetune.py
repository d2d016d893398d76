"""Benchmark of stage 2 on this machine, measured side by side in one run.

1. Throughput: tokens/s of `layercut finetune` with ONE Ray Train worker (DeepSpeed engine, Ray
   Data shard, checkpointing off the timed steps) against a plain single-process PyTorch loop
   (torch AdamW, no Ray, no DeepSpeed) training the same cut model with LoRA on the same batches
   (the stage's own batch plan). Target: ratio >= 0.9.
2. Depth: time per training step of the plain loop at k layers against all L layers (expected
   near L/k; embeddings and the loss do not shrink with depth).

    .venv/bin/python scripts/bench_finetune.py --data-root ../shared/data --layers 4 --steps 12 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def stage_run(args, output: Path) -> list[dict]:
    command = [sys.executable, "-m", "pipelines.finetune", "--layers", str(args.layers),
               "--data-root", args.data_root, "--output-dir", str(output), "--name", "bench",
               "--no-progress", f"training.steps={args.steps}", f"training.batch_size={args.batch}",
               f"training.checkpoint_every={args.steps}", f"encoder.max_length={args.max_length}",
               "workers.num_workers=1", f"workers.cpus_per_worker={args.threads}",
               "workers.address=local", f"deepspeed.zero_stage={args.zero_stage}"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(output / "bench" / "training_log.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def planned_steps(args) -> list[dict[str, list]]:
    """The stage's own batches for one worker (same data, seed and plan)."""
    import ray

    from pipelines import finetune
    from pipelines.config import find_config, load_config
    from pipelines.ray_runtime import ensure_ray
    from tasks.training.data import annotated_triplets, resolve_source

    config = load_config(finetune.FinetuneConfig, find_config("smollm2-135m", finetune.STAGE),
                         [f"training.steps={args.steps}", f"training.batch_size={args.batch}"],
                         {"data": {"data_root": args.data_root}})
    ensure_ray("local")
    path = resolve_source(config.data.source, config.data.local_source, config.data.data_root)
    annotated, _ = annotated_triplets(path, seed=config.training.seed)
    plan, _ = finetune._plan(annotated, config, args.batch)  # (plan, global batches per epoch)
    rows = {row["_key"]: row for row in annotated.take_all() if not row["_problem"]}
    # This process's Ray is no longer needed: the plain loop runs bare, and the stage (its own
    # process, its own Ray) does not share the 2 cores with a second, idle cluster.
    ray.shutdown()
    fields = ("query", "positive", "negative", "instruction")
    return [{f: [rows[int(k)][f] for k in step] for f in fields} for step in plan]


def plain_loop(args, layers: int | None, steps: list[dict]) -> list[tuple[float, int]]:
    """(seconds, tokens) per step of a plain PyTorch LoRA training loop."""
    from tasks.model.lora import LoraSettings, add_lora
    from tasks.model.models import ModelSpec, resolve_model
    from tasks.model.prompts import PromptConfig, PromptFormatter
    from tasks.training.objectives import contrastive_loss
    from tasks.training.train_loop import seed_everything

    seed_everything(42)
    spec = ModelSpec(resolve_model("smollm2-135m"), layers=layers, dtype="float32", device="cpu")
    model, tokenizer = spec.load()
    model = add_lora(model, LoraSettings())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    formatter = PromptFormatter(tokenizer, PromptConfig(max_length=args.max_length))
    timings = []
    for rows in steps:
        start = time.perf_counter()
        loss, tokens, _ = contrastive_loss(model, formatter, rows, "weighted_mean", 50.0, torch.device("cpu"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        timings.append((time.perf_counter() - start, tokens))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the rates")
    parser.add_argument("--zero-stage", type=int, default=2, help="the stage's DeepSpeed ZeRO stage")
    parser.add_argument("--no-depth", action="store_true",
                        help="skip the full-depth loop (its activations need a lot of memory at large batches)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate stage and plain runs this often; the ratio is the median "
                             "of the rounds' ratios (2 shared cores vary by 20%% between runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    steps = planned_steps(args)
    stage_rates, plain_rates = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            timed = stage_run(args, Path(tmp))[args.skip:]
        stage_rates.append(sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed))
        cut = plain_loop(args, args.layers, steps)[args.skip:]
        plain_rates.append(sum(t for _, t in cut) / sum(s for s, _ in cut))
    ratios = [a / b for a, b in zip(stage_rates, plain_rates)]
    cut_step = sum(s for s, _ in cut) / len(cut)
    result = {
        "machine": f"{torch.get_num_threads()} torch threads, CPU",
        "layers": args.layers, "total_layers": 30, "steps_timed": len(timed),
        "batch": args.batch, "max_length": args.max_length, "zero_stage": args.zero_stage,
        "stage_tokens_per_s": [round(r, 1) for r in stage_rates],
        "plain_tokens_per_s": [round(r, 1) for r in plain_rates],
        "stage_over_plain_per_round": [round(r, 3) for r in ratios],
        "stage_over_plain": round(statistics.median(ratios), 3),
        "seconds_per_step_cut": round(cut_step, 3),
    }
    if not args.no_depth:
        full = plain_loop(args, None, steps)[args.skip:]
        full_step = sum(s for s, _ in full) / len(full)
        result.update({"seconds_per_step_full": round(full_step, 3),
                       "speedup_cut_over_full": round(full_step / cut_step, 2),
                       "expected_L_over_k": round(30 / args.layers, 2)})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
