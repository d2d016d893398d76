"""The classification route's ``Route``: its steps, registered in pipelines/routes/registry.py."""

from __future__ import annotations

from pipelines.routes.base import Route, nothing
from pipelines.routes.classification import plan, report, trial
from pipelines.routes.classification.training import ClassificationTraining
from pipelines.route_names import CLASSIFICATION

ROUTE = Route(
    name=CLASSIFICATION,
    training=ClassificationTraining(),
    active=lambda model: bool(model.classifiers),  # resolve sets one stage-2 config per dataset
    resolve=plan.resolve,
    stage_workers=lambda model: [("classify", stage.workers) for stage in model.classify.values()],
    check_inputs=nothing,
    prepare=plan.prepare,
    trials=plan.trials,
    preview=plan.preview,
    serving_texts=lambda model, count: None,  # a classifier's latency is not measured
    references=plan.references,
    finetune_config=lambda model, one: model.classifiers[one.dataset],  # the trial's dataset's
    trial_configs=trial.trial_configs,
    evaluate_trial=trial.evaluate_trial,
    tune_metrics=lambda result: {},  # accuracy and macro-F1 are the result's own numbers
    report=report.report,
)
