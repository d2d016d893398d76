"""The contrastive route's ``Route``: its steps, registered in pipelines/routes/registry.py."""

from __future__ import annotations

from pipelines.routes.base import Route
from pipelines.routes.contrastive import plan, report, serving, trial
from pipelines.routes.contrastive.training import ContrastiveTraining
from pipelines.route_names import CONTRASTIVE

ROUTE = Route(
    name=CONTRASTIVE,
    training=ContrastiveTraining(),
    active=lambda model: model.evaluate is not None,  # resolve sets its stage-3 config
    resolve=plan.resolve,
    stage_workers=plan.stage_workers,
    check_inputs=plan.check_instructions,
    prepare=plan.prepare,
    trials=plan.trials,
    preview=plan.preview,
    serving_texts=plan.serving_texts,
    references=lambda config, plans, run_dir: {},  # each depth's reference is itself untrained
    finetune_config=lambda model, one: model.finetune,  # stage 2 as the model entry resolves it
    trial_configs=trial.trial_configs,
    evaluate_trial=trial.evaluate_trial,
    tune_metrics=trial.tune_metrics,
    report=report.report,
    after_trials=serving.measure_finished,  # latency and memory, one depth at a time
)
