"""Stage 2: fine-tune a truncation with Ray Train + DeepSpeed + LoRA; export a standard model.

The driver resolves the model and depth, plans the task-homogeneous global batches with Ray Data
(each worker gets its own dataset of its slots; no worker reads the whole corpus), runs a Ray
Train TorchTrainer (one worker per GPU, CPU workers locally, a DeepSpeed engine in each), then
merges the final adapter into the cut backbone and writes the artifact: a plain transformers
model directory with sentence-transformers files and a model card.

    layercut finetune --config smollm2-135m --layers 8 --data-root ../shared/data
    python -m pipelines.finetune --config llama3-8b --layers prune:0.3

Rerunning the same command resumes: Ray Train restores the run (same name and storage) from its
latest checkpoint; a finished run is not trained again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines import resolve
from pipelines.commands import Stage, run_as_script
from pipelines.evaluate import packaged_instructions  # the table `layercut evaluate` applies
from pipelines.fingerprints import digest
from pipelines.plots import plot_training_loss
from pipelines.ray_runtime import ensure_ray, plan_workers, user_errors_from_ray
from pipelines.run_store.guard import Refusal
from pipelines.run_store.run import RunStore
from pipelines.schemas.finetune import STAGE, FinetuneConfig
from tasks.errors import LayercutError
from tasks.lora import PROJECTIONS

MODEL_DIR = "model"


def _settings(config: FinetuneConfig, model_path: str, data_path: str, kept: int | list[int],
              workers: int, dtype: str, label_names: list[str] | None = None,
              wrapper: tuple[str, str] | None = None) -> dict[str, Any]:
    """What determines the trained weights: a run only resumes a checkpoint of the same
    (its digest is the run's fingerprint)."""
    if config.objective == "classification":
        task = {"classification": [config.classification.model_dump(
            exclude={"data_root", "test_split", "source", "local_source"}), label_names, data_path]}
    else:
        # The rendered wrapper too: the same config on another tokenizer revision is another run.
        task = {"encoder": config.encoder.model_dump(exclude={"forward_batch_size"}),
                "wrapper": list(wrapper) if wrapper else None,
                "data": [data_path, config.data.layout, config.data.columns, config.data.invalid_rows],
                "loss": config.loss.model_dump()}
    return {
        "model": [model_path, config.model.revision, dtype, kept], **task,
        "lora": config.lora.model_dump() if config.lora.enabled else None,
        "training": config.training.model_dump(
            exclude={"checkpoint_every", "keep_checkpoints", "max_failures"}),
        "deepspeed": config.deepspeed.model_dump(), "workers": workers,
    }


# A run that failed before its first checkpoint guards nothing; --force resumes anyway.
REFUSAL = Refusal("a run", "with a different configuration", "use another --name, delete it, or "
                  "pass --force to resume its checkpoint with this config")


def _user_deepspeed(config: FinetuneConfig) -> dict | None:
    from tasks.deepspeed_config import read_user_config

    return read_user_config(config.deepspeed.config_file) if config.deepspeed.config_file else None


def _worker_datasets(annotated, plan, workers: int, per_worker: int,
                     fields: tuple[str, ...]) -> dict[str, Any]:
    """One Ray Dataset per worker: its slots of every step, in step order.

    Materialized before training starts: only the planned rows (steps x global batch) are held,
    and the workers never wait for CPU slots to read data that their own CPUs are blocking
    (on a small cluster the training workers can hold every CPU).
    """
    from tasks.batch_plan import place_rows, worker_slots

    keep = [*fields, "_order"]
    return {f"rank{rank}": annotated.map_batches(
                place_rows, batch_format="pyarrow",
                fn_kwargs={"slots": worker_slots(plan, rank, per_worker)})
            .select_columns(keep).sort("_order").materialize()
            for rank in range(workers)}


def _plan(annotated, config: FinetuneConfig, global_batch: int):
    """(the batch plan, global batches in one pass over the data)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from tasks.batch_plan import batches_per_epoch, plan_global_batches

    parts = [batch for batch in annotated.select_columns(["_key", "source", "_problem"])
             .iter_batches(batch_format="pyarrow", batch_size=65536)]
    table = pa.concat_tables(parts)
    table = table.filter(pc.equal(table["_problem"], ""))
    keys, sources = np.asarray(table["_key"].to_numpy(zero_copy_only=False)), table["source"].to_pylist()
    return (plan_global_batches(keys, sources, steps=config.training.steps,
                                global_batch=global_batch, seed=config.training.seed),
            batches_per_epoch(keys, sources, global_batch))


def _fit(config: FinetuneConfig, job, datasets: dict, plan, run_dir: Path):
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    from tasks.training import cpu_worker_env, train_loop

    run_config = ray.train.RunConfig(
        name="train", storage_path=str((run_dir / "ray").resolve()),
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


def _trainer_state(checkpoint) -> dict[str, Any]:
    """The small trainer-state file of a checkpoint, read without fetching the rest."""
    with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/trainer_state.json") as handle:
        return json.loads(handle.read().decode())


def _placement(checkpoint, workers: int) -> list[dict[str, Any]]:
    """Where each Train worker rank ran when it wrote ``checkpoint`` (rank, Ray node id, node IP):
    the files each worker adds to its part (tasks.training.worker_placement)."""
    from tasks.training import PLACEMENT_FILE

    placement = []
    for rank in range(workers):
        path = f"{checkpoint.path}/{PLACEMENT_FILE.format(rank=rank)}"
        try:
            with checkpoint.filesystem.open_input_file(path) as handle:
                placement.append(json.loads(handle.read().decode()))
        except FileNotFoundError:  # a checkpoint written before placements were recorded
            return []
    return placement


def _objective(config: FinetuneConfig, tokenizer):
    """(objective, training data path, label names or None, column mapping) of the config.

    The classification prompt is checked against the tokenizer here, before any worker starts
    (a label word that encodes to nothing, a max_length that leaves no room for the text).
    """
    from tasks.data import resolve_source
    from tasks.objectives import ClassificationObjective, ContrastiveObjective
    from tasks.verbalizer import VerbalizerScorer

    if config.objective == "contrastive":
        path = resolve_source(config.data.source, config.data.local_source, config.data.data_root)
        return (ContrastiveObjective(config.encoder.prompt(), config.encoder.pooling,
                                     config.loss.scale, config.loss.mask_duplicate_positives),
                path, None, config.data.columns)
    task = config.classification  # with the data root resolved (resolve.finetune_config)
    label_names = resolve.label_names(task)
    prompt = task.prompt(label_names)
    VerbalizerScorer(tokenizer, prompt)
    path, columns = task.split_path(task.train_split)
    return ClassificationObjective(prompt, task.loss), path, label_names, columns


def _classification_info(config: FinetuneConfig, objective) -> dict[str, Any] | None:
    """What the artifact must carry to classify: template, labels, words (tasks.verbalizer)."""
    if objective.name != "classification":
        return None
    prompt = objective.prompt
    return {"dataset": config.classification.label(), "template": prompt.template,
            "label_names": list(prompt.label_names),
            "verbalizers": [list(words) for words in prompt.verbalizers],
            "max_length": prompt.max_length, "loss": objective.loss}


def run(config: FinetuneConfig) -> dict[str, Any]:
    """Train (or resume) and export; returns the summary written to summary.json."""
    import ray

    from tasks.artifact import LAYERCUT_FILE, ArtifactInfo, export_from_checkpoint
    from tasks.classification_data import annotated_labeled
    from tasks.data import annotated_triplets
    from tasks.deepspeed_config import OptimizationSettings, deepspeed_config
    from tasks.lora import LoraSettings
    from tasks.models import load_tokenizer, parameters_per_depth, resolve_model
    from tasks.prompts import PromptFormatter
    from tasks.pruning import resolve_selection
    from tasks.training import TrainingJob

    config = resolve.finetune_config(config)
    if config.layers is None:
        raise LayercutError("give the depth to keep: --layers N (layers), --layers prune:0.3 or --layers keep:0.7")
    if config.model.dtype == "float16":
        raise LayercutError("float16 training is not supported: use model.dtype bfloat16 or float32")
    source = resolve_model(config.model.name_or_path)
    total_layers, params = parameters_per_depth(
        source, trust_remote_code=config.model.trust_remote_code, revision=config.model.revision,
        lm_head=config.objective == "classification")
    selection = resolve_selection(config.layers, total_layers)
    kept, parameters = selection.count, selection.parameters(params)
    tokenizer = load_tokenizer(source, trust_remote_code=config.model.trust_remote_code,
                               revision=config.model.revision)
    wrapper = None
    if config.objective == "contrastive":
        formatter = PromptFormatter(tokenizer, config.encoder.prompt())  # a bad setup fails now
        wrapper = (formatter.prefix, formatter.suffix)
    unknown = [t for t in (config.lora.target_modules or []) if t not in PROJECTIONS]
    if unknown:
        print(f"layercut: note: lora.target_modules {unknown} are not standard projections",
              file=sys.stderr)
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
    # A contradicting DeepSpeed JSON fails here, before any worker starts.
    deepspeed_config(optimization, plan.count, user_deepspeed, config.deepspeed.config_file or "")

    objective, data_path, label_names, data_columns = _objective(config, tokenizer)
    store = RunStore(config.run_dir(selection)).create()
    run_dir = store.root
    settings = _settings(config, source.path, data_path, selection.to_json(), plan.count, dtype,
                         label_names, wrapper)
    fingerprint = digest(settings)
    finished = store.finished("summary.json", fingerprint, requires=(f"{MODEL_DIR}/{LAYERCUT_FILE}",))
    if finished is not None:
        return finished
    guard = store.guard()
    guard.check(settings, has_results=bool(store.files.names("ray/train", "step-*")),
                refusal=REFUSAL, force=config.force)
    store.record_config(config)

    global_batch = plan.count * config.training.batch_size
    if objective.name == "classification":
        annotated, data_report = annotated_labeled(
            data_path, label_names=label_names, columns=data_columns, seed=config.training.seed,
            invalid_rows=config.classification.invalid_rows, source=config.classification.label())
    else:
        annotated, data_report = annotated_triplets(
            data_path, seed=config.training.seed, invalid_rows=config.data.invalid_rows,
            columns=config.data.columns, layout=config.data.layout)
    if data_report["skipped_rows"]:
        print(f"layercut: skipped {data_report['skipped_rows']} of {data_report['rows']} rows "
              f"(a field missing, empty or not text); first: {data_report.get('first_problem')}",
              file=sys.stderr)
    batch_plan, epoch_steps = _plan(annotated, config, global_batch)
    datasets = _worker_datasets(annotated, batch_plan, plan.count, config.training.batch_size,
                                objective.fields)

    spec = replace(config.model.spec(source, layers=selection), dtype=dtype, lm_head=objective.lm_head)
    gradient_checkpointing = (plan.use_gpu if config.training.gradient_checkpointing == "auto"
                              else config.training.gradient_checkpointing)
    job = TrainingJob(
        spec=spec, objective=objective,
        lora=LoraSettings(r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                          target_modules=tuple(config.lora.target_modules or ()) or None)
        if config.lora.enabled else None,
        optimization=optimization, steps=config.training.steps,
        warmup_steps=config.training.warmup_steps, decay_steps=config.training.decay_horizon(epoch_steps),
        gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=config.training.checkpoint_every, seed=config.training.seed,
        fingerprint=fingerprint, user_deepspeed=user_deepspeed,
        user_deepspeed_path=config.deepspeed.config_file or "the DeepSpeed JSON",
        threads=plan.threads, show_progress=config.show_progress,
        metrics_tags={"run": run_dir.name})
    guard.record(settings)
    checkpoint = _fit(config, job, datasets, plan, run_dir)

    state = _trainer_state(checkpoint)
    if state.get("fingerprint") != fingerprint and not config.force:
        raise LayercutError(f"the latest checkpoint in {run_dir} was trained with a different "
                            "configuration; pass --force to export it anyway")
    history = state["history"]
    info = ArtifactInfo(
        base_model=config.model.name_or_path, base_model_path=source.path,
        layers=kept, total_layers=total_layers, parameters=parameters,
        kept_layers=None if selection.is_prefix else selection.indices,
        parameters_full=params[-1], pooling=config.encoder.pooling,
        prompt=config.encoder.prompt(), training=config.training.model_dump(),
        lora=config.lora.model_dump() if config.lora.enabled else None,
        loss_scale=config.loss.scale, objective=objective.name,
        classification=_classification_info(config, objective),
        final_loss=history[-1]["loss"] if history else None, steps_done=state["step"],
        workers=plan.count, data=data_path,
        instructions=packaged_instructions() if objective.name == "contrastive" else None)
    # Merging needs the cut backbone in memory: do it where a training worker would run.
    export = ray.remote(**plan.task_options)(export_from_checkpoint)
    with user_errors_from_ray():
        ray.get(export.remote(spec, checkpoint, (run_dir / MODEL_DIR).resolve(), info))

    log_columns = ["step", "loss", "learning_rate", "tokens", "tokens_per_second", "seconds"]
    if any("masked_pairs" in entry for entry in history):  # contrastive: false negatives masked
        log_columns.append("masked_pairs")
    store.files.write_csv("training_log.csv", log_columns,
              [[entry.get(k, "") for k in log_columns] for entry in history])
    plot_training_loss([h["step"] for h in history], [h["loss"] for h in history],
                       f"{config.model.name_or_path} cut to {kept}/{total_layers} layers"
                       + ("" if selection.is_prefix else f" ({selection.label})"),
                       store.files.local("loss_curve.png"),
                       ylabel="classification loss" if objective.name == "classification" else "InfoNCE loss")
    summary = {
        "model": config.model.name_or_path, "objective": objective.name, "layers": kept, "total_layers": total_layers,
        **({} if selection.is_prefix else {"kept_layers": list(selection.indices)}),
        "parameters": parameters, "parameters_full": params[-1],
        "parameters_removed_pct": round(100.0 * (1 - parameters / params[-1]), 2),
        "steps": state["step"], "lr_decay_steps": job.decay_steps, "workers": plan.count, "global_batch": global_batch,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "mean_tokens_per_second": (sum(h["tokens"] for h in history)
                                   / max(sum(h["seconds"] for h in history), 1e-9)) if history else None,
        "masked_pairs": sum(h.get("masked_pairs", 0) for h in history),
        "artifact": str((run_dir / MODEL_DIR).resolve()), "data": data_report,
        "fingerprint": fingerprint,
        # Which node trained each rank (the run's last attempt): on a cluster, where the work went.
        "train_workers": _placement(checkpoint, plan.count),
    }
    store.save_result("summary.json", summary)
    return summary


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fine-tuned {summary['model']}")
    for column in ("layers kept", "parameters", "removed", "steps", "first loss", "final loss"):
        table.add_column(column, justify="right")
    table.add_row(f"{summary['layers']}/{summary['total_layers']}",
                  f"{summary['parameters'] / 1e6:.1f}M", f"{summary['parameters_removed_pct']:.1f}%",
                  str(summary["steps"]), f"{summary['first_loss']:.4f}", f"{summary['final_loss']:.4f}")
    console = Console()
    console.print(table)
    console.print(f"model in {summary['artifact']}; log, loss curve and checkpoints in {run_dir}")


def render(config: FinetuneConfig, summary: dict[str, Any]) -> int:
    print_summary(summary, Path(summary["artifact"]).parent)
    return 0


# `layercut finetune` (registered in pipelines/cli.py)
ENTRY = Stage(FinetuneConfig, STAGE, run, render)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut finetune` runs.
    from pipelines import finetune

    sys.exit(run_as_script("finetune", finetune.ENTRY))
