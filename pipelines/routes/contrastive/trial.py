"""A contrastive trial after stage 2: evaluate the artifact on MTEB (stage 3), the same depth
untrained and the classification probes, write the scores into the artifact's card; the result
is result.json's record of the trial. (Encode latency and peak memory are measured once every
trial has ended: serving.py.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.routes.base import trial_result
from pipelines.run_store.run import RunStore

if TYPE_CHECKING:
    from pipelines.results import EvaluateResult, FinetuneResult
    from pipelines.schemas.sweep import SweepConfig
    from pipelines.sweep_plan import ModelPlan, Trial
    from pipelines.trial import TrialSpec


def trial_configs(config: SweepConfig, plan: ModelPlan, trial: Trial) -> dict[str, Any]:
    """The TrialSpec fields of a contrastive trial: stage 3's config, the probes, the overlap
    for the card, and the depth untrained (None when ``untrained_baseline`` is off)."""
    from pipelines.routes.contrastive.untrained import untrained_evaluation

    return {"evaluate": plan.evaluate, "probe_tasks": tuple(plan.probe_tasks), "overlap": plan.overlap,
            "untrained": untrained_evaluation(plan.evaluate, plan.finetune, trial.key, trial.depth)
            if config.untrained_baseline else None}


def evaluate_trial(spec: TrialSpec, trained: FinetuneResult) -> dict[str, Any]:
    """Stage 3 on the artifact (and on the same depth untrained, and the probes) and the card's
    scores: the trial's result (stage 2's ``trained`` summary beside them). Latency and memory
    are measured after the trials (serving.py)."""
    from pipelines import evaluate

    evaluation = spec.evaluate.model_copy(update={
        "name": f"{spec.key}/evaluate",
        "model": spec.evaluate.model.model_copy(update={"name_or_path": trained.artifact})})
    scores = evaluate.run(evaluation)
    untrained = {}
    if spec.untrained is not None:  # the base model cut alike: training's effect is the change
        baseline = evaluate.run(spec.untrained)
        untrained = {**score_fields("untrained", baseline), **change_fields(scores, baseline)}
    probes = {}
    if spec.probe_tasks:  # a separate run: the probes stay out of the MTEB mean
        probe_run = evaluate.run(evaluation.model_copy(update={
            "name": f"{spec.key}/probe", "tasks": list(spec.probe_tasks)}))
        probes = {row["task"]: row["main_score"] for row in probe_run.tasks}
    _card_scores(trained.artifact, spec, scores.tasks, probes)
    return trial_result(
        spec, trained, scores={**score_fields("mteb", scores), **untrained},
        throughput={"encode_texts_per_second": scores.texts_per_second},
        # mteb_items: what the subsampled scores were computed from: the report pairs depths on them.
        extra={"probe_accuracy": probes, "mteb_items": scores.items})


def score_fields(prefix: str, scores: EvaluateResult) -> dict[str, Any]:
    """result.json's keys of one stage-3 summary: <prefix>_mean, _per_type, _tasks (main score
    per task) and the bootstrap 95% intervals of a subsampled evaluation, _mean_interval and
    _task_intervals (None when tasks run in full)."""
    return {f"{prefix}_mean": scores.mean, f"{prefix}_per_type": scores.mean_per_type,
            f"{prefix}_tasks": {row["task"]: row["main_score"] for row in scores.tasks},
            f"{prefix}_mean_interval": scores.mean_interval,
            f"{prefix}_task_intervals": {row["task"]: row.get("interval") for row in scores.tasks}}


def change_fields(trained: EvaluateResult, untrained: EvaluateResult) -> dict[str, Any]:
    """result.json's keys of fine-tuning's effect: change_vs_untrained (trained minus untrained
    MTEB mean) and, for a subsampled evaluation, the paired bootstrap 95% intervals of the change
    of the mean and per task (both scored on the same items, resampled alike:
    tasks/evaluation/bootstrap.paired_change_intervals); None when tasks ran in full."""
    from tasks.evaluation.bootstrap import paired_change_intervals

    per_task, mean_interval = {}, None
    if trained.items and untrained.items:
        per_task, mean_interval = paired_change_intervals(trained.items, untrained.items)
    return {"change_vs_untrained": trained.mean - untrained.mean,
            "change_vs_untrained_interval": mean_interval,
            "change_vs_untrained_task_intervals": per_task}


def _card_scores(artifact: str, spec: TrialSpec, rows: list[dict[str, Any]],
                 probes: dict[str, float]) -> None:
    """The artifact's model card with the scores this trial measured (tasks/export/card_scores.py);
    ``artifact``: the model directory, a path or a URI (the card is replaced whole there)."""
    from tasks.export.card_scores import card_with_scores

    files = RunStore(artifact).files
    files.write_text("README.md", card_with_scores(files.read_text("README.md"), f"{spec.key} (layercut)",
                                                   rows, spec.overlap, probes))


def tune_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The MTEB mean per task type and each probe's accuracy, as flat Tune metrics."""
    metrics = {f"mteb_{kind}": value for kind, value in result.get("mteb_per_type", {}).items()}
    metrics.update({f"probe_{task}": value for task, value in result.get("probe_accuracy", {}).items()})
    return metrics
