"""A classification trial after stage 2: score the prompt-tuned artifact on the dataset's test
split (stage 3, pipelines/classify.py); the result is result.json's record of the trial."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.route_names import CLASSIFICATION

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
    return {
        "trial": spec.key, "model": spec.model, "base_model": trained.model,
        "objective": CLASSIFICATION, "dataset": spec.dataset,
        "layers": spec.layers, "total_layers": trained.total_layers, "origins": list(spec.origins),
        "parameters": trained.parameters, "parameters_full": trained.parameters_full,
        "parameters_removed_pct": trained.parameters_removed_pct,
        "accuracy": scored.accuracy, "macro_f1": scored.macro_f1,
        "majority_rate": scored.majority_rate, "test_examples": scored.examples,
        "final_loss": trained.final_loss, "first_loss": trained.first_loss,
        "steps": trained.steps, "classify_texts_per_second": scored.texts_per_second,
        "artifact": trained.artifact,
        "training_log": str(Path(trained.artifact).parent / "training_log.csv"),
        "train_workers": trained.train_workers,  # rank -> Ray node that trained it
    }
