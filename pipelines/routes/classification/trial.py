"""A classification trial after stage 2: score the prompt-tuned artifact on the dataset's test
split (stage 3, pipelines/classify.py); the result is result.json's record of the trial."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.route_names import CLASSIFICATION
from pipelines.routes.base import trial_result

if TYPE_CHECKING:
    from pipelines.results import FinetuneResult
    from pipelines.schemas.sweep import SweepConfig
    from pipelines.sweep_plan import ModelPlan, Trial
    from pipelines.trial import TrialSpec


def trial_configs(config: SweepConfig, plan: ModelPlan, trial: Trial) -> dict[str, Any]:
    """The TrialSpec fields of a classification trial: its dataset and stage 3's config."""
    return {"dataset": trial.dataset, "classify": plan.classify.get(trial.dataset)}


def evaluate_trial(spec: TrialSpec, trained: FinetuneResult) -> dict[str, Any]:
    """Accuracy, macro-F1 and the majority rate of the artifact on the test split, beside stage
    2's ``trained`` summary."""
    from pipelines import classify

    scored = classify.run(spec.classify.model_copy(update={
        "name": f"{spec.key}/classify",
        "model": spec.classify.model.model_copy(update={"name_or_path": trained.artifact})}))
    return trial_result(
        spec, trained, identity={"objective": CLASSIFICATION, "dataset": spec.dataset},
        scores={"accuracy": scored.accuracy, "macro_f1": scored.macro_f1,
                "majority_rate": scored.majority_rate, "test_examples": scored.examples},
        throughput={"classify_texts_per_second": scored.texts_per_second})
