"""The contrastive route's part of the sweep before its trials: its stage configs (stage 1 and
stage 3), what it needs from the cluster, the checks before any work (instructions), stage 1
(the L3Prune picks) and the train/test overlap, and its trials (the grid's depths and the picks).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from pipelines.results import LayerLossResult
from pipelines.route_names import CLASSIFICATION, CONTRASTIVE
from pipelines.routes.base import ResolveContext, TrialOptions, l3prune_picks
from pipelines.run_store.location import run_path
from pipelines.run_store.run import RunStore
from pipelines.schemas.evaluate import EvaluateConfig
from pipelines.schemas.layer_loss import LayerLossConfig
from pipelines.sweep_plan import ModelPlan, Trial, depth_origins, stage_config, trials_of
from tasks.errors import LayercutError
from tasks.model.layer_selection import LayerSelection

if TYPE_CHECKING:
    from pipelines.schemas.sweep import SweepConfig


def resolve(context: ResolveContext, plan: ModelPlan) -> None:
    """Stage 1's and stage 3's configs of the model; an evaluation task's typo fails now, not
    after hours of fine-tuning. With the classification route too, the mteb probes of its
    datasets."""
    from pipelines.evaluate import check_tasks
    from tasks.evaluation.mteb_tasks import probe_task_name

    config, entry, label = context.config, context.entry, context.label
    data, wait, common = context.data, context.wait, context.common
    plan.layer_loss = stage_config(LayerLossConfig, entry.layer_loss or entry.config, "layer_loss", [
        config.overrides.layer_loss, entry.overrides.layer_loss, wait,
        {"output_dir": str(run_path(context.run_dir, "layer-loss")), "name": label, "data": data,
         "workers": common}])
    plan.evaluate = stage_config(EvaluateConfig, entry.evaluate or entry.config, "evaluate", [
        config.overrides.evaluate, entry.overrides.evaluate, wait,
        {"output_dir": str(run_path(context.run_dir, "trials")), "layers": None, "workers": common,
         "show_progress": config.show_progress, **data}])
    check_tasks(plan.evaluate)  # a task typo fails now, not after hours of fine-tuning
    if plan.evaluate.workers.executor != "ray":
        raise LayercutError(f"model {label}: a sweep evaluates on Ray workers "
                            "(evaluate workers.executor must be ray)")
    if config.classification.probe and CLASSIFICATION in entry.objectives:
        plan.probe_tasks = [probe_task_name(name) for name in config.classification.datasets]
        check_tasks(plan.evaluate.model_copy(update={"tasks": plan.probe_tasks}))


def stage_workers(plan: ModelPlan) -> list[tuple[str, object]]:
    """Stage 3's workers, and stage 1's when it runs on Ray."""
    stages = [("evaluate", plan.evaluate.workers)]
    if plan.layer_loss.workers.executor == "ray":
        stages.append(("layer_loss", plan.layer_loss.workers))
    return stages


def query_instructions(evaluate: EvaluateConfig) -> dict[str, str]:
    """{task: instruction} of the tasks whose queries evaluation prepends an instruction to (a
    sweep evaluates its own artifacts, never a sentence-transformers folder)."""
    from pipelines.evaluate import packaged_instructions
    from tasks.evaluation.mteb_tasks import resolve_task_names

    table = {**packaged_instructions(), **evaluate.instructions}
    return {name: table[name] for name in resolve_task_names(evaluate.tasks) if table.get(name)}


def check_instructions(plan: ModelPlan) -> None:
    """Refuse (one line, naming the key) training data without instructions for a model whose
    evaluation prepends task instructions to queries, unless the stage's
    data.allow_instruction_mismatch acknowledges it. Stage 1 and stage 2 data are both checked:
    the scan and the training see queries as evaluation will."""
    from tasks.training.data import has_instructions, resolve_source

    instructed = query_instructions(plan.evaluate)
    if not instructed:
        return
    seen: dict[tuple, bool] = {}
    for stage, config in (("layer_loss", plan.layer_loss), ("finetune", plan.finetune)):
        data = config.data
        if data.allow_instruction_mismatch:
            continue
        path = resolve_source(data.source, data.local_source, data.data_root)
        key = (path, data.layout, tuple(sorted(data.columns.items())))
        if key not in seen:
            seen[key] = has_instructions(path, data.layout, data.columns)
        if not seen[key]:
            tasks = ", ".join(instructed)
            raise LayercutError(
                f"model {plan.label}: the {stage} training data {path} has no instructions, but "
                f"evaluation prepends task instructions to the queries of {tasks}; train on "
                "instructed data (data.layout: e5, or an instruction column) or set "
                f"{stage} data.allow_instruction_mismatch: true to acknowledge the mismatch")


def prepare(config: SweepConfig, plan: ModelPlan) -> None:
    """Stage 1 (the per-layer loss and the L3Prune picks; its Ray tasks do the work), then the
    train/test overlap of the evaluation tasks, announced for each task that has some."""
    from pipelines import layer_loss

    print(f"layercut: stage 1 for {plan.label}", file=sys.stderr)
    plan.stage1 = layer_loss.run(plan.layer_loss, show_progress=config.show_progress)
    plan.total_layers = plan.stage1.num_layers
    plan.overlap = training_overlap(plan)
    for name, counts in plan.overlap.items():
        if counts["overlapping"]:
            print(f"layercut: {plan.label}: {counts['overlapping']} of {counts['texts']} texts of "
                  f"{name} occur in the training data; its scores are marked", file=sys.stderr)


def training_overlap(plan: ModelPlan) -> dict[str, dict[str, int]]:
    """For each evaluation task of the model: how many of its evaluated texts occur in the
    model's training triplets (query, positive or negative), compared through hashes."""
    from tasks.evaluation.mteb_tasks import load_task, resolve_task_names
    from tasks.evaluation.overlap import task_overlap, text_hashes
    from tasks.training.data import annotated_triplets, resolve_source

    data = plan.finetune.data
    path = resolve_source(data.source, data.local_source, data.data_root)
    annotated, _ = annotated_triplets(path, seed=0, invalid_rows="skip", columns=data.columns,
                                      layout=data.layout)
    training: set[int] = set()
    for batch in annotated.select_columns(["query", "positive", "negative"]).iter_batches(batch_size=65536):
        for column in ("query", "positive", "negative"):
            training |= text_hashes(batch[column])
    evaluate = plan.evaluate
    return {name: task_overlap(load_task(name, evaluate.data_root, evaluate.task_selection()), training)
            for name in resolve_task_names(evaluate.tasks)}  # checked in resolve_models


def trials(plan: ModelPlan, total: int, options: TrialOptions) -> list[Trial]:
    """The grid's depths of ``total`` layers (tasks/model/depth.py) and the stage-1 picks named in
    ``options.l3prune`` ("small", "large")."""
    origins = depth_origins(plan.grid, total, "grid", f"{plan.label}'s grid")
    for pick in options.l3prune:
        picked = LayerSelection.prefix(plan.stage1.pick(pick).layers, total)
        origins.setdefault(picked, []).append(f"l3prune-{pick}")
    return trials_of(CONTRASTIVE, plan.label, origins)


def recorded_picks(plan: ModelPlan, same_config: bool) -> bool:
    """For `layercut run --plan`: load stage 1's selection.json into ``plan.stage1`` when this
    run directory holds one of the same configuration (``same_config``); else set it to None
    (the layer count is ``plan.total_layers``). Returns whether the picks were loaded."""
    files, name = RunStore(plan.layer_loss.run_dir()).files, "selection.json"
    picked = files.exists(name) and same_config
    plan.stage1 = LayerLossResult.from_json(files.read_json(name), files.where(name)) if picked else None
    return picked


def preview(plan: ModelPlan, same_config: bool, config: SweepConfig) -> list[str]:
    """`layercut run --plan`: the L3Prune picks of stage 1 when this run directory holds them
    for the same configuration (``same_config``; loaded into ``plan.stage1``), else a note that
    they come after stage 1."""
    picked = recorded_picks(plan, same_config)
    picks = l3prune_picks(config.l3prune)  # what plan_trials will add, once stage 1 has run
    depths = " and ".join(picks) + (" depths" if len(picks) > 1 else " depth")
    return [] if picked or not picks else [f"  {plan.label}: L3Prune {depths} after stage 1"]


def serving_texts(plan: ModelPlan, count: int) -> list[str]:
    """Documents (positives) of the model's training data: what an encoder serves."""
    from tasks.training.data import resolve_source, sample_triplet_batches

    data = plan.finetune.data
    path = resolve_source(data.source, data.local_source, data.data_root)
    batches, _ = sample_triplet_batches(path, num_batches=1, batch_size=count, seed=0,
                                        invalid_rows="skip", columns=data.columns,
                                        layout=data.layout)
    return list(batches[0]["positive"])
