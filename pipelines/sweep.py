"""The main job: per model, stage 1 picks depths; a Ray Tune experiment fine-tunes (stage 2) and
evaluates (stage 3) each depth; a report compares them.

    layercut run                                   # local default: SmolLM2-135M on this machine
    layercut run --config four-families            # the cluster sweep (ray job submit)
    python -m pipelines.sweep --config my-sweep.yaml

For each model, stage 1 runs in this driver (its Ray tasks do the work) and yields the L3Prune
small and large depths; the trials are those depths joined with the grid (depths: counts or
keep/prune fractions, tasks/depth.py). All models' trials share ONE Tune experiment; each trial is a Tune function that launches
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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.commands import Stage, run_as_script
from pipelines.config import find_config, load_config
from pipelines.fingerprints import digest, flatten
from pipelines.ray_runtime import ensure_ray, layercut_cause, plan_workers, user_errors_from_ray
from pipelines.run_store.guard import Record, Refusal, check
from pipelines.run_store.run import RunStore
from pipelines.schemas.classify import ClassifyConfig
from pipelines.schemas.evaluate import EvaluateConfig
from pipelines.schemas.finetune import FinetuneConfig
from pipelines.schemas.layer_loss import LayerLossConfig
from pipelines.schemas.sweep import STAGE, ClassificationRoute, SweepConfig, TuneSection
from tasks.depth import Depth
from tasks.layer_selection import LayerSelection
from tasks.errors import LayercutError
from tasks.model_access import check_model_access
from tasks.trees import merge_trees

if TYPE_CHECKING:
    from pipelines.trial import TrialSpec


@dataclass(frozen=True)
class Trial:
    model: str  # the model's label
    layers: int  # how many layers are kept
    origins: tuple[str, ...]  # why this depth: "l3prune-small", "l3prune-large", "grid keep:0.5"
    dataset: str | None = None  # the classification route's dataset; None: contrastive
    kept: tuple[int, ...] | None = None  # which layers, when not the first ``layers``

    @property
    def depth(self) -> Depth:
        return Depth.parse(list(self.kept) if self.kept else self.layers)

    @property
    def objective(self) -> str:
        return "contrastive" if self.dataset is None else "classification"

    @property
    def key(self) -> str:
        task = f"-{self.dataset}" if self.dataset else ""
        depth = f"l{self.layers}" if self.kept is None else self.depth.slug  # k0-2+5-6
        return f"{self.model}{task}-{depth}"


@dataclass
class ModelPlan:
    """One model's resolved stage configs (paths inside the sweep's run dir)."""

    label: str
    layer_loss: LayerLossConfig | None  # the contrastive route's stage 1; None without it
    finetune: FinetuneConfig  # without a depth
    evaluate: EvaluateConfig | None  # without a model path (contrastive route; None without it)
    grid: list[Depth]
    stage1: dict[str, Any] = field(default_factory=dict)  # selection.json of stage 1
    # The classification route, per dataset: stage 2 (objective classification) and stage 3.
    classifiers: dict[str, FinetuneConfig] = field(default_factory=dict)
    classify: dict[str, ClassifyConfig] = field(default_factory=dict)
    probe_tasks: list[str] = field(default_factory=list)  # mteb probes of the contrastive trials
    total_layers: int = 0
    # Per evaluation task: {"texts", "overlapping"}: its evaluated texts that occur in the
    # training data (tasks/overlap.py); a task with overlap is marked in the report.
    overlap: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def contrastive(self) -> bool:
        return self.evaluate is not None

    def base_models(self) -> list[tuple[str, str | None]]:
        """(name_or_path, revision) of each model this plan loads from its source: stage 1's and
        stage 2's of each route (stage 3 loads the trained artifacts, and the zero-shot reference
        stage 2's model)."""
        stages = [self.layer_loss, self.finetune, *self.classifiers.values()]
        return [(stage.model.name_or_path, stage.model.revision) for stage in stages if stage is not None]


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
    from pipelines.evaluate import check_tasks
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
                {"output_dir": str(run_dir / "trials"), "layers": None, "workers": common,
                 "show_progress": config.show_progress, **data}])
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


def _depths(depths: list[Depth], total: int, origin: str, where: str) -> dict[LayerSelection, list[str]]:
    """{layers kept: [origin of each depth that gives it]} for a model of ``total`` layers."""
    origins: dict[LayerSelection, list[str]] = {}
    for depth in depths:
        try:
            kept = depth.select(total)
        except LayercutError as error:
            raise LayercutError(f"{where}: {error}") from None
        origins.setdefault(kept, []).append(f"{origin} {depth}")
    return origins


def _trials(label: str, origins: dict[LayerSelection, list[str]], dataset: str | None = None) -> list[Trial]:
    """One trial per selection, the most layers first (a prefix before another selection of as many)."""
    return [Trial(label, kept.count, tuple(origins[kept]), dataset,
                  None if kept.is_prefix else kept.indices)
            for kept in sorted(origins, key=lambda kept: (kept.count, kept.is_prefix, kept.indices),
                               reverse=True)]


def plan_trials(plans: list[ModelPlan], use_l3prune: bool,
                route: ClassificationRoute | None = None) -> list[Trial]:
    """Depths per model. Contrastive: the grid's depths of L (tasks/depth.py) and the L3Prune
    picks. Classification: per dataset, the route's depths (or its grid's)."""
    trials = []
    for plan in plans:
        total = plan.total_layers or plan.stage1["num_layers"]
        if plan.contrastive:
            origins = _depths(plan.grid, total, "grid", f"{plan.label}'s grid")
            if use_l3prune:
                for pick in ("small", "large"):
                    picked = LayerSelection.prefix(plan.stage1[pick]["layers"], total)
                    origins.setdefault(picked, []).append(f"l3prune-{pick}")
            trials += _trials(plan.label, origins)
        if plan.classifiers:
            if route.layers is not None:
                origins = _depths(route.layers, total, "layers", f"classification.layers of {plan.label}")
            else:
                origins = _depths(route.grid or plan.grid, total, "grid", f"{plan.label}'s classification grid")
            for name in plan.classifiers:
                trials += _trials(plan.label, origins, name)
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
    """The digest of a model's ``_settings``, in their order (sweep.json's fingerprint)."""
    return digest(list(_settings(plan).values()))


def _settings(plan: ModelPlan) -> dict[str, Any]:
    """What determines a model's trial results: not the grid (adding depths keeps the others),
    nor where or on how many CPUs the work runs (only finetune's worker count: the global batch)."""
    # The acknowledgement of an instruction mismatch changes no number.
    acknowledged = {"data": {"allow_instruction_mismatch"}}

    def dump(stage, exclude=()):
        return None if stage is None else stage.model_dump(
            mode="json", exclude={"workers": True, **dict.fromkeys(exclude, True), **acknowledged})

    # The order is the fingerprint's: sweep.json of earlier runs stays valid.
    return {"layer_loss": dump(plan.layer_loss),
            "finetune": dump(plan.finetune, {"show_progress", "force"}),
            "finetune_workers": plan.finetune.workers.num_workers,
            "evaluate": dump(plan.evaluate, {"corpus_workers", "corpus_min_texts", "show_progress"}),
            "probe_tasks": plan.probe_tasks,
            "classifiers": {name: dump(c, {"show_progress", "force"}) for name, c in plan.classifiers.items()},
            "classify": {name: dump(c, {"show_progress"}) for name, c in plan.classify.items()}}


def _has_results(run_dir: Path, plan: ModelPlan) -> bool:
    label = plan.label
    patterns = [f"{label}-l*/*", *(f"{label}-{name}-l*/*" for name in plan.classifiers)]
    return (run_dir / "layer-loss" / label / "batches").is_dir() or \
        (run_dir / "zero-shot" / label).is_dir() or \
        any(any((run_dir / "trials").glob(pattern)) for pattern in patterns)


SWEEP_RECORD = "sweep.json"  # {"models": {label: fingerprint}, "settings": {label: flat settings}}


def guard_and_record(run_dir: Path, config: SweepConfig, plans: list[ModelPlan]) -> None:
    """A model's earlier results in this run dir came from the same configuration, or we stop
    (one line naming the model and the keys that differ). A run that stopped before any
    result, e.g. on a resource error, guards nothing."""
    files = RunStore(run_dir).files
    record = files.read_json(SWEEP_RECORD) if files.exists(SWEEP_RECORD) else {}
    previous, described = record.get("models", {}), record.get("settings", {})
    settings = {plan.label: flatten(_settings(plan)) for plan in plans}
    current = {plan.label: _fingerprint(plan) for plan in plans}
    for plan in plans:
        label = plan.label
        recorded = Record(previous[label], described.get(label)) if label in previous else None
        check(run_dir, recorded, settings[label], fingerprint=current[label],
              has_results=recorded is not None and _has_results(run_dir, plan),
              refusal=Refusal(f"results of {label}", "with a different configuration",
                              "use another --name or delete it"))
    files.write_json(SWEEP_RECORD, {"models": {**previous, **current}, "settings": {**described, **settings}})
    RunStore(run_dir).record_config(config)


def query_instructions(evaluate) -> dict[str, str]:
    """{task: instruction} of the tasks whose queries evaluation prepends an instruction to (a
    sweep evaluates its own artifacts, never a sentence-transformers folder)."""
    from pipelines.evaluate import packaged_instructions
    from tasks.mteb_tasks import resolve_task_names

    table = {**packaged_instructions(), **evaluate.instructions}
    return {name: table[name] for name in resolve_task_names(evaluate.tasks) if table.get(name)}


def check_instructions(plan: ModelPlan) -> None:
    """Refuse (one line, naming the key) training data without instructions for a model whose
    evaluation prepends task instructions to queries, unless the stage's
    data.allow_instruction_mismatch acknowledges it. Stage 1 and stage 2 data are both checked:
    the scan and the training see queries as evaluation will."""
    from tasks.data import has_instructions, resolve_source

    instructed = query_instructions(plan.evaluate)
    if not instructed:
        return
    seen: dict[tuple, bool] = {}
    for stage, config in (("layer_loss", plan.layer_loss), ("finetune", plan.finetune)):
        data = config.data
        if data.allow_instruction_mismatch:
            continue
        path = resolve_source(data.source, data.local_source, data.data_root)
        key = (path, data.layout, tuple(sorted(data.columns.items())))
        if key not in seen:
            seen[key] = has_instructions(path, data.layout, data.columns)
        if not seen[key]:
            tasks = ", ".join(instructed)
            raise LayercutError(
                f"model {plan.label}: the {stage} training data {path} has no instructions, but "
                f"evaluation prepends task instructions to the queries of {tasks}; train on "
                "instructed data (data.layout: e5, or an instruction column) or set "
                f"{stage} data.allow_instruction_mismatch: true to acknowledge the mismatch")


def training_overlap(plan: ModelPlan) -> dict[str, dict[str, int]]:
    """For each evaluation task of the model: how many of its evaluated texts occur in the
    model's training triplets (query, positive or negative), compared through hashes."""
    from tasks.data import annotated_triplets, resolve_source
    from tasks.mteb_tasks import load_task, resolve_task_names
    from tasks.overlap import task_overlap, text_hashes

    data = plan.finetune.data
    path = resolve_source(data.source, data.local_source, data.data_root)
    annotated, _ = annotated_triplets(path, seed=0, invalid_rows="skip", columns=data.columns,
                                      layout=data.layout)
    training: set[int] = set()
    for batch in annotated.select_columns(["query", "positive", "negative"]).iter_batches(batch_size=65536):
        for column in ("query", "positive", "negative"):
            training |= text_hashes(batch[column])
    evaluate = plan.evaluate
    return {name: task_overlap(load_task(name, evaluate.data_root, evaluate.task_selection()), training)
            for name in resolve_task_names(evaluate.tasks)}  # checked in resolve_models


def latency_texts(plan: ModelPlan, count: int) -> list[str]:
    """Documents (positives) of the model's training data: what an encoder serves."""
    from tasks.data import resolve_source, sample_triplet_batches

    data = plan.finetune.data
    path = resolve_source(data.source, data.local_source, data.data_root)
    batches, _ = sample_triplet_batches(path, num_batches=1, batch_size=count, seed=0,
                                        invalid_rows="skip", columns=data.columns,
                                        layout=data.layout)
    return list(batches[0]["positive"])


def run(config: SweepConfig) -> dict[str, Any]:
    """Stage 1 per model, the Tune experiment over all trials, the report; returns the summary."""
    from pipelines import layer_loss
    from pipelines.report import write_report

    run_dir = config.run_dir().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    plans = resolve_models(config)
    # Before Ray and any GPU is asked for: a gated model without a token fails here, in one line.
    for name, revision in dict.fromkeys(model for plan in plans for model in plan.base_models()):
        check_model_access(name, revision)
    ensure_ray(config.address)
    concurrency = check_resources(plans, config.tune)
    for plan in (p for p in plans if p.contrastive):
        check_instructions(plan)  # before any work: training inputs as evaluation's
    guard_and_record(run_dir, config, plans)

    for plan in plans:
        if plan.contrastive:
            print(f"layercut: stage 1 for {plan.label}", file=sys.stderr)
            plan.stage1 = layer_loss.run(plan.layer_loss, show_progress=config.show_progress)
            plan.total_layers = plan.stage1["num_layers"]
        else:
            plan.total_layers = _total_layers(plan.finetune)
    for plan in plans:
        if plan.contrastive:
            plan.overlap = training_overlap(plan)
            for name, counts in plan.overlap.items():
                if counts["overlapping"]:
                    print(f"layercut: {plan.label}: {counts['overlapping']} of {counts['texts']} texts of "
                          f"{name} occur in the training data; its scores are marked", file=sys.stderr)
    trials = plan_trials(plans, config.l3prune, config.classification)
    check_one_trial_per_count(trials)
    print(f"layercut: {len(trials)} trials: " + ", ".join(t.key for t in trials), file=sys.stderr)
    zero_shot = _zero_shot(config, plans, run_dir) if config.classification.zero_shot else {}
    texts = {plan.label: latency_texts(plan, config.latency.texts) for plan in plans if plan.contrastive}
    outcomes = _tune(config, plans, trials, texts, concurrency, run_dir)
    return write_report(run_dir, config, plans, trials, outcomes, zero_shot)


def describe_plan(config: SweepConfig) -> str:
    """The trials ``config`` would run, without training or starting Ray (`layercut run --plan`):
    per model its layer count and global batch, then one line per trial (key, layers kept,
    origins). L3Prune picks come from stage 1's selection.json when this run directory holds one
    of the same configuration; otherwise they are listed as "after stage 1"."""
    run_dir = config.run_dir().resolve()
    marker = run_dir / SWEEP_RECORD
    recorded = json.loads(marker.read_text()).get("models", {}) if marker.exists() else {}
    lines = []
    for plan in resolve_models(config):
        training, workers = plan.finetune.training, plan.finetune.workers.num_workers
        batch = (f"global batch {training.batch_size * workers} ({workers} workers x {training.batch_size})"
                 if workers != "auto" else f"batch {training.batch_size} per worker, one worker per GPU")
        try:
            plan.total_layers = _total_layers(plan.finetune)
        except LayercutError as error:  # e.g. a hub model offline: depths stay symbolic
            lines.append(f"{plan.label}: {batch}, {training.steps} steps; layer count unknown ({error})")
            lines += [f"  {plan.label}: grid {depth}" for depth in plan.grid]
            continue
        lines.append(f"{plan.label}: {plan.total_layers} layers, {batch}, {training.steps} steps")
        selection = plan.layer_loss.run_dir().resolve() / "selection.json" if plan.contrastive else None
        picked = selection is not None and selection.exists() and recorded.get(plan.label) == _fingerprint(plan)
        plan.stage1 = json.loads(selection.read_text()) if picked else {"num_layers": plan.total_layers}
        for trial in plan_trials([plan], config.l3prune and picked, config.classification):
            task = f" on {trial.dataset}" if trial.dataset else ""
            which = f" ({trial.depth})" if trial.kept else ""
            lines.append(f"  {trial.key}: {trial.layers}/{plan.total_layers} layers{which}{task} "
                         f"({', '.join(trial.origins)})")
        if plan.contrastive and config.l3prune and not picked:
            lines.append(f"  {plan.label}: L3Prune small and large depths after stage 1")
    return "\n".join(lines)


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


def trial_specs(config: SweepConfig, plans: list[ModelPlan], trials: list[Trial],
                texts: dict[str, list[str]], run_dir: Path) -> dict[str, TrialSpec]:
    """{trial key: TrialSpec}: each trial's stage configs at its depth, inside ``run_dir``."""
    from pipelines.trial import TrialSpec
    from pipelines.untrained import untrained_evaluation

    specs = {}
    for trial in trials:
        plan = next(p for p in plans if p.label == trial.model)
        finetune = plan.classifiers[trial.dataset] if trial.dataset else plan.finetune
        contrastive = trial.dataset is None
        specs[trial.key] = TrialSpec(
            key=trial.key, model=trial.model, layers=trial.layers, origins=trial.origins,
            finetune=finetune.model_copy(update={"layers": trial.depth, "name": f"{trial.key}/finetune"}),
            evaluate=plan.evaluate if contrastive else None,
            latency_texts=texts.get(trial.model, []), latency_batch_size=config.latency.batch_size,
            result_dir=str(run_dir / "trials" / trial.key), dataset=trial.dataset,
            classify=None if contrastive else plan.classify.get(trial.dataset),
            probe_tasks=tuple(plan.probe_tasks) if contrastive else (),
            overlap=plan.overlap if contrastive else None,
            untrained=untrained_evaluation(plan.evaluate, finetune, trial.key, trial.depth)
            if contrastive and config.untrained_baseline else None)
    return specs


def _tune(config: SweepConfig, plans, trials: list[Trial], texts, concurrency, run_dir: Path):
    """Run (or resume) the Tune experiment; returns {trial key: result dict or error text}."""
    import ray.tune as tune

    from pipelines.trial import run_trial

    specs = trial_specs(config, plans, trials, texts, run_dir)
    trainable = tune.with_resources(tune.with_parameters(run_trial, specs=specs),
                                    dict(config.tune.driver_resources))
    # One experiment per trial list: changing the grid starts a new experiment, whose trials
    # that already finished return their saved result at once.
    keys = sorted(specs)
    experiment = "tune-" + hashlib.sha256(json.dumps(["v2", *keys]).encode()).hexdigest()[:8]
    path = run_dir / experiment
    if tune.Tuner.can_restore(str(path)):
        print(f"layercut: resuming the Tune experiment in {path}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search([trial_params(specs[key]) for key in keys])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency,
                                        trial_dirname_creator=lambda t: t.config["trial"]["key"]),
            run_config=tune.RunConfig(
                name=experiment, storage_path=str(run_dir), callbacks=logger_callbacks(config.tune),
                failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
                verbose=1))
    with user_errors_from_ray():
        grid = tuner.fit()
    outcomes: dict[str, Any] = {}
    for result in grid:
        key = result.config["trial"]["key"]
        if result.error is not None:
            cause = layercut_cause(result.error)
            text = str(cause) if cause else str(result.error).strip().splitlines()[-1]
            outcomes[key] = {"error": text}
        else:
            outcomes[key] = _read_result(Path(specs[key].result_dir))
    return outcomes


def trial_params(spec) -> dict[str, Any]:
    """A trial's Tune parameters: its real settings, so Tune's tables and loggers (TensorBoard
    hparams, MLflow params) show score against layers kept, not an opaque key."""
    return {"key": spec.key, "model": spec.model, "base_model": spec.finetune.model.name_or_path,
            "layers": spec.layers, "origins": ", ".join(spec.origins),
            "objective": "classification" if spec.dataset else "contrastive", "dataset": spec.dataset or ""}


def logger_callbacks(tune_section: TuneSection) -> list:
    """Tune's CSV and JSON result loggers, plus the ones the config switches on. Tune's automatic
    loggers are off, so TensorBoard event files appear only when asked for."""
    import os

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks = [CSVLoggerCallback(), JsonLoggerCallback()]
    for name in tune_section.loggers:
        try:
            if name == "tensorboard":
                callbacks.append(TBXLoggerCallback())
            elif name == "mlflow":
                from ray.air.integrations.mlflow import MLflowLoggerCallback

                callbacks.append(MLflowLoggerCallback(**{"experiment_name": "layercut", **tune_section.mlflow}))
            else:
                from ray.air.integrations.wandb import WandbLoggerCallback

                callbacks.append(WandbLoggerCallback(**{"project": "layercut", **tune_section.wandb}))
        except (ImportError, ModuleNotFoundError) as error:
            raise LayercutError(f"tune.loggers: {name} needs its package ({error}): pip install {name}") from None
    return callbacks


def _read_result(trial_dir: Path) -> dict[str, Any]:
    from pipelines.trial import RESULT_FILE

    result = RunStore(trial_dir).finished(RESULT_FILE, announce=False)
    if result is None:  # Tune stopped (Ctrl-C) before the trial ended
        return {"error": "not finished; rerun the same command to resume it"}
    return result


def render(config: SweepConfig, summary: dict[str, Any]) -> int:
    """The report, then exit status 1 when a trial failed (rerunning retries it)."""
    run_dir = Path(summary["run_dir"])
    print((run_dir / "report.md").read_text())
    print(f"report, plots and every trial's model in {run_dir}")
    if summary["failed"]:
        print(f"layercut: error: {len(summary['failed'])} trial(s) failed: "
              f"{', '.join(summary['failed'])}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


# `layercut run` (registered in pipelines/cli.py); --plan previews the trials
ENTRY = Stage(SweepConfig, STAGE, run, render, preview=describe_plan)

if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: what `layercut run` runs.
    from pipelines import sweep

    sys.exit(run_as_script("run", sweep.ENTRY))
