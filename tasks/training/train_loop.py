"""Stage 2's unit of work: the training loop each Ray Train worker runs (DeepSpeed + LoRA).

The worker loads the model already cut to its depth, adds LoRA adapters (or trains every weight:
full fine-tuning), wraps it in a DeepSpeed engine and trains with the job's objective
(``tasks.training.objectives``: the hard-negative InfoNCE loss over the GLOBAL batch, or prompt-based
classification). Its rows come from its own Ray Data shard in plan order (``tasks.training.batch_plan``),
so step s trains on the same rows whatever happened before. Every ``checkpoint_every`` steps it
reports a checkpoint to Ray Train holding the DeepSpeed state (trained weights, optimizer,
schedule), the adapter in peft format (or the whole model), the per-step log and every worker's
RNG state; a restarted worker resumes from the latest one at that step.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tasks.errors import LayercutError
from tasks.model.lora import LoraSettings, add_lora
from tasks.training.deepspeed_config import OptimizationSettings, deepspeed_config

if TYPE_CHECKING:
    from tasks.model.models import ModelSpec
    from tasks.training.objectives import ClassificationObjective, ContrastiveObjective

TRAINER_STATE = "trainer_state.json"
ADAPTER_DIR = "adapter"
WEIGHTS_DIR = "weights"  # full fine-tuning: the whole model
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
PLACEMENT_FILE = "node-rank{rank}.json"  # where worker ``rank`` ran (worker_placement)


@dataclass(frozen=True)
class TrainingJob:
    """Everything a worker needs; built on the driver, shipped to every worker."""

    spec: ModelSpec  # with .layers set to the kept depth
    objective: ContrastiveObjective | ClassificationObjective
    lora: LoraSettings | None  # None: full fine-tuning (every weight trains)
    optimization: OptimizationSettings
    steps: int
    warmup_steps: int
    gradient_checkpointing: bool
    checkpoint_every: int
    seed: int
    fingerprint: str  # of the settings that determine the numbers (resume guard)
    user_deepspeed: dict[str, Any] | None = None
    user_deepspeed_path: str = "the DeepSpeed JSON"
    threads: int = 0  # torch threads on a CPU worker; 0 leaves torch's default
    dataset_prefix: str = "rank"  # worker r reads get_dataset_shard(f"{prefix}{r}")
    show_progress: bool = True
    metrics_tags: dict[str, str] = field(default_factory=dict)
    # The step at which the linear decay reaches 0 (None: ``steps``). The official run plans its
    # decay over 3 epochs and stops at step 1000, where the rate is still near its peak.
    decay_steps: int | None = None


def learning_rate_schedule(optimizer, job: TrainingJob):
    """transformers' linear schedule: warmup over ``job.warmup_steps``, then a linear decay that
    reaches 0 at ``job.decay_steps`` (default: the last step), stepped once per optimizer step."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=job.warmup_steps,
                                           num_training_steps=job.decay_steps or job.steps)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_trainable(job: TrainingJob):
    """(model in train mode, tokenizer): the cut model with fresh LoRA adapters (a peft model),
    or the cut model itself, every weight trainable, for full fine-tuning.

    Seeded first, so every worker starts from identical adapters.
    """
    seed_everything(job.seed)
    model, tokenizer = job.spec.load()
    if job.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input-grad hooks with frozen embeddings.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if job.lora is not None:
        model = add_lora(model, job.lora)
    else:
        model.requires_grad_(True)
    model.train()
    return model, tokenizer


def _skip_cpu_inference_all_reduce_kernel() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory all-reduce kernel.

    ``deepspeed.comm.torch.TorchBackend`` JIT-compiles it (``build_shm_op``) when it starts on a
    CPU, but only ``inference_all_reduce`` uses it: training's all-reduce and reduce-scatter go
    through torch.distributed (gloo here). The compile costs 80-95 s of a CPU run, in every new
    environment, and again whenever a process finds another ninja first on its PATH (ninja 1.11
    and 1.13 hash their build commands differently, so each takes the other's build as stale).
    DeepSpeed reads the op's compatibility from this per-process table; without the entry it
    would compile as before, slower but not different.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # ShareMemCommBuilder.NAME


def initialize_engine(model, job: TrainingJob, world_size: int):
    """The DeepSpeed engine around ``model``, with the linear schedule (learning_rate_schedule)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        _skip_cpu_inference_all_reduce_kernel()
    config = deepspeed_config(job.optimization, world_size, job.user_deepspeed, job.user_deepspeed_path)
    engine, _, _, _ = deepspeed.initialize(
        model=model, config=config,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        lr_scheduler=lambda optimizer: learning_rate_schedule(optimizer, job))
    return engine


def _all_reduce_sum(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


class _Metrics:
    """Per-step loss, learning rate and tokens/s as Ray metrics (Prometheus), from rank 0."""

    def __init__(self, tags: dict[str, str]):
        from ray.util.metrics import Gauge

        keys = tuple(tags)
        self.tags = tags
        self.gauges = {name: Gauge(f"layercut_train_{name}", description=text, tag_keys=keys)
                       for name, text in (("loss", "training loss (global batch)"),
                                          ("learning_rate", "learning rate"),
                                          ("tokens_per_second", "tokens per second, all workers"),
                                          ("step", "optimizer steps done"))}

    def record(self, entry: dict[str, float]) -> None:
        for name, gauge in self.gauges.items():
            gauge.set(float(entry[name]), tags=self.tags)


def save_checkpoint(engine, job: TrainingJob, step: int, history: list[dict], rank: int,
                    world_size: int, directory: Path, placement: dict[str, Any] | None = None) -> None:
    """Write this worker's part of the step-``step`` checkpoint into ``directory``.

    Every worker writes its own files (its RNG state, its ZeRO partition); rank 0 also writes
    the adapter, the shared DeepSpeed state and the trainer state. Ray Train merges the workers'
    directories and registers the checkpoint only when all have reported it.
    """
    import deepspeed

    engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                           exclude_frozen_parameters=True)
    torch.save(rng_state(), directory / f"rng-rank{rank}.pt")
    if placement is not None:  # where this worker runs (worker_placement)
        (directory / PLACEMENT_FILE.format(rank=rank)).write_text(json.dumps(placement))
    # The trained weights in transformers/peft format, for the export: the adapter, or (full
    # fine-tuning) the whole model. Under ZeRO-3 they are gathered from every worker first.
    full = job.lora is None
    trained = [p for n, p in engine.module.named_parameters() if full or "lora_" in n]
    with deepspeed.zero.GatheredParameters(trained, modifier_rank=None):
        if rank == 0:
            engine.module.save_pretrained(directory / (WEIGHTS_DIR if full else ADAPTER_DIR))
    if rank == 0:
        state = {"step": step, "steps": job.steps, "world_size": world_size,
                 "fingerprint": job.fingerprint, "history": history}
        (directory / TRAINER_STATE).write_text(json.dumps(state))


def worker_placement(rank: int) -> dict[str, Any]:
    """Where this Train worker runs: its rank, Ray node id and node IP. Each worker writes it
    into its part of every checkpoint, so the run records which node trained each rank."""
    import ray

    context = ray.get_runtime_context()
    return {"rank": rank, "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address()}


def load_checkpoint(engine, directory: Path, job: TrainingJob, rank: int,
                    world_size: int) -> tuple[int, list[dict]]:
    """Restore engine, RNG and log from a checkpoint; returns (steps done, per-step log)."""
    state = json.loads((directory / TRAINER_STATE).read_text())
    if state["world_size"] != world_size:
        raise LayercutError(f"the checkpoint was written by {state['world_size']} workers, this run "
                            f"has {world_size}; resume with workers.num_workers={state['world_size']}")
    path, _ = engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                                     load_module_strict=False)
    if path is None:
        raise LayercutError(f"checkpoint {directory} holds no DeepSpeed state")
    set_rng_state(torch.load(directory / f"rng-rank{rank}.pt", weights_only=False))
    return int(state["step"]), list(state["history"])


def train_worker(job: TrainingJob) -> None:
    """The Ray Train loop (``train_loop_per_worker``) of stage 2."""
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if job.threads:
        torch.set_num_threads(job.threads)
    model, tokenizer = build_trainable(job)
    device = next(model.parameters()).device
    engine = initialize_engine(model, job, world_size)
    step_loss = job.objective.bind(tokenizer)

    start_step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_step, history = load_checkpoint(engine, Path(directory), job, rank, world_size)
    if start_step >= job.steps:
        return

    metrics = _Metrics(job.metrics_tags) if rank == 0 else None
    progress = None
    if rank == 0 and job.show_progress:
        from ray.experimental.tqdm_ray import tqdm

        progress = tqdm(total=job.steps, desc="fine-tuning", unit="step", position=0)
        progress.update(start_step)
    placement = worker_placement(rank)
    shard = ray.train.get_dataset_shard(f"{job.dataset_prefix}{rank}")
    # No prefetch thread on a CPU worker: fetching a batch takes milliseconds, while a background
    # thread competes with forward and backward for the GIL and the few cores (measured in
    # docs/benchmarks.md: stage/plain 0.78 with it, 0.92 without). A GPU worker keeps one batch
    # in flight, overlapping the fetch with GPU compute.
    batches = shard.iter_batches(batch_size=job.optimization.per_device_batch, batch_format="numpy",
                                 prefetch_batches=1 if device.type == "cuda" else 0)

    from tasks.training.batch_plan import steps_from_rows

    started = time.perf_counter()
    for step, rows in steps_from_rows(batches, job.optimization.per_device_batch, start_step):
        if step >= job.steps:
            break
        learning_rate = engine.get_lr()[0]
        loss, tokens, extra = step_loss(engine, rows, device)
        if job.objective.loss_is_global:
            # Every worker holds the global loss; data-parallel averaging divides by world_size.
            engine.backward(loss * world_size)
            logged_loss = float(loss.detach())
        else:  # a per-worker mean: the averaged gradients are those of the global batch's mean
            engine.backward(loss)
            logged_loss = _all_reduce_sum(float(loss.detach()), device) / world_size
        engine.step()
        tokens = _all_reduce_sum(tokens, device)
        now = time.perf_counter()
        entry = {"step": step + 1, "loss": logged_loss, "learning_rate": learning_rate,
                 "tokens": tokens, "tokens_per_second": tokens / max(now - started, 1e-9),
                 "seconds": now - started, **extra}
        started = now
        history.append(entry)
        if metrics is not None:
            metrics.record(entry)
        if progress is not None:
            progress.set_description(f"fine-tuning loss {entry['loss']:.4f} lr {learning_rate:.2e} "
                                     f"{entry['tokens_per_second']:.0f} tok/s")
            progress.update(1)
        done = step + 1
        if done % job.checkpoint_every == 0 or done == job.steps:
            with tempfile.TemporaryDirectory(prefix="layercut-ckpt-") as tmp:
                save_checkpoint(engine, job, done, history, rank, world_size, Path(tmp), placement)
                ray.train.report({"step": done, "loss": entry["loss"]},
                                 checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"step-{done:07d}")
    if progress is not None:
        progress.close()
    if history and history[-1]["step"] < job.steps:
        raise LayercutError(f"the training data ran out at step {history[-1]['step']} of {job.steps}")


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: the job arrives in the train loop config."""
    train_worker(config["job"])


def cpu_worker_env() -> dict[str, str]:
    """Environment for CPU workers: DeepSpeed's CPU accelerator (it otherwise probes for GPUs)."""
    return {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
