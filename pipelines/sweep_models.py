"""The sweep's first step: every model entry of a ``SweepConfig`` becomes a ``ModelPlan`` with
its stage configs resolved and validated, so a bad key fails before any work.

Each stage config is the model's packaged (or user) config with the run's overrides, the model
entry's overrides and the sweep's own keys (output inside the sweep's run dir, data root,
progress, autoscaling) laid over it in that order. Stage 2's is shared; each route the entry
names (``objectives``) resolves the rest (pipelines/routes/<route>/plan.py).
"""

from __future__ import annotations

from pipelines.routes.registry import ROUTES
from pipelines.routes.base import ResolveContext
from pipelines.run_store.location import absolute, run_path
from pipelines.schemas.finetune import FinetuneConfig
from pipelines.schemas.sweep import SweepConfig
from pipelines.sweep_plan import ModelPlan, stage_config


def resolve_models(config: SweepConfig) -> list[ModelPlan]:
    """Every model's stage configs, validated now (a bad key fails before any work).

    Raises:
        LayercutError: naming the model's stage config and the key.
    """
    run_dir = absolute(config.run_dir())
    plans = []
    for entry in config.models:
        label = entry.name()
        data = {"data_root": config.data_root} if config.data_root else {}
        wait = {"workers": {"wait_for_resources": True}} if config.tune.autoscaling else {}
        common = {"address": config.address} if config.address else {}
        finetune_trees = [config.overrides.finetune, entry.overrides.finetune, wait,
                          {"output_dir": str(run_path(run_dir, "trials")), "data": data, "layers": None,
                           "show_progress": config.show_progress, "workers": common}]
        finetune = stage_config(FinetuneConfig, entry.finetune or entry.config, "finetune",
                                finetune_trees)
        plan = ModelPlan(label, None, finetune, None, entry.grid or config.grid)
        context = ResolveContext(config, entry, label, run_dir, data, wait, common, finetune_trees)
        for name, route in ROUTES.items():
            if name in entry.objectives:
                route.resolve(context, plan)
        plans.append(plan)
    return plans
