"""The main job: per model, stage 1 picks depths; a Ray Tune experiment fine-tunes (stage 2) and
evaluates (stage 3) each depth; a report compares them.

    layercut run                                   # local default: SmolLM2-135M on this machine
    layercut run --config four-families            # the cluster sweep (ray job submit)
    python -m pipelines.sweep --config my-sweep.yaml

For each model, stage 1 runs in this driver (its Ray tasks do the work) and yields the L3Prune
small and large depths; the trials are those depths joined with the grid (fractions of layers
kept). All models' trials share ONE Tune experiment; each trial is a Tune function that launches
its own Ray Train run (stage 2), then stage 3, then measures encode latency and peak memory, and
reports to Tune. Trials queue as pending until their Train workers get resources, so an
autoscaling cluster grows as they wait.

Rerunning the same command resumes: stage 1 reloads its saved batches, Tune restores its
experiment (finished trials are not run again; unfinished ones restart and their stages resume
from their own checkpoints and result files).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config import StrictModel, dump_config, find_config, load_config
from pipelines.outputs import write_atomic, write_json
from pipelines.ray_runtime import ensure_ray, layercut_cause, plan_workers, user_errors_from_ray
from tasks.errors import LayercutError
from tasks.trees import merge_trees

STAGE = "run"
DEFAULT_GRID = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]


class StageOverrides(StrictModel):
    """Config trees laid over a stage's YAML (same keys as the stage config)."""

    layer_loss: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    evaluate: dict[str, Any] = Field(default_factory=dict)
    classify: dict[str, Any] = Field(default_factory=dict)  # stage 3 of the classification route

    @classmethod
    def override_tree_model(cls, field: str):
        """The stage config a tree is laid over: it types ``overrides.<stage>.key=value``."""
        from pipelines.classify import ClassifyConfig
        from pipelines.evaluate import EvaluateConfig
        from pipelines.finetune import FinetuneConfig
        from pipelines.layer_loss import LayerLossConfig

        return {"layer_loss": LayerLossConfig, "finetune": FinetuneConfig,
                "evaluate": EvaluateConfig, "classify": ClassifyConfig}.get(field)


class ModelEntry(StrictModel):
    config: str  # packaged per-model config name (e.g. llama3-8b) or a YAML path, for each stage
    label: str | None = None  # name in the report and trial dirs; default: the config's stem
    layer_loss: str | None = None  # stage configs when they differ from `config`
    finetune: str | None = None
    evaluate: str | None = None
    classify: str | None = None
    overrides: StageOverrides = Field(default_factory=StageOverrides)
    grid: list[float] | None = None  # default: the sweep's grid
    # contrastive: the embedding route (L3Prune: stage 1, depths, MTEB). classification: prompt-
    # based classifiers of the `classification` section's datasets at every depth of its grid.
    objectives: list[Literal["contrastive", "classification"]] = Field(
        default_factory=lambda: ["contrastive"])

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value):
        if not value or len(set(value)) != len(value):
            raise ValueError("name each objective once: contrastive, classification or both")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value):
        return _check_grid(value) if value is not None else value

    @field_validator("label")
    @classmethod
    def _label(cls, value):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("a label names directories: letters, digits, '.', '_', '-' only")
        return value

    def name(self) -> str:
        return self.label or Path(self.config).stem


def _check_grid(value: list[float]) -> list[float]:
    if not value:
        raise ValueError("the grid is empty: give fractions of layers to keep, e.g. [1.0, 0.5]")
    bad = [v for v in value if not 0 < v <= 1]
    if bad:
        raise ValueError(f"grid values are fractions of layers kept, in (0, 1]; got {bad}")
    return value


class TuneSection(StrictModel):
    # auto: as many trials as the cluster's current resources can train at once (autoscaling:
    # no limit, trials wait for nodes). Each in-flight trial is one Ray Train driver.
    max_concurrent_trials: int | str = "auto"
    autoscaling: bool = False  # the cluster adds nodes on demand: do not require resources now
    # What each trial's driver process takes: it only launches and watches Ray Train and the
    # evaluation, so no CPU (the Train workers may need every one); a sliver of Ray's built-in
    # head-node resource keeps drivers on the head, off preemptible GPU nodes (Ray's Train + Tune
    # guide). Tune needs some resource per trial; 0.01 allows 100 drivers in flight.
    driver_resources: dict[str, float] = Field(
        default_factory=lambda: {"node:__internal_head__": 0.01})
    max_failures: int = Field(1, ge=0)  # Tune retries a failed trial; its stages resume

    @field_validator("max_concurrent_trials")
    @classmethod
    def _concurrency(cls, value):
        if isinstance(value, str) and value != "auto" or isinstance(value, int) and value < 1:
            raise ValueError("max_concurrent_trials is a positive number or 'auto'")
        return value


class LatencySection(StrictModel):
    texts: int = Field(64, ge=2)  # documents of the training data, encoded in batches
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _enough(self):
        if self.texts < 2 * self.batch_size:
            raise ValueError("latency.texts must be at least 2 x latency.batch_size (one warm-up batch)")
        return self


class BudgetSection(StrictModel):
    """Name the best depth per model within these limits (either or both)."""

    max_parameters: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class ClassificationRoute(StrictModel):
    """The second use case ("Why Lift so Heavy?"): for every model whose objectives include
    classification, each dataset is prompt-tuned and scored at each depth."""

    datasets: list[str] = Field(default_factory=lambda: ["sst2"])  # tasks/classification_datasets.yaml
    grid: list[float] | None = None  # fractions of layers kept; None: the sweep's grid
    layers: list[int] | None = None  # explicit depths (1..L); wins over the grid
    zero_shot: bool = True  # score the unpruned model with the same prompt: the reference line
    # mteb's logistic-regression probe of the contrastive trials' encoders on the same datasets,
    # so the two routes sit side by side (models with both objectives).
    probe: bool = True

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, value):
        from pipelines.sections import classification_presets

        unknown = [name for name in value if name not in classification_presets()]
        if unknown or not value or len(set(value)) != len(value):
            raise ValueError(f"datasets are distinct packaged names ({', '.join(classification_presets())}); "
                             f"got {value}")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value):
        return _check_grid(value) if value is not None else value

    @field_validator("layers")
    @classmethod
    def _layers(cls, value):
        if value is not None and (not value or min(value) < 1):
            raise ValueError("layers are depths >= 1")
        return value


class SweepConfig(StrictModel):
    name: str | None = None  # run name; default: sweep-<first model>
    output_dir: str = "runs"  # on a cluster: a filesystem every node mounts
    address: str | None = None  # None: RAY_ADDRESS / a running cluster, else start one in-process
    data_root: str | None = None  # local mirror for every stage (also LAYERCUT_DATA_ROOT)
    grid: list[float] = Field(default_factory=lambda: list(DEFAULT_GRID))  # fractions kept
    l3prune: bool = True  # add stage 1's small and large depths to the grid
    overrides: StageOverrides = Field(default_factory=StageOverrides)  # for every model
    models: list[ModelEntry]
    tune: TuneSection = Field(default_factory=TuneSection)
    latency: LatencySection = Field(default_factory=LatencySection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    classification: ClassificationRoute = Field(default_factory=ClassificationRoute)
    show_progress: bool = True

    @field_validator("grid")
    @classmethod
    def _grid(cls, value):
        return _check_grid(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value):
        if not value:
            raise ValueError("name at least one model")
        labels = [entry.name() for entry in value]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"model labels must differ; repeated: {repeated} (set label:)")
        return value

    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.name or f"sweep-{self.models[0].name()}")


@dataclass(frozen=True)
class Trial:
    model: str  # the model's label
    layers: int
    origins: tuple[str, ...]  # why this depth: "l3prune-small", "l3prune-large", "grid-50%"
    dataset: str | None = None  # the classification route's dataset; None: contrastive

    @property
    def objective(self) -> str:
        return "contrastive" if self.dataset is None else "classification"

    @property
    def key(self) -> str:
        task = f"-{self.dataset}" if self.dataset else ""
        return f"{self.model}{task}-l{self.layers}"


@dataclass
class ModelPlan:
    """One model's resolved stage configs (paths inside the sweep's run dir)."""

    label: str
    layer_loss: Any  # LayerLossConfig (contrastive route; None without it)
    finetune: Any  # FinetuneConfig, without a depth
    evaluate: Any  # EvaluateConfig, without a model path (contrastive route; None without it)
    grid: list[float]
    stage1: dict[str, Any] = field(default_factory=dict)  # selection.json of stage 1
    # The classification route, per dataset: stage 2 (objective classification) and stage 3.
    classifiers: dict[str, Any] = field(default_factory=dict)  # dataset -> FinetuneConfig
    classify: dict[str, Any] = field(default_factory=dict)  # dataset -> ClassifyConfig
    probe_tasks: list[str] = field(default_factory=list)  # mteb probes of the contrastive trials
    total_layers: int = 0

    @property
    def contrastive(self) -> bool:
        return self.evaluate is not None


def _stage_config(model_cls, name: str, stage: str, trees: list[dict[str, Any]]):
    tree: dict[str, Any] = {}
    for extra in trees:
        tree = merge_trees(tree, extra)
    try:
        return load_config(model_cls, find_config(name, stage), [], tree)
    except LayercutError as error:
        raise LayercutError(f"{stage} config of {name}: {error}") from None


def resolve_models(config: SweepConfig) -> list[ModelPlan]:
    """Every model's stage configs, validated now (a bad key fails before any work)."""
    from pipelines.classify import ClassifyConfig
    from pipelines.evaluate import EvaluateConfig, check_tasks
    from pipelines.finetune import FinetuneConfig
    from pipelines.layer_loss import LayerLossConfig
    from tasks.mteb_tasks import probe_task_name

    run_dir = config.run_dir().resolve()
    route = config.classification
    plans = []
    for entry in config.models:
        label = entry.name()
        data = {"data_root": config.data_root} if config.data_root else {}
        wait = {"workers": {"wait_for_resources": True}} if config.tune.autoscaling else {}
        common = {"address": config.address} if config.address else {}
        finetune_trees = [config.overrides.finetune, entry.overrides.finetune, wait,
                          {"output_dir": str(run_dir / "trials"), "data": data, "layers": None,
                           "show_progress": config.show_progress, "workers": common}]
        finetune = _stage_config(FinetuneConfig, entry.finetune or entry.config, "finetune",
                                 finetune_trees)
        plan = ModelPlan(label, None, finetune, None, entry.grid or config.grid)
        if "contrastive" in entry.objectives:
            plan.layer_loss = _stage_config(LayerLossConfig, entry.layer_loss or entry.config, "layer_loss", [
                config.overrides.layer_loss, entry.overrides.layer_loss, wait,
                {"output_dir": str(run_dir / "layer-loss"), "name": label, "data": data,
                 "workers": common}])
            plan.evaluate = _stage_config(EvaluateConfig, entry.evaluate or entry.config, "evaluate", [
                config.overrides.evaluate, entry.overrides.evaluate, wait,
                {"output_dir": str(run_dir / "trials"), "layers": None, "workers": common, **data}])
            check_tasks(plan.evaluate)  # a task typo fails now, not after hours of fine-tuning
            if plan.evaluate.workers.executor != "ray":
                raise LayercutError(f"model {label}: a sweep evaluates on Ray workers "
                                    "(evaluate workers.executor must be ray)")
            if route.probe and "classification" in entry.objectives:
                plan.probe_tasks = [probe_task_name(name) for name in route.datasets]
                check_tasks(plan.evaluate.model_copy(update={"tasks": plan.probe_tasks}))
        if "classification" in entry.objectives:
            for name in route.datasets:
                task = {"dataset": name, **data}
                plan.classifiers[name] = _stage_config(
                    FinetuneConfig, entry.finetune or entry.config, "finetune",
                    [*finetune_trees, {"objective": "classification", "classification": task}])
                plan.classify[name] = _stage_config(
                    ClassifyConfig, entry.classify or entry.config, "classify", [
                        config.overrides.classify, entry.overrides.classify, wait,
                        {"output_dir": str(run_dir / "trials"), "layers": None, "workers": common,
                         "show_progress": config.show_progress, "classification": task}])
                if plan.classify[name].workers.executor != "ray":
                    raise LayercutError(f"model {label}: a sweep classifies on Ray workers "
                                        "(classify workers.executor must be ray)")
        plans.append(plan)
    return plans


def _grid_depths(grid: list[float], total: int) -> dict[int, list[str]]:
    origins: dict[int, list[str]] = {}
    for fraction in grid:
        origins.setdefault(max(1, round(fraction * total)), []).append(f"grid-{fraction:.0%}")
    return origins


def plan_trials(plans: list[ModelPlan], use_l3prune: bool,
                route: ClassificationRoute | None = None) -> list[Trial]:
    """Depths per model. Contrastive: the grid's fractions of L (rounded, at least 1) and the
    L3Prune picks. Classification: per dataset, the route's depths (or its grid's)."""
    trials = []
    for plan in plans:
        total = plan.total_layers or plan.stage1["num_layers"]
        if plan.contrastive:
            origins = _grid_depths(plan.grid, total)
            if use_l3prune:
                for pick in ("small", "large"):
                    origins.setdefault(plan.stage1[pick]["layers"], []).append(f"l3prune-{pick}")
            trials += [Trial(plan.label, depth, tuple(origins[depth]))
                       for depth in sorted(origins, reverse=True)]
        if plan.classifiers:
            if route.layers is not None:
                bad = [depth for depth in route.layers if depth > total]
                if bad:
                    raise LayercutError(f"classification.layers {bad} exceed {plan.label}'s {total} layers")
                origins = {depth: ["layers"] for depth in route.layers}
            else:
                origins = _grid_depths(route.grid or plan.grid, total)
            for name in plan.classifiers:
                trials += [Trial(plan.label, depth, tuple(origins[depth]), dataset=name)
                           for depth in sorted(origins, reverse=True)]
    return trials


def _worker_demand(workers) -> tuple[int, dict[str, float]]:
    """(worker count, one worker's bundle) of a stage's worker section, on this cluster."""
    plan = plan_workers(workers, jobs=10**9)
    return plan.count, {"CPU": plan.cpus, **({"GPU": 1.0} if plan.use_gpu else {})}


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(key, 0) >= amount for key, amount in bundle.items() if amount)


def check_resources(plans: list[ModelPlan], tune: TuneSection) -> int | None:
    """Refuse trials no node can ever run (no autoscaler to add one); returns how many trials
    can train at once (None: no limit, the autoscaler adds nodes as trials wait)."""
    import ray

    if tune.autoscaling:
        return tune.max_concurrent_trials if tune.max_concurrent_trials != "auto" else None
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    concurrency = []
    for plan in plans:
        stages = [("finetune", plan.finetune.workers)]
        if plan.contrastive:
            stages.append(("evaluate", plan.evaluate.workers))
            if plan.layer_loss.workers.executor == "ray":
                stages.append(("layer_loss", plan.layer_loss.workers))
        stages += [("classify", classify.workers) for classify in plan.classify.values()]
        for stage, workers in stages:
            count, bundle = _worker_demand(workers)
            need = {key: count * amount for key, amount in bundle.items()}
            if not any(_fits(bundle, node) for node in nodes) or not _fits(need, total):
                have = {key: total.get(key, 0) for key in need}
                raise LayercutError(
                    f"model {plan.label}: {stage} needs {count} worker(s) x {bundle}, but the "
                    f"cluster has {have} (largest node: {_largest(nodes, need)}) and no autoscaler "
                    "(tune.autoscaling: false): lower the workers or run on a bigger cluster")
            if stage == "finetune":
                concurrency.append(min(int(total.get(key, 0) // amount) for key, amount in need.items() if amount))
    if not _fits(tune.driver_resources, total):
        raise LayercutError(f"tune.driver_resources {tune.driver_resources} exceed the cluster's "
                            f"{ {key: total.get(key, 0) for key in tune.driver_resources} }")
    if tune.max_concurrent_trials != "auto":
        return tune.max_concurrent_trials
    return max(1, min(concurrency))


def _largest(nodes: list[dict[str, float]], need: dict[str, float]) -> dict[str, float]:
    best = max(nodes, key=lambda node: tuple(node.get(key, 0) for key in need), default={})
    return {key: best.get(key, 0) for key in need}


def _fingerprint(plan: ModelPlan) -> str:
    """What determines a model's trial results: not the grid (adding depths keeps the others),
    nor where or on how many CPUs the work runs (only finetune's worker count: the global batch)."""
    def dump(stage, exclude=()):
        return None if stage is None else stage.model_dump(mode="json", exclude={"workers", *exclude})

    relevant = [dump(plan.layer_loss),
                dump(plan.finetune, {"show_progress", "force"}),
                plan.finetune.workers.num_workers,
                dump(plan.evaluate, {"corpus_workers", "corpus_min_texts"}), plan.probe_tasks,
                {name: dump(c, {"show_progress", "force"}) for name, c in plan.classifiers.items()},
                {name: dump(c, {"show_progress"}) for name, c in plan.classify.items()}]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _has_results(run_dir: Path, plan: ModelPlan) -> bool:
    label = plan.label
    patterns = [f"{label}-l*/*", *(f"{label}-{name}-l*/*" for name in plan.classifiers)]
    return (run_dir / "layer-loss" / label / "batches").is_dir() or \
        (run_dir / "zero-shot" / label).is_dir() or \
        any(any((run_dir / "trials").glob(pattern)) for pattern in patterns)


def guard_and_record(run_dir: Path, config: SweepConfig, plans: list[ModelPlan]) -> None:
    """A model's earlier results in this run dir came from the same configuration, or we stop.
    (A run that stopped before any result, e.g. on a resource error, guards nothing.)"""
    marker = run_dir / "sweep.json"
    previous = json.loads(marker.read_text()).get("models", {}) if marker.exists() else {}
    current = {plan.label: _fingerprint(plan) for plan in plans}
    changed = [plan.label for plan in plans
               if previous.get(plan.label, current[plan.label]) != current[plan.label]
               and _has_results(run_dir, plan)]
    if changed:
        raise LayercutError(f"run directory {run_dir} holds results of {', '.join(changed)} with "
                            "a different configuration; use another --name or delete it")
    write_json(marker, {"models": {**previous, **current}})
    write_atomic(run_dir / "config.yaml", dump_config(config))


def latency_texts(plan: ModelPlan, count: int) -> list[str]:
    """Documents (positives) of the model's training data: what an encoder serves."""
    from tasks.data import resolve_source, sample_triplet_batches

    data = plan.finetune.data
    path = resolve_source(data.source, data.local_source, data.data_root)
    batches, _ = sample_triplet_batches(path, num_batches=1, batch_size=count, seed=0,
                                        invalid_rows="skip", columns=data.columns)
    return list(batches[0]["positive"])


def run(config: SweepConfig) -> dict[str, Any]:
    """Stage 1 per model, the Tune experiment over all trials, the report; returns the summary."""
    from pipelines import layer_loss
    from pipelines.report import write_report

    run_dir = config.run_dir().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    plans = resolve_models(config)
    ensure_ray(config.address)
    concurrency = check_resources(plans, config.tune)
    guard_and_record(run_dir, config, plans)

    for plan in plans:
        if plan.contrastive:
            print(f"layercut: stage 1 for {plan.label}", file=sys.stderr)
            plan.stage1 = layer_loss.run(plan.layer_loss, show_progress=config.show_progress)
            plan.total_layers = plan.stage1["num_layers"]
        else:
            plan.total_layers = _total_layers(plan.finetune)
    trials = plan_trials(plans, config.l3prune, config.classification)
    print(f"layercut: {len(trials)} trials: " + ", ".join(t.key for t in trials), file=sys.stderr)
    zero_shot = _zero_shot(config, plans, run_dir) if config.classification.zero_shot else {}
    texts = {plan.label: latency_texts(plan, config.latency.texts) for plan in plans if plan.contrastive}
    outcomes = _tune(config, plans, trials, texts, concurrency, run_dir)
    return write_report(run_dir, config, plans, trials, outcomes, zero_shot)


def _total_layers(finetune) -> int:
    from tasks.models import parameters_per_depth, resolve_model

    total, _ = parameters_per_depth(resolve_model(finetune.model.name_or_path),
                                    trust_remote_code=finetune.model.trust_remote_code,
                                    revision=finetune.model.revision)
    return total


def _zero_shot(config: SweepConfig, plans: list[ModelPlan], run_dir: Path) -> dict[str, dict]:
    """The unpruned model's zero-shot accuracy with each dataset's prompt: the reference line of
    the classification route ({"<label>-<dataset>": stage-3 summary}). Scored once, then reused."""
    from pipelines import classify

    results = {}
    for plan in plans:
        for name, stage in plan.classify.items():
            print(f"layercut: zero-shot {plan.label} on {name}", file=sys.stderr)
            reference = stage.model_copy(update={
                "output_dir": str(run_dir / "zero-shot"), "name": f"{plan.label}/{name}",
                "model": plan.classifiers[name].model})
            results[f"{plan.label}-{name}"] = classify.run(reference)
    return results


def _tune(config: SweepConfig, plans, trials: list[Trial], texts, concurrency, run_dir: Path):
    """Run (or resume) the Tune experiment; returns {trial key: result dict or error text}."""
    import ray.tune as tune

    from pipelines.trial import TrialSpec, run_trial

    specs = {}
    for trial in trials:
        plan = next(p for p in plans if p.label == trial.model)
        finetune = plan.classifiers[trial.dataset] if trial.dataset else plan.finetune
        specs[trial.key] = TrialSpec(
            key=trial.key, model=trial.model, layers=trial.layers, origins=trial.origins,
            finetune=finetune.model_copy(update={"layers": trial.layers, "name": f"{trial.key}/finetune"}),
            evaluate=None if trial.dataset else plan.evaluate,
            latency_texts=texts.get(trial.model, []), latency_batch_size=config.latency.batch_size,
            result_dir=str(run_dir / "trials" / trial.key), dataset=trial.dataset,
            classify=plan.classify.get(trial.dataset) if trial.dataset else None,
            probe_tasks=() if trial.dataset else tuple(plan.probe_tasks))
    trainable = tune.with_resources(tune.with_parameters(run_trial, specs=specs),
                                    dict(config.tune.driver_resources))
    # One experiment per trial list: changing the grid starts a new experiment, whose trials
    # that already finished return their saved result at once.
    keys = sorted(specs)
    experiment = "tune-" + hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:8]
    path = run_dir / experiment
    if tune.Tuner.can_restore(str(path)):
        print(f"layercut: resuming the Tune experiment in {path}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(keys)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency,
                                        trial_dirname_creator=lambda t: t.config["trial"]),
            run_config=tune.RunConfig(
                name=experiment, storage_path=str(run_dir),
                failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
                verbose=1))
    with user_errors_from_ray():
        grid = tuner.fit()
    outcomes: dict[str, Any] = {}
    for result in grid:
        key = result.config["trial"]
        if result.error is not None:
            cause = layercut_cause(result.error)
            text = str(cause) if cause else str(result.error).strip().splitlines()[-1]
            outcomes[key] = {"error": text}
        else:
            outcomes[key] = _read_result(Path(specs[key].result_dir))
    return outcomes


def _read_result(trial_dir: Path) -> dict[str, Any]:
    path = trial_dir / "result.json"
    if not path.exists():  # Tune stopped (Ctrl-C) before the trial ended
        return {"error": "not finished; rerun the same command to resume it"}
    return json.loads(path.read_text())


if __name__ == "__main__":
    from pipelines.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
