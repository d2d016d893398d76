"""Stage 2: fine-tune a truncation with Ray Train + DeepSpeed + LoRA; export a standard model.

The driver resolves the model and depth, plans the task-homogeneous global batches with Ray Data
(each worker gets its own dataset of its slots; no worker reads the whole corpus), runs a Ray
Train TorchTrainer (one worker per GPU, CPU workers locally, a DeepSpeed engine in each), then
merges the final adapter into the cut backbone and writes the artifact: a plain transformers
model directory with sentence-transformers files and a model card.

    layercut finetune --config smollm2-135m --layers 8 --data-root ../shared/data
    python -m pipelines.finetune --config llama3-8b --layers prune:0.3

What depends on the objective (``objective: contrastive`` or ``classification``: the data it
reads and the data root it lends that data, its part of the default run name, its loss, its part
of the fingerprint, what the artifact carries) comes from that route's
``training`` (pipelines/routes/<route>/training.py); ``run`` reads as the steps in order.

Rerunning the same command resumes: Ray Train restores the run (same name and storage) from its
latest checkpoint; a finished run is not trained again.

The run directory is a local (or shared) path or an object store URI (``--output-dir
s3://bucket/runs``): everything goes through the run store's files (pipelines/run_store/), Ray
Train's checkpoints through its ``storage(...)`` filesystem, the artifact through its
``staged_directory`` (on a store: built in a local temporary directory, uploaded file by file,
its manifest last); summary.json, which marks the run finished, is written after all of them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pipelines.commands import Stage, run_as_script
from pipelines.fingerprints import digest
from pipelines.plots import plot_training_loss
from pipelines.ray_runtime import ensure_ray, plan_workers, user_errors_from_ray
from pipelines.results import FinetuneResult
from pipelines.run_store.guard import Refusal
from pipelines.routes.registry import ROUTES
from pipelines.run_store.run import RunStore
from pipelines.schemas.finetune import STAGE, FinetuneConfig
from tasks.errors import LayercutError
from tasks.model.lora import PROJECTIONS

if TYPE_CHECKING:
    from pipelines.ray_runtime import WorkerPlan
    from pipelines.routes.base import TrainingInputs, TrainingRoute
    from tasks.model.layer_selection import LayerSelection
    from tasks.model.models import ModelSource
    from tasks.training.deepspeed_config import OptimizationSettings
    from transformers import PreTrainedTokenizerBase

MODEL_DIR = "model"

# A run that failed before its first checkpoint guards nothing; --force resumes anyway.
REFUSAL = Refusal("a run", "with a different configuration", "use another --name, delete it, or "
                  "pass --force to resume its checkpoint with this config")


@dataclass(frozen=True)
class CutModel:
    """The base model and the depth stage 2 trains: ``source`` (tasks.model.models.ModelSource),
    ``total_layers``, ``params`` (parameters per depth; ``params[-1]``: the whole model),
    ``selection`` (the kept layers), ``tokenizer``."""

    source: ModelSource
    total_layers: int
    params: list[int]
    selection: LayerSelection
    tokenizer: PreTrainedTokenizerBase

    @property
    def parameters(self) -> int:
        return self.selection.parameters(self.params)


@dataclass(frozen=True)
class Hardware:
    """Where and how the run trains: the worker plan (pipelines.ray_runtime.plan_workers), the
    dtype, DeepSpeed's settings and the user's DeepSpeed JSON (None without one)."""

    plan: WorkerPlan
    dtype: str
    optimization: OptimizationSettings
    user_deepspeed: dict | None


def run(config: FinetuneConfig) -> FinetuneResult:
    """Train (or resume) and export; returns its result (summary.json's record).

    Raises:
        LayercutError: no depth, float16, a prompt or DeepSpeed JSON that cannot work, another
            run's checkpoints in the run directory (without --force).
    """
    from tasks.export.artifact import LAYERCUT_FILE

    # The artifact counts only whole: locally it is renamed into place whole; on a store
    # exists(MODEL_DIR) needs the manifest its upload writes last.
    artifact = (MODEL_DIR, f"{MODEL_DIR}/{LAYERCUT_FILE}")
    training = ROUTES[config.objective].training  # the objective's steps (pipelines/routes/)
    config = training.resolve(config)
    _check(config)
    model = _cut_model(config, training)
    wrapper = training.wrapper(config, model.tokenizer)  # a bad input format fails now
    _note_lora_targets(config)
    hardware = _hardware(config)
    inputs = training.inputs(config, model.tokenizer, wrapper)
    store = RunStore(config.run_dir(model.selection, training.name_suffix(config))).create()
    settings = _settings(config, model.source.path, model.selection.to_json(), hardware.plan.count,
                         hardware.dtype, inputs.settings)
    fingerprint = digest(settings)
    finished = store.finished("summary.json", fingerprint, requires=artifact, announce=False)
    if finished is not None:
        result = FinetuneResult.from_json(finished, f"{store.root}/summary.json")
        store.announce_finished()
        return result
    guard = store.guard()
    guard.check(settings, has_results=bool(store.files.names("ray/train", "step-*")),
                refusal=REFUSAL, force=config.force)
    store.record_config(config)

    datasets, data_report, epoch_steps = _datasets(config, training, inputs, hardware.plan)
    job = _job(config, model, inputs, hardware, fingerprint, epoch_steps, _run_name(store))
    guard.record(settings)
    checkpoint = _fit(config, job, datasets, hardware.plan, store)
    history, steps_done = _trained_history(config, checkpoint, fingerprint, store.root)
    _export(config, training, model, inputs, hardware, job, checkpoint, history, steps_done, store)
    _write_log_and_curve(config, training, model, history, store)
    summary = _summary(config, model, inputs, hardware, job, history, steps_done, data_report,
                       fingerprint, store, _placement(checkpoint, hardware.plan.count))
    store.save_result("summary.json", summary.to_json())
    return summary


def _run_name(store: RunStore) -> str:
    """The run directory's last part (a path's or a URI's): the runs' metrics tag."""
    return PurePosixPath(str(store.root)).name


def _check(config: FinetuneConfig) -> None:
    if config.layers is None:
        raise LayercutError("give the depth to keep: --layers N (layers), --layers prune:0.3 or --layers keep:0.7")
    if config.model.dtype == "float16":
        raise LayercutError("float16 training is not supported: use model.dtype bfloat16 or float32")


def _cut_model(config: FinetuneConfig, training: TrainingRoute) -> CutModel:
    """The base model's layer count and parameters per depth (with its LM head when the
    objective keeps it), the selection of the config's depth, the tokenizer."""
    from tasks.model.models import load_tokenizer, parameters_per_depth, resolve_model
    from tasks.model.pruning import resolve_selection

    source = resolve_model(config.model.name_or_path)
    total_layers, params = parameters_per_depth(
        source, trust_remote_code=config.model.trust_remote_code, revision=config.model.revision,
        lm_head=training.lm_head)
    selection = resolve_selection(config.layers, total_layers)
    tokenizer = load_tokenizer(source, trust_remote_code=config.model.trust_remote_code,
                               revision=config.model.revision)
    return CutModel(source, total_layers, params, selection, tokenizer)


def _note_lora_targets(config: FinetuneConfig) -> None:
    unknown = [t for t in (config.lora.target_modules or []) if t not in PROJECTIONS]
    if unknown:
        print(f"layercut: note: lora.target_modules {unknown} are not standard projections",
              file=sys.stderr)


def _hardware(config: FinetuneConfig) -> Hardware:
    """Ray up, the worker plan, the dtype (auto: bfloat16 on GPU, else float32) and DeepSpeed's
    settings; a contradicting DeepSpeed JSON fails here, before any worker starts."""
    from tasks.training.deepspeed_config import OptimizationSettings, deepspeed_config

    user_deepspeed = _user_deepspeed(config)
    ensure_ray(config.workers.address)
    plan = plan_workers(config.workers, jobs=10**9)
    dtype = config.model.dtype if config.model.dtype != "auto" else (
        "bfloat16" if plan.use_gpu else "float32")
    optimization = OptimizationSettings(
        per_device_batch=config.training.batch_size, zero_stage=config.deepspeed.zero_stage,
        bf16=dtype == "bfloat16", learning_rate=config.training.learning_rate,
        weight_decay=config.training.weight_decay, max_grad_norm=config.training.max_grad_norm,
        offload_optimizer=config.deepspeed.offload_optimizer)
    deepspeed_config(optimization, plan.count, user_deepspeed, config.deepspeed.config_file or "")
    return Hardware(plan, dtype, optimization, user_deepspeed)


def _user_deepspeed(config: FinetuneConfig) -> dict | None:
    from tasks.training.deepspeed_config import read_user_config

    return read_user_config(config.deepspeed.config_file) if config.deepspeed.config_file else None


def _settings(config: FinetuneConfig, model_path: str, kept: int | list[int], workers: int,
              dtype: str, objective_settings: dict[str, Any]) -> dict[str, Any]:
    """What determines the trained weights: a run only resumes a checkpoint of the same
    (its digest is the run's fingerprint). ``objective_settings``: the route's part
    (``TrainingInputs.settings``), in its order."""
    return {
        "model": [model_path, config.model.revision, dtype, kept], **objective_settings,
        "lora": config.lora.model_dump() if config.lora.enabled else None,
        "training": config.training.model_dump(
            exclude={"checkpoint_every", "keep_checkpoints", "max_failures"}),
        "deepspeed": config.deepspeed.model_dump(), "workers": workers,
    }


def _datasets(config: FinetuneConfig, training: TrainingRoute, inputs: TrainingInputs,
              plan: WorkerPlan) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(one Ray Dataset per worker, the data report, global batches per epoch): the training
    rows read by the objective, skipped rows announced, planned into global batches."""
    annotated, data_report = training.read(config, inputs)
    if data_report["skipped_rows"]:
        print(f"layercut: skipped {data_report['skipped_rows']} of {data_report['rows']} rows "
              f"(a field missing, empty or not text); first: {data_report.get('first_problem')}",
              file=sys.stderr)
    batch_plan, epoch_steps = _plan(annotated, config, plan.count * config.training.batch_size)
    datasets = _worker_datasets(annotated, batch_plan, plan.count, config.training.batch_size,
                                inputs.objective.fields)
    return datasets, data_report, epoch_steps


def _plan(annotated, config: FinetuneConfig, global_batch: int):
    """(the batch plan, global batches in one pass over the data)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from tasks.training.batch_plan import batches_per_epoch, plan_global_batches

    parts = [batch for batch in annotated.select_columns(["_key", "source", "_problem"])
             .iter_batches(batch_format="pyarrow", batch_size=65536)]
    table = pa.concat_tables(parts)
    table = table.filter(pc.equal(table["_problem"], ""))
    keys, sources = np.asarray(table["_key"].to_numpy(zero_copy_only=False)), table["source"].to_pylist()
    return (plan_global_batches(keys, sources, steps=config.training.steps,
                                global_batch=global_batch, seed=config.training.seed),
            batches_per_epoch(keys, sources, global_batch))


def _worker_datasets(annotated, plan, workers: int, per_worker: int,
                     fields: tuple[str, ...]) -> dict[str, Any]:
    """One Ray Dataset per worker: its slots of every step, in step order.

    Materialized before training starts: only the planned rows (steps x global batch) are held,
    and the workers never wait for CPU slots to read data that their own CPUs are blocking
    (on a small cluster the training workers can hold every CPU).
    """
    from tasks.training.batch_plan import place_rows, worker_slots

    keep = [*fields, "_order"]
    return {f"rank{rank}": annotated.map_batches(
                place_rows, batch_format="pyarrow",
                fn_kwargs={"slots": worker_slots(plan, rank, per_worker)})
            .select_columns(keep).sort("_order").materialize()
            for rank in range(workers)}


def _job(config: FinetuneConfig, model: CutModel, inputs: TrainingInputs, hardware: Hardware,
         fingerprint: str, epoch_steps: int, run_name: str):
    """The training loop's job (tasks.training.train_loop.TrainingJob): the cut model, the objective,
    LoRA, DeepSpeed, the schedule."""
    from tasks.model.lora import LoraSettings
    from tasks.training.train_loop import TrainingJob

    spec = replace(config.model.spec(model.source, layers=model.selection), dtype=hardware.dtype,
                   lm_head=inputs.objective.lm_head)
    gradient_checkpointing = (hardware.plan.use_gpu if config.training.gradient_checkpointing == "auto"
                              else config.training.gradient_checkpointing)
    return TrainingJob(
        spec=spec, objective=inputs.objective,
        lora=LoraSettings(r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                          target_modules=tuple(config.lora.target_modules or ()) or None)
        if config.lora.enabled else None,
        optimization=hardware.optimization, steps=config.training.steps,
        warmup_steps=config.training.warmup_steps, decay_steps=config.training.decay_horizon(epoch_steps),
        gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=config.training.checkpoint_every, seed=config.training.seed,
        fingerprint=fingerprint, user_deepspeed=hardware.user_deepspeed,
        user_deepspeed_path=config.deepspeed.config_file or "the DeepSpeed JSON",
        threads=hardware.plan.threads, show_progress=config.show_progress,
        metrics_tags={"run": run_name})


def _fit(config: FinetuneConfig, job, datasets: dict, plan, store: RunStore):
    """Ray Train's run ``train`` in <run>/ray: a local path, or the store itself (its
    controller and workers write checkpoints there through the store's pickled filesystem)."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    from tasks.training.train_loop import cpu_worker_env, train_loop

    filesystem, path = store.files.storage("ray")
    run_config = ray.train.RunConfig(
        name="train", storage_path=path, storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=config.training.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.training.keep_checkpoints),
        worker_runtime_env=None if plan.use_gpu else {"env_vars": cpu_worker_env()})
    trainer = TorchTrainer(
        train_loop, train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.count, use_gpu=plan.use_gpu,
            resources_per_worker={"CPU": plan.cpus, **({"GPU": 1} if plan.use_gpu else {})}),
        run_config=run_config, datasets=datasets,
        dataset_config=ray.train.DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)))
    with user_errors_from_ray():
        result = trainer.fit()
    if result.checkpoint is None:
        raise LayercutError("training finished without a checkpoint")
    return result.checkpoint


def _trained_history(config: FinetuneConfig, checkpoint, fingerprint: str,
                     run_dir: Path | str) -> tuple[list[dict], int]:
    """(the loss history, steps done) of the final checkpoint, refused when another
    configuration trained it (unless --force)."""
    state = _trainer_state(checkpoint)
    if state.get("fingerprint") != fingerprint and not config.force:
        raise LayercutError(f"the latest checkpoint in {run_dir} was trained with a different "
                            "configuration; pass --force to export it anyway")
    return state["history"], state["step"]


def _trainer_state(checkpoint) -> dict[str, Any]:
    """The small trainer-state file of a checkpoint, read without fetching the rest."""
    with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/trainer_state.json") as handle:
        return json.loads(handle.read().decode())


def _export(config: FinetuneConfig, training: TrainingRoute, model: CutModel, inputs: TrainingInputs,
            hardware: Hardware, job, checkpoint, history: list[dict], steps_done: int,
            store: RunStore) -> None:
    """The artifact in <run>/model: the adapter merged into the cut backbone, in a Ray task
    where a training worker would run (merging needs the model in memory), written through the
    run directory's ``staged_directory`` (``_export_into``)."""
    import ray

    from tasks.export.artifact import ArtifactInfo

    selection = model.selection
    info = ArtifactInfo(
        base_model=config.model.name_or_path, base_model_path=model.source.path,
        layers=selection.count, total_layers=model.total_layers, parameters=model.parameters,
        kept_layers=None if selection.is_prefix else selection.indices,
        parameters_full=model.params[-1], training=config.training.model_dump(),
        lora=config.lora.model_dump() if config.lora.enabled else None,
        objective=inputs.objective.name,
        final_loss=history[-1]["loss"] if history else None, steps_done=steps_done,
        workers=hardware.plan.count, data=inputs.data_path,
        **training.artifact_fields(config, inputs))
    export = ray.remote(**hardware.plan.task_options)(_export_into)
    with user_errors_from_ray():
        ray.get(export.remote(store.files.for_task(), job.spec, checkpoint, info))


def _export_into(files, spec, checkpoint, info) -> None:
    """The export task: the artifact built in a staging directory of the run directory
    ``files`` (pipelines.run_store.files.RunFiles, as ``for_task`` gives it), which becomes
    <run>/model whole once it is complete: renamed into place locally; on an object store
    uploaded from a local temporary directory (removed afterwards), its manifest last."""
    from tasks.export.artifact import export_from_checkpoint

    with files.staged_directory(MODEL_DIR) as staging:
        export_from_checkpoint(spec, checkpoint, staging, info)


def _write_log_and_curve(config: FinetuneConfig, training: TrainingRoute, model: CutModel,
                         history: list[dict], store: RunStore) -> None:
    """training_log.csv (one row per step) and loss_curve.png."""
    log_columns = ["step", "loss", "learning_rate", "tokens", "tokens_per_second", "seconds"]
    if any("masked_pairs" in entry for entry in history):  # contrastive: false negatives masked
        log_columns.append("masked_pairs")
    store.files.write_csv("training_log.csv", log_columns,
              [[entry.get(k, "") for k in log_columns] for entry in history])
    selection = model.selection
    plot_training_loss([h["step"] for h in history], [h["loss"] for h in history],
                       f"{config.model.name_or_path} cut to {selection.count}/{model.total_layers} layers"
                       + ("" if selection.is_prefix else f" ({selection.label})"),
                       partial(store.files.write_text, "loss_curve.png"), ylabel=training.loss_label)


def _summary(config: FinetuneConfig, model: CutModel, inputs: TrainingInputs, hardware: Hardware,
             job, history: list[dict], steps_done: int, data_report: dict[str, Any], fingerprint: str,
             store: RunStore, train_workers: list[dict[str, Any]]) -> FinetuneResult:
    """summary.json: the depth, parameters, losses, throughput, the artifact's path, and where
    each Train worker rank ran (``train_workers``)."""
    selection, parameters, full = model.selection, model.parameters, model.params[-1]
    return FinetuneResult(
        model=config.model.name_or_path, objective=inputs.objective.name,
        layers=selection.count, total_layers=model.total_layers,
        kept_layers=None if selection.is_prefix else list(selection.indices),
        parameters=parameters, parameters_full=full,
        parameters_removed_pct=round(100.0 * (1 - parameters / full), 2),
        steps=steps_done, lr_decay_steps=job.decay_steps, workers=hardware.plan.count,
        global_batch=hardware.plan.count * config.training.batch_size,
        first_loss=history[0]["loss"] if history else None,
        final_loss=history[-1]["loss"] if history else None,
        mean_tokens_per_second=(sum(h["tokens"] for h in history)
                                / max(sum(h["seconds"] for h in history), 1e-9)) if history else None,
        masked_pairs=sum(h.get("masked_pairs", 0) for h in history),
        artifact=store.files.where(MODEL_DIR), data=data_report,
        fingerprint=fingerprint,
        # Which node trained each rank (the run's last attempt): on a cluster, where the work went.
        train_workers=train_workers,
    )


def _placement(checkpoint, workers: int) -> list[dict[str, Any]]:
    """Where each Train worker rank ran when it wrote ``checkpoint`` (rank, Ray node id, node IP):
    the files each worker adds to its part (tasks.training.train_loop.worker_placement)."""
    from tasks.training.train_loop import PLACEMENT_FILE

    placement = []
    for rank in range(workers):
        path = f"{checkpoint.path}/{PLACEMENT_FILE.format(rank=rank)}"
        try:
            with checkpoint.filesystem.open_input_file(path) as handle:
                placement.append(json.loads(handle.read().decode()))
        except FileNotFoundError:  # a checkpoint written before placements were recorded
            return []
    return placement


def print_summary(summary: FinetuneResult, run_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fine-tuned {summary.model}")
    for column in ("layers kept", "parameters", "removed", "steps", "first loss", "final loss"):
        table.add_column(column, justify="right")
    table.add_row(f"{summary.layers}/{summary.total_layers}",
                  f"{summary.parameters / 1e6:.1f}M", f"{summary.parameters_removed_pct:.1f}%",
                  str(summary.steps), f"{summary.first_loss:.4f}", f"{summary.final_loss:.4f}")
    console = Console()
    console.print(table)
    console.print(f"model in {summary.artifact}; log, loss curve and checkpoints in {run_dir}")


def render(config: FinetuneConfig, summary: FinetuneResult) -> int:
    # The artifact's parent, of a path or a URI (Path would fold 's3://' into 's3:/').
    print_summary(summary, summary.artifact.rstrip("/").rsplit("/", 1)[0])
    return 0


# `layercut finetune` (registered in pipelines/cli.py)
ENTRY = Stage(FinetuneConfig, STAGE, run, render)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut finetune` runs.
    from pipelines import finetune

    sys.exit(run_as_script("finetune", finetune.ENTRY))
