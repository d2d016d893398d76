"""The classification route's part of the sweep before its trials ("Why Lift so Heavy?"): per
dataset of the sweep's ``classification`` section, stage 2's config (objective classification)
and stage 3's (pipelines/classify.py); its trials (the section's depths, or its grid's); the
zero-shot reference of the unpruned model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.route_names import CLASSIFICATION
from pipelines.routes.base import ResolveContext, TrialOptions
from pipelines.run_store.location import run_path
from pipelines.schemas.classify import ClassifyConfig
from pipelines.schemas.finetune import FinetuneConfig
from pipelines.sweep_plan import ModelPlan, Trial, base_layer_count, depth_origins, stage_config, trials_of
from tasks.errors import LayercutError

if TYPE_CHECKING:
    from pipelines.results import ClassifyResult
    from pipelines.schemas.sweep import SweepConfig


def resolve(context: ResolveContext, plan: ModelPlan) -> None:
    """Per dataset: stage 2's config with the classification objective, and stage 3's."""
    config, entry, label = context.config, context.entry, context.label
    for name in config.classification.datasets:
        task = {"dataset": name, **context.data}
        plan.classifiers[name] = stage_config(
            FinetuneConfig, entry.finetune or entry.config, "finetune",
            [*context.finetune_trees, {"objective": CLASSIFICATION, "classification": task}])
        plan.classify[name] = stage_config(
            ClassifyConfig, entry.classify or entry.config, "classify", [
                config.overrides.classify, entry.overrides.classify, context.wait,
                {"output_dir": str(run_path(context.run_dir, "trials")), "layers": None,
                 "workers": context.common, "show_progress": config.show_progress,
                 "classification": task}])
        if plan.classify[name].workers.executor != "ray":
            raise LayercutError(f"model {label}: a sweep classifies on Ray workers "
                                "(classify workers.executor must be ray)")


def prepare(config: SweepConfig, plan: ModelPlan) -> None:
    """The layer count, unless a route before this one has set it (stage 1 reads it)."""
    if not plan.total_layers:
        plan.total_layers = base_layer_count(plan.finetune)


def trials(plan: ModelPlan, total: int, options: TrialOptions) -> list[Trial]:
    """Per dataset, the section's ``layers`` when given, else its grid (or the model's)."""
    route = options.classification
    if route.layers is not None:
        origins = depth_origins(route.layers, total, "layers", f"classification.layers of {plan.label}")
    else:
        origins = depth_origins(route.grid or plan.grid, total, "grid", f"{plan.label}'s classification grid")
    return [trial for name in plan.classifiers
            for trial in trials_of(CLASSIFICATION, plan.label, origins, name)]


def references(config: SweepConfig, plans: list[ModelPlan],
               run_dir: Path | str) -> dict[str, ClassifyResult]:
    """The unpruned model's zero-shot accuracy with each dataset's prompt: the reference line of
    the route ({"<label>-<dataset>": stage 3's ``ClassifyResult``}), scored once, then reused;
    {} when the section's ``zero_shot`` is off."""
    from pipelines import classify

    if not config.classification.zero_shot:
        return {}
    results = {}
    for plan in plans:
        for name, stage in plan.classify.items():
            print(f"layercut: zero-shot {plan.label} on {name}", file=sys.stderr)
            reference = stage.model_copy(update={
                "output_dir": str(run_path(run_dir, "zero-shot")), "name": f"{plan.label}/{name}",
                "model": plan.classifiers[name].model})
            results[f"{plan.label}-{name}"] = classify.run(reference)
    return results


def preview(plan: ModelPlan, same_config: bool, config: SweepConfig) -> list[str]:
    """`layercut run --plan`: nothing to add (every depth is known before any work)."""
    return []
