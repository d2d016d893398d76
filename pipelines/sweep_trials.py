"""The sweep's trials: each route's depths of each model (``plan_trials``), refused when the
report could not tell two apart, and each trial's stage configs at its depth (``trial_specs``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.routes.registry import ROUTES, routes_of
from pipelines.routes.base import TrialOptions, l3prune_picks
from pipelines.run_store.location import run_path
from pipelines.sweep_plan import ModelPlan, Trial
from tasks.errors import LayercutError

if TYPE_CHECKING:
    from pipelines.schemas.sweep import ClassificationRoute, SweepConfig
    from pipelines.trial import TrialSpec


def plan_trials(plans: list[ModelPlan], use_l3prune: bool | str,
                route: ClassificationRoute | None = None) -> list[Trial]:
    """Depths per model, route by route. Contrastive: the grid's depths of L (tasks/model/depth.py)
    and the L3Prune picks ``use_l3prune`` names (the sweep's ``l3prune``: true both, false
    none, "small" or "large" one). Classification: per dataset, the ``route`` section's depths
    (or its grid's).

    Raises:
        LayercutError: a depth out of range, naming where it was given.
    """
    options = TrialOptions(l3prune_picks(use_l3prune), route)
    trials = []
    for plan in plans:
        total = plan.total_layers or plan.stage1.num_layers
        for each in routes_of(plan):
            trials += each.trials(plan, total, options)
    return trials


def check_one_trial_per_count(trials: list[Trial]) -> None:
    """Refuse, before any work, two trials of one model (and dataset) that keep as many layers:
    the report (pipelines/report.py) places and compares a model's depths by their layer count,
    so a selection beside a prefix of its size would mix up their scores.

    Raises:
        LayercutError: naming the trials and what to do.
    """
    seen: dict[tuple[str, str | None, int], str] = {}
    for trial in trials:
        other = seen.setdefault((trial.model, trial.dataset, trial.layers), trial.key)
        if other != trial.key:
            raise LayercutError(
                f"trials {other} and {trial.key} both keep {trial.layers} layers: the report compares a "
                "model's depths by layer count and cannot yet tell them apart; run them in separate sweeps")


def trial_specs(config: SweepConfig, plans: list[ModelPlan], trials: list[Trial],
                texts: dict[str, list[str]], run_dir: Path | str) -> dict[str, TrialSpec]:
    """{trial key: TrialSpec}: each trial's stage configs at its depth, inside ``run_dir``;
    ``texts``: per model label, the texts its latency is measured on (none: not measured)."""
    from pipelines.trial import TrialSpec

    specs = {}
    for trial in trials:
        plan = next(p for p in plans if p.label == trial.model)
        route = ROUTES[trial.objective]
        finetune = route.finetune_config(plan, trial)
        specs[trial.key] = TrialSpec(
            key=trial.key, model=trial.model, layers=trial.layers, origins=trial.origins,
            finetune=finetune.model_copy(update={"layers": trial.depth, "name": f"{trial.key}/finetune"}),
            latency_texts=texts.get(trial.model, []), latency_batch_size=config.latency.batch_size,
            result_dir=str(run_path(run_dir, f"trials/{trial.key}")), objective=route.name,
            **route.trial_configs(config, plan, trial))
    return specs
