"""One Tune trial of the sweep: fine-tune a depth (its own Ray Train run), evaluate it and the
same depth untrained, measure what it costs to serve, report to Tune. A classification trial
prompt-tunes the depth on one dataset and scores accuracy and macro-F1 on its test split instead.

The trial is a Ray Train *driver* (Ray docs, Train V2 + Tune): it holds no model itself. Each
step resumes on its own: finetune from its Ray Train checkpoints (or says "nothing to do"),
evaluate skips tasks with a result file, and a trial whose result.json exists reports it at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.run_store.files import write_atomic
from pipelines.run_store.run import RunStore

if TYPE_CHECKING:  # configs only name types here: a Tune trial's worker imports little
    from pipelines.schemas.classify import ClassifyConfig
    from pipelines.schemas.evaluate import EvaluateConfig
    from pipelines.schemas.finetune import FinetuneConfig


@dataclass(frozen=True)
class TrialSpec:
    key: str  # <model label>-l<layers>
    model: str
    layers: int
    origins: tuple[str, ...]
    finetune: FinetuneConfig  # with this depth and run name
    evaluate: EvaluateConfig | None  # its model path is set to the trial's artifact; None: classification
    latency_texts: list[str]
    latency_batch_size: int
    result_dir: str
    dataset: str | None = None  # the classification route's dataset; None: contrastive
    classify: ClassifyConfig | None = None  # stage 3 of a classification trial
    probe_tasks: tuple[str, ...] = ()  # mteb logistic-regression probes of a contrastive trial
    # Per evaluation task {"texts", "overlapping"}: its texts in the training data (model card).
    overlap: dict[str, dict[str, int]] | None = None
    # The same depth untrained (pipelines/untrained.py); None: classification, or switched off.
    untrained: EvaluateConfig | None = None


RESULT_FILE = "result.json"  # in result_dir: a trial whose result exists is not run again


def _measure(spec: TrialSpec, artifact: str) -> dict[str, Any]:
    """Encode latency and peak memory, in a fresh Ray task with one evaluation worker's resources."""
    import ray

    from pipelines.ray_runtime import plan_workers
    from tasks.artifact import read_layercut_file
    from tasks.footprint import measure_encoding
    from tasks.models import resolve_model
    from tasks.prompts import PromptConfig

    evaluate = spec.evaluate
    plan = plan_workers(evaluate.workers, jobs=1)
    facts = read_layercut_file(artifact)
    model_spec = evaluate.model.spec(resolve_model(artifact))
    task = ray.remote(**plan.task_options)(measure_encoding)
    return ray.get(task.remote(model_spec, PromptConfig(**facts["prompt"]), facts["pooling"],
                               spec.latency_texts, spec.latency_batch_size, plan.threads))


def execute(spec: TrialSpec) -> dict[str, Any]:
    """The trial's work, without Tune: finetune -> evaluate (and the same depth untrained) ->
    measure; writes result.json."""
    from pipelines import evaluate, finetune
    from pipelines.ray_runtime import user_errors_from_ray

    store = RunStore(spec.result_dir)
    done = store.finished(RESULT_FILE, announce=False)
    if done is not None:
        return done
    trained = finetune.run(spec.finetune)
    if spec.dataset is not None:
        result = _classification_result(spec, trained)
        store.save_result(RESULT_FILE, result)
        return result
    evaluation = spec.evaluate.model_copy(update={
        "name": f"{spec.key}/evaluate",
        "model": spec.evaluate.model.model_copy(update={"name_or_path": trained["artifact"]})})
    scores = evaluate.run(evaluation)
    untrained = {}
    if spec.untrained is not None:  # the base model cut alike: training's effect is the change
        baseline = evaluate.run(spec.untrained)
        untrained = {**score_fields("untrained", baseline), **change_fields(scores, baseline)}
    probes = {}
    if spec.probe_tasks:  # a separate run: the probes stay out of the MTEB mean
        probe_run = evaluate.run(evaluation.model_copy(update={
            "name": f"{spec.key}/probe", "tasks": list(spec.probe_tasks)}))
        probes = {row["task"]: row["main_score"] for row in probe_run["tasks"]}
    _card_scores(Path(trained["artifact"]), spec, scores["tasks"], probes)
    with user_errors_from_ray():
        footprint = _measure(spec, trained["artifact"])
    result = {
        "trial": spec.key, "model": spec.model, "base_model": trained["model"],
        "layers": spec.layers, "total_layers": trained["total_layers"], "origins": list(spec.origins),
        "parameters": trained["parameters"], "parameters_full": trained["parameters_full"],
        "parameters_removed_pct": trained["parameters_removed_pct"],
        **score_fields("mteb", scores), **untrained,
        "final_loss": trained["final_loss"], "first_loss": trained["first_loss"],
        "steps": trained["steps"], "encode_texts_per_second": scores["texts_per_second"],
        **footprint, "artifact": trained["artifact"],
        "training_log": str(Path(trained["artifact"]).parent / "training_log.csv"),
        "train_workers": trained.get("train_workers", []),  # rank -> Ray node that trained it
        "probe_accuracy": probes,
        # What the subsampled scores were computed from: the report pairs depths on them.
        "mteb_items": scores.get("items"),
    }
    store.save_result(RESULT_FILE, result)
    return result


def score_fields(prefix: str, scores: dict[str, Any]) -> dict[str, Any]:
    """result.json's keys of one stage-3 summary: <prefix>_mean, _per_type, _tasks (main score
    per task) and the bootstrap 95% intervals of a subsampled evaluation, _mean_interval and
    _task_intervals (None when tasks run in full)."""
    return {f"{prefix}_mean": scores["mean"], f"{prefix}_per_type": scores["mean_per_type"],
            f"{prefix}_tasks": {row["task"]: row["main_score"] for row in scores["tasks"]},
            f"{prefix}_mean_interval": scores.get("mean_interval"),
            f"{prefix}_task_intervals": {row["task"]: row.get("interval") for row in scores["tasks"]}}


def change_fields(trained: dict[str, Any], untrained: dict[str, Any]) -> dict[str, Any]:
    """result.json's keys of fine-tuning's effect: change_vs_untrained (trained minus untrained
    MTEB mean) and, for a subsampled evaluation, the paired bootstrap 95% intervals of the change
    of the mean and per task (both scored on the same items, resampled alike:
    tasks/bootstrap.paired_change_intervals); None when tasks ran in full."""
    from tasks.bootstrap import paired_change_intervals

    per_task, mean_interval = {}, None
    if trained.get("items") and untrained.get("items"):
        per_task, mean_interval = paired_change_intervals(trained["items"], untrained["items"])
    return {"change_vs_untrained": trained["mean"] - untrained["mean"],
            "change_vs_untrained_interval": mean_interval,
            "change_vs_untrained_task_intervals": per_task}


def _card_scores(artifact: Path, spec: TrialSpec, rows: list[dict[str, Any]], probes: dict[str, float]) -> None:
    """The artifact's model card with the scores this trial measured (tasks/card_scores.py)."""
    from tasks.card_scores import card_with_scores

    card = artifact / "README.md"
    write_atomic(card, card_with_scores(card.read_text(), f"{spec.key} (layercut)", rows,
                                        spec.overlap, probes))


def _classification_result(spec: TrialSpec, trained: dict[str, Any]) -> dict[str, Any]:
    from pipelines import classify

    scored = classify.run(spec.classify.model_copy(update={
        "name": f"{spec.key}/classify",
        "model": spec.classify.model.model_copy(update={"name_or_path": trained["artifact"]})}))
    return {
        "trial": spec.key, "model": spec.model, "base_model": trained["model"],
        "objective": "classification", "dataset": spec.dataset,
        "layers": spec.layers, "total_layers": trained["total_layers"], "origins": list(spec.origins),
        "parameters": trained["parameters"], "parameters_full": trained["parameters_full"],
        "parameters_removed_pct": trained["parameters_removed_pct"],
        "accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"],
        "majority_rate": scored["majority_rate"], "test_examples": scored["examples"],
        "final_loss": trained["final_loss"], "first_loss": trained["first_loss"],
        "steps": trained["steps"], "classify_texts_per_second": scored["texts_per_second"],
        "artifact": trained["artifact"],
        "training_log": str(Path(trained["artifact"]).parent / "training_log.csv"),
        "train_workers": trained.get("train_workers", []),  # rank -> Ray node that trained it
    }


def training_progress(spec: TrialSpec) -> dict[str, Any] | None:
    """The latest training step of the trial's Ray Train run ({"step", "training_loss"}), from its
    newest checkpoint's trainer state (the run directory is on storage every node shares)."""
    train_dir = spec.finetune.run_dir(spec.layers) / "ray" / "train"
    checkpoints = sorted(train_dir.glob("step-*/trainer_state.json"))
    for path in reversed(checkpoints):  # the newest may be half-written: fall back to the one before
        try:
            history = json.loads(path.read_text())["history"]
        except (OSError, ValueError, KeyError):
            continue
        return {"step": history[-1]["step"], "training_loss": history[-1]["loss"]} if history else None
    return None


def run_trial(params: dict[str, Any], specs: dict[str, TrialSpec], poll_seconds: float = 5.0) -> None:
    """The Tune function: one depth of one model. Reports the training loss as the trial's Ray
    Train run checkpoints it, then the trial's metrics at the end."""
    import ray
    import ray.tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec = specs[params["trial"]["key"]]
    # Tune places a trial's child tasks in the trial's placement group, which holds only the
    # driver's sliver of a resource: Ray Data, the evaluation actors and the export task would
    # never fit. The work runs in a 0-CPU task beside this driver, outside that group.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    work = ray.remote(execute).options(num_cpus=0, max_retries=0, scheduling_strategy=here)
    pending, reported = work.remote(spec), None
    while not ray.wait([pending], timeout=poll_seconds)[0]:
        progress = training_progress(spec)
        if progress is not None and progress != reported:
            ray.tune.report({**progress, "layers": spec.layers})
            reported = progress
    result = ray.get(pending)
    metrics = {key: value for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    metrics.update({f"mteb_{kind}": value for kind, value in result.get("mteb_per_type", {}).items()})
    metrics.update({f"probe_{task}": value for task, value in result.get("probe_accuracy", {}).items()})
    ray.tune.report(metrics)
