"""One Tune trial of the sweep: fine-tune a depth (its own Ray Train run), then what the trial's
route does with the artifact (pipelines/routes/<route>/trial.py: the contrastive route evaluates
it and the same depth untrained and measures what it costs to serve; the classification route
scores accuracy and macro-F1 on the dataset's test split), report to Tune.

The trial is a Ray Train *driver* (Ray docs, Train V2 + Tune): it holds no model itself. Each
step resumes on its own: finetune from its Ray Train checkpoints (or says "nothing to do"),
evaluate skips tasks with a result file, and a trial whose result.json exists reports it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.routes.registry import ROUTES
from pipelines.run_store.run import RunStore
from pipelines.route_names import DEFAULT_ROUTE

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
    latency_texts: list[str]
    latency_batch_size: int
    result_dir: str
    objective: str = DEFAULT_ROUTE  # the trial's route: a key of pipelines.routes.ROUTES
    # The fields below are the built-in routes' (``Route.trial_configs`` fills them); a route
    # added later keeps its own in ``configs`` rather than adding a field here.
    # The contrastive route's stage 3: its model path is set to the trial's artifact.
    evaluate: EvaluateConfig | None = None
    dataset: str | None = None  # the classification route's dataset; None: contrastive
    classify: ClassifyConfig | None = None  # stage 3 of a classification trial
    probe_tasks: tuple[str, ...] = ()  # mteb logistic-regression probes of a contrastive trial
    # Per evaluation task {"texts", "overlapping"}: its texts in the training data (model card).
    overlap: dict[str, dict[str, int]] | None = None
    # The same depth untrained (pipelines/routes/contrastive/untrained.py); None: classification,
    # or switched off.
    untrained: EvaluateConfig | None = None
    # A route's own stage configs by name, for a route without fields above (see there).
    configs: dict[str, Any] = field(default_factory=dict)


RESULT_FILE = "result.json"  # in result_dir: a trial whose result exists is not run again


def execute(spec: TrialSpec) -> dict[str, Any]:
    """The trial's work, without Tune: finetune, then the route's evaluation of the artifact
    (contrastive: MTEB, the same depth untrained, latency; classification: accuracy); writes
    result.json and returns it. A trial whose result.json exists returns it at once."""
    from pipelines import finetune

    store = RunStore(spec.result_dir)
    done = store.finished(RESULT_FILE, announce=False)
    if done is not None:
        return done
    trained = finetune.run(spec.finetune)
    result = ROUTES[spec.objective].evaluate_trial(spec, trained)
    store.save_result(RESULT_FILE, result)
    return result


def training_progress(spec: TrialSpec) -> dict[str, Any] | None:
    """The latest training step of the trial's Ray Train run ({"step", "training_loss"}), from its
    newest checkpoint's trainer state (the run directory is on storage every node shares: a
    filesystem, or the object store)."""
    training = ROUTES[spec.finetune.objective].training
    files = RunStore(spec.finetune.run_dir(spec.layers, training.name_suffix(spec.finetune))).files
    checkpoints = files.names("ray/train", "step-*")
    for name in reversed(checkpoints):  # the newest may be half-written: fall back to the one before
        try:
            history = files.read_json(f"{name}/trainer_state.json")["history"]
        except (OSError, ValueError, KeyError):  # FileNotFoundError: not written yet
            continue
        return {"step": history[-1]["step"], "training_loss": history[-1]["loss"]} if history else None
    return None


def run_trial(params: dict[str, Any], specs: dict[str, TrialSpec], poll_seconds: float = 5.0,
              environment: dict[str, str] | None = None) -> None:
    """The Tune function: one depth of one model. Reports the training loss as the trial's Ray
    Train run checkpoints it, then the trial's metrics at the end.

    ``environment``: the driver's object-store settings (``tasks.object_store.store_environment``) when
    the sweep's run directory is a URI, else empty: this actor and the work task (and what it
    starts) open the store by URI, and Ray started them without those variables."""
    import os

    import ray
    import ray.tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec = specs[params["trial"]["key"]]
    # Tune places a trial's child tasks in the trial's placement group, which holds only the
    # driver's sliver of a resource: Ray Data, the evaluation actors and the export task would
    # never fit. The work runs in a 0-CPU task beside this driver, outside that group.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    os.environ.update(environment or {})  # this actor reads the checkpoints (training_progress)
    # The task's runtime environment reaches every task and actor it starts too.
    runtime = {"runtime_env": {"env_vars": environment}} if environment else {}
    work = ray.remote(execute).options(num_cpus=0, max_retries=0, scheduling_strategy=here, **runtime)
    pending, reported = work.remote(spec), None
    while not ray.wait([pending], timeout=poll_seconds)[0]:
        progress = training_progress(spec)
        if progress is not None and progress != reported:
            ray.tune.report({**progress, "layers": spec.layers})
            reported = progress
    result = ray.get(pending)
    metrics = {key: value for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    metrics.update(ROUTES[spec.objective].tune_metrics(result))
    ray.tune.report(metrics)
