"""The main job: per model, stage 1 picks depths; a Ray Tune experiment fine-tunes (stage 2) and
evaluates (stage 3) each depth; a report compares them.

    layercut run                                   # local default: SmolLM2-135M on this machine
    layercut run --config four-families            # the cluster sweep (ray job submit)
    python -m pipelines.sweep --config my-sweep.yaml

For each model, stage 1 runs in this driver (its Ray tasks do the work) and yields the L3Prune
small and large depths; the trials are those depths joined with the grid (depths: counts or
keep/prune fractions, tasks/model/depth.py). All models' trials share ONE Tune experiment; each trial is a Tune function that launches
its own Ray Train run (stage 2), then stage 3, then measures encode latency and peak memory, and
reports to Tune. Trials queue as pending until their Train workers get resources, so an
autoscaling cluster grows as they wait.

The steps, one module each: sweep_models (the model entries' stage configs), sweep_resources
(admission against the cluster), sweep_guard (sweep.json: the same configuration or stop),
sweep_trials (the depths of each route, each trial's configs), sweep_tune (the Tune experiment),
report; the routes (pipelines/routes/) supply what differs between the embedding and the
classification use case.

Rerunning the same command resumes: stage 1 reloads its saved batches, Tune restores its
experiment (finished trials are not run again; unfinished ones restart and their stages resume
from their own checkpoints and result files).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.commands import Stage, run_as_script
from pipelines.ray_runtime import ensure_ray
from pipelines.results import SweepResult
from pipelines.routes.registry import ROUTES, routes_of
from pipelines.run_store.location import absolute
from pipelines.run_store.run import RunStore
from pipelines.schemas.sweep import STAGE, SweepConfig
from pipelines.sweep_guard import SWEEP_RECORD, fingerprint, guard_and_record
from pipelines.sweep_models import resolve_models
from pipelines.sweep_plan import ModelPlan, Trial, base_layer_count
from pipelines.sweep_resources import check_resources
from pipelines.sweep_trials import check_one_trial_per_count, plan_trials, trial_specs
from pipelines.sweep_tune import run_experiment
from tasks.errors import LayercutError
from tasks.model.model_access import check_model_access


def run(config: SweepConfig) -> SweepResult:
    """Stage 1 per model, the Tune experiment over all trials, the report; returns the sweep's
    result (summary.json's record)."""
    from pipelines.report import write_report

    run_dir = absolute(config.run_dir())
    RunStore(run_dir).create()  # on a store: the bucket answers, or one line before any work
    plans = resolve_models(config)
    concurrency = admit(config, plans, run_dir)
    for plan in plans:
        for route in routes_of(plan):
            route.prepare(config, plan)
    trials = plan_trials(plans, config.l3prune, config.classification)
    check_one_trial_per_count(trials)
    print(f"layercut: {len(trials)} trials: " + ", ".join(t.key for t in trials), file=sys.stderr)
    references = {name: route.references(config, plans, run_dir) for name, route in ROUTES.items()}
    specs = trial_specs(config, plans, trials, serving_texts(config, plans), run_dir)
    outcomes = run_experiment(config, specs, concurrency, run_dir)
    for route in ROUTES.values():  # e.g. latency, measured with no trial running any more
        outcomes = route.after_trials(specs, outcomes)
    return write_report(run_dir, config, plans, trials, outcomes, references)


def admit(config: SweepConfig, plans: list[ModelPlan], run_dir: Path | str) -> int | None:
    """Everything checked before any work: model access (before Ray and any GPU is asked for:
    a gated model without a token fails here, in one line), the cluster's resources, each
    route's inputs, and the run directory's earlier configuration. Returns how many trials can
    train at once (None: no limit).

    Raises:
        LayercutError: the first check that fails, in one line.
    """
    for name, revision in dict.fromkeys(model for plan in plans for model in plan.base_models()):
        check_model_access(name, revision)
    ensure_ray(config.address)
    concurrency = check_resources(plans, config.tune)
    for plan in plans:
        for route in routes_of(plan):
            route.check_inputs(plan)  # e.g. training inputs as evaluation's instructions
    guard_and_record(run_dir, config, plans)
    return concurrency


def serving_texts(config: SweepConfig, plans: list[ModelPlan]) -> dict[str, list[str]]:
    """{model label: texts its trials measure encode latency on}, for the models with a route
    that measures latency (config.latency.texts of them)."""
    texts = {}
    for plan in plans:
        for route in routes_of(plan):
            found = route.serving_texts(plan, config.latency.texts)
            if found is not None:
                texts[plan.label] = found
    return texts


def describe_plan(config: SweepConfig) -> str:
    """The trials ``config`` would run, without training or starting Ray (`layercut run --plan`):
    per model its layer count and global batch, then one line per trial (key, layers kept,
    origins). L3Prune picks come from stage 1's selection.json when this run directory holds one
    of the same configuration; otherwise they are listed as "after stage 1"."""
    files = RunStore(absolute(config.run_dir())).files
    recorded = files.read_json(SWEEP_RECORD).get("models", {}) if files.exists(SWEEP_RECORD) else {}
    lines = []
    for plan in resolve_models(config):
        training, workers = plan.finetune.training, plan.finetune.workers.num_workers
        batch = (f"global batch {training.batch_size * workers} ({workers} workers x {training.batch_size})"
                 if workers != "auto" else f"batch {training.batch_size} per worker, one worker per GPU")
        try:
            plan.total_layers = base_layer_count(plan.finetune)
        except LayercutError as error:  # e.g. a hub model offline: depths stay symbolic
            lines.append(f"{plan.label}: {batch}, {training.steps} steps; layer count unknown ({error})")
            lines += [f"  {plan.label}: grid {depth}" for depth in plan.grid]
            continue
        lines.append(f"{plan.label}: {plan.total_layers} layers, {batch}, {training.steps} steps")
        same = recorded.get(plan.label) == fingerprint(plan)
        notes = [line for route in routes_of(plan) for line in route.preview(plan, same, config)]
        for trial in plan_trials([plan], config.l3prune if plan.stage1 is not None else False,
                                 config.classification):
            lines.append(_trial_line(trial, plan.total_layers))
        lines += notes
    return "\n".join(lines)


def _trial_line(trial: Trial, total: int) -> str:
    """`  <key>: <kept>/<total> layers (<selection>) on <dataset> (<origins>)`."""
    task = f" on {trial.dataset}" if trial.dataset else ""
    which = f" ({trial.depth})" if trial.kept else ""
    return f"  {trial.key}: {trial.layers}/{total} layers{which}{task} ({', '.join(trial.origins)})"


def render(config: SweepConfig, summary: SweepResult) -> int:
    """The report, then exit status 1 when a trial failed (rerunning retries it)."""
    print(RunStore(summary.run_dir).files.read_text("report.md"))
    print(f"report, plots and every trial's model in {summary.run_dir}")
    if summary.failed:
        print(f"layercut: error: {len(summary.failed)} trial(s) failed: "
              f"{', '.join(summary.failed)}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


# `layercut run` (registered in pipelines/cli.py); --plan previews the trials
ENTRY = Stage(SweepConfig, STAGE, run, render, preview=describe_plan)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut run` runs.
    from pipelines import sweep

    sys.exit(run_as_script("run", sweep.ENTRY))
