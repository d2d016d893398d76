"""The contract of a route: what one use case of a cut model brings to the sweep, end to end.

A route is one way to use a model cut to a depth, with its own training objective, evaluation
and report: the contrastive embedding route (L3Prune: InfoNCE, MTEB) and the prompt-based
classification route ("Why Lift so Heavy?": verbalizer loss, accuracy). A model entry of the
sweep names the routes it runs (``objectives: [contrastive, classification]``); the sweep, a
trial and the report call the routes in ``pipelines.routes.registry.ROUTES`` (a ``Route``
each) and never ask which one they hold. Stage 2 (pipelines/finetune.py) takes its
objective-specific steps from the route named by its ``objective`` key (``Route.training``).

Each piece, in the order of a run:

| step | method | contrastive | classification |
|---|---|---|---|
| resolve a model entry | ``resolve`` | stage 1 and stage 3 configs, probes | per dataset: stage 2 and stage 3 |
| admit the cluster | ``stage_workers`` | evaluate, layer_loss | classify |
| measure serving | ``serving_texts`` | documents of the training data | none |
| before any work | ``check_inputs`` | instructions of training vs evaluation | nothing |
| before the trials | ``prepare`` | stage 1 (L3Prune picks), train/test overlap | the layer count |
| plan | ``trials`` | grid + L3Prune picks | per dataset, its depths |
| `--plan` | ``preview`` | stage 1's recorded picks | nothing |
| references | ``references`` | none | zero-shot accuracy of the unpruned model |
| a trial's configs | ``finetune_config``, ``trial_configs`` | evaluate, untrained, probes | its dataset's stage 2, classify |
| after training | ``evaluate_trial`` | MTEB, untrained, probes, card, latency | accuracy, macro-F1 |
| Tune's metrics | ``tune_metrics`` | per-type means, probes | none |
| report | ``report`` | report.md's main table, report.csv, figures | its section, classification.csv |

Stage 2's part is a ``TrainingRoute`` (below); its ``artifact_fields`` hands the export the
route's ``ArtifactWriter`` (tasks/export/artifact.py: the artifact's own files, layercut.json
keys and card). A route's ``artifact.py`` names what its exported models are for; a stage
refuses another route's artifact through pipelines/routes/artifacts.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pipelines.run_store.location import parent, run_path

if TYPE_CHECKING:
    from pipelines.results import FinetuneResult
    from pipelines.schemas.finetune import FinetuneConfig
    from pipelines.schemas.sweep import ClassificationRoute, ModelEntry, SweepConfig
    from pipelines.sweep_plan import ModelPlan, Trial
    from pipelines.trial import TrialSpec
    from tasks.training.objectives import ClassificationObjective, ContrastiveObjective


@dataclass(frozen=True)
class ResolveContext:
    """What a route needs to resolve its stage configs for one model entry of the sweep.

    ``finetune_trees`` are stage 2's override trees (run-wide, the entry's, the sweep's own keys);
    ``data`` the data-root tree (``{"data_root": ...}`` or empty), ``wait`` the autoscaling
    tree of a stage's workers, ``common`` the workers' address tree; ``run_dir`` is the sweep's
    run directory: an absolute Path, or a URI (join with ``run_store.location.run_path``).
    """

    config: SweepConfig
    entry: ModelEntry
    label: str
    run_dir: Path | str
    data: dict[str, Any]
    wait: dict[str, Any]
    common: dict[str, Any]
    finetune_trees: list[dict[str, Any]]


@dataclass(frozen=True)
class TrialOptions:
    """The sweep-wide choices trial planning reads: which L3Prune picks join the grid ("small",
    "large"; empty: none), and the classification section (its datasets' depths; None: no
    classification trials)."""

    l3prune: tuple[str, ...]
    classification: ClassificationRoute | None = None


def l3prune_picks(setting: bool | str) -> tuple[str, ...]:
    """The L3Prune picks a sweep's ``l3prune`` setting adds to the grid: true both ("small",
    "large"), false none, "small" or "large" that one. Here, below the routes and the sweep,
    so that the sweep's planning (``TrialOptions.l3prune``) and the contrastive route's `--plan`
    preview read the setting alike."""
    if isinstance(setting, str):
        return (setting,)
    return ("small", "large") if setting else ()


@dataclass
class RouteReport:
    """One route's part of the sweep's report: its rows (one per trial, ``status`` "done" or
    "failed", ``key`` the trial key), its report.md text (``""``: nothing to add), its keys
    of summary.json in order, and the keys of its failed trials."""

    rows: list[dict[str, Any]]
    markdown: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [row["key"] for row in self.rows if row["status"] != "done"]


@dataclass(frozen=True)
class TrainingInputs:
    """What stage 2 trains on: the objective (tasks/training/objectives.py), the training data's path and
    column mapping, the label names (classification; else None) and the objective's part of the
    settings that fingerprint the run (their key order is the fingerprint's)."""

    objective: ContrastiveObjective | ClassificationObjective
    data_path: str
    columns: dict[str, str]
    label_names: list[str] | None
    settings: dict[str, Any]


class TrainingRoute(Protocol):
    """Stage 2's objective-specific steps (pipelines/finetune.py), in the order it calls them."""

    lm_head: bool  # the cut model keeps its LM head (counted in its parameters)
    loss_label: str  # the y label of the loss curve

    def resolve(self, config: FinetuneConfig) -> FinetuneConfig:
        """``config`` as stage 2 runs it (and records it): the settings one of its sections lends
        the objective's (the classification data gets the data root of ``data``); the
        caller's config is left as it is."""

    def name_suffix(self, config: FinetuneConfig) -> str:
        """The objective's part of the default run name (``FinetuneConfig.run_dir``'s ``task``):
        "" or "-<dataset>"."""

    def wrapper(self, config: FinetuneConfig, tokenizer) -> tuple[str, str] | None:
        """Checks the input format against the tokenizer before Ray starts; returns the rendered
        (prefix, suffix) wrapper when the fingerprint depends on it."""

    def inputs(self, config: FinetuneConfig, tokenizer, wrapper: tuple[str, str] | None) -> TrainingInputs:
        """What the run trains on (label names may be read through Ray Data: Ray is up); a
        prompt that cannot work with the tokenizer fails here, before any worker starts."""

    def read(self, config: FinetuneConfig, inputs: TrainingInputs) -> tuple[Any, dict[str, Any]]:
        """(annotated Ray Dataset of the training rows, data report with ``rows``,
        ``skipped_rows``, ``first_problem``)."""

    def artifact_fields(self, config: FinetuneConfig, inputs: TrainingInputs) -> dict[str, Any]:
        """The objective's fields of the artifact's ``ArtifactInfo`` (tasks/export/artifact.py),
        ``writer`` among them: the ``ArtifactWriter`` of its kind of artifact (its files, its keys
        of layercut.json, its model card), which the export calls without naming the route."""


@dataclass(frozen=True)
class Route:
    """One route of the sweep: its name and the steps it supplies (the module docstring's table
    says when each runs). A route package builds one in its ``route.py`` from its modules'
    functions; ``pipelines.routes.registry.ROUTES`` registers it.

    Args:
        name: the objective's name: a model entry's ``objectives`` item, stage 2's ``objective``.
        training: stage 2's steps for this objective (``TrainingRoute``).
        active: ``(plan) -> bool``: whether the model runs this route (its configs are resolved).
        resolve: ``(ResolveContext, plan) -> None``: fill the plan's stage configs of this route,
            validating every key now; raises ``LayercutError`` naming the model and the stage.
            A route without fields in ``ModelPlan`` keeps them in ``plan.routes[name]`` (a dict:
            what sweep.json's fingerprint records of it, configs dumped without ``workers``).
        stage_workers: ``(plan) -> [(stage name, workers section)]``: the stages it runs besides
            stage 2, for the resource admission (pipelines/sweep_resources.py).
        check_inputs: ``(plan) -> None``: refuse, before any work, inputs that would make the
            results meaningless (``LayercutError``).
        prepare: ``(SweepConfig, plan) -> None``: the work before the trials; sets
            ``plan.total_layers`` when a route before it has not.
        trials: ``(plan, total layers, TrialOptions) -> [Trial]``: its trials of the model, each
            naming this route (``pipelines.sweep_plan.trials_of(name, ...)``).
        preview: ``(plan, same configuration recorded, SweepConfig) -> [line]``: for `layercut
            run --plan`, before any work: load what an earlier run of the same configuration
            decided (stage 1's picks) and return lines on what only the run will decide.
        serving_texts: ``(plan, count) -> [str] | None``: texts to measure encode latency on.
        references: ``(SweepConfig, plans, run dir) -> {key: stage result}``: what the report
            compares its trials with (the zero-shot ``ClassifyResult``s), computed once before
            the trials.
        finetune_config: ``(plan, trial) -> FinetuneConfig``: stage 2's config of a trial,
            before its depth and run name are set.
        trial_configs: ``(SweepConfig, plan, trial) -> {TrialSpec field: value}``: its stage
            configs of a trial (pipelines/trial.py ``TrialSpec``; a route without fields there
            returns ``{"configs": {...}}``).
        evaluate_trial: ``(TrialSpec, FinetuneResult) -> result``: stage 3 and the rest of a
            trial after training (given stage 2's result); the result, a dict of the route's
            keys around stage 2's (``trial_result``), is saved as result.json.
        tune_metrics: ``(result) -> {name: number}``: metrics Tune gets beside the result's
            numbers (nested scores flattened).
        report: ``(SweepConfig, plans, trials, outcomes, references, run dir, earlier) ->
            RouteReport``: write its plots and CSV files into the run dir and return its part of
            report.md and summary.json; ``earlier``: the reports of the routes before it.
        after_trials: ``(specs, outcomes) -> outcomes``: what the route measures once every
            trial has ended, added to its trials' outcomes before the report (the contrastive
            route: encode latency and memory, one depth at a time); by default nothing.
    """

    name: str
    training: TrainingRoute
    active: Callable[[ModelPlan], bool]
    resolve: Callable[[ResolveContext, ModelPlan], None]
    stage_workers: Callable[[ModelPlan], list[tuple[str, Any]]]
    check_inputs: Callable[[ModelPlan], None]
    prepare: Callable[[SweepConfig, ModelPlan], None]
    trials: Callable[[ModelPlan, int, TrialOptions], list[Trial]]
    preview: Callable[[ModelPlan, bool, SweepConfig], list[str]]
    serving_texts: Callable[[ModelPlan, int], list[str] | None]
    references: Callable[[SweepConfig, list[ModelPlan], Path | str], dict[str, Any]]
    finetune_config: Callable[[ModelPlan, Trial], FinetuneConfig]
    trial_configs: Callable[[SweepConfig, ModelPlan, Trial], dict[str, Any]]
    evaluate_trial: Callable[[TrialSpec, FinetuneResult], dict[str, Any]]
    tune_metrics: Callable[[dict[str, Any]], dict[str, float]]
    report: Callable[..., RouteReport]
    after_trials: Callable[[dict[str, TrialSpec], dict[str, Any]], dict[str, Any]] = \
        lambda specs, outcomes: outcomes


def nothing(*args: Any) -> None:
    """A step a route does not need (e.g. no checks before work)."""
    return None


def trial_result(spec: TrialSpec, trained: FinetuneResult, *, scores: dict[str, Any],
                 throughput: dict[str, Any], identity: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """result.json's record of a trial (``Route.evaluate_trial``): the keys every route takes
    from the trial and stage 2's result, with the route's own keys in their places. The order is
    the one every result.json has had:

    trial, model, base_model, *identity*, layers, total_layers, origins, parameters,
    parameters_full, parameters_removed_pct, *scores*, final_loss, first_loss, steps,
    *throughput*, artifact, training_log, train_workers, *extra*.

    Args:
        spec: the trial (``TrialSpec``: its key, model label, layers and origins).
        trained: stage 2's result of it (``FinetuneResult``: base model, sizes, losses, artifact).
        scores: stage 3's scores of the artifact (the route's keys).
        throughput: stage 3's throughput (texts/s), and what else was measured on the artifact.
        identity: what the trial is besides its model (classification: objective, dataset).
        extra: the route's keys after all the others.
    """
    return {
        "trial": spec.key, "model": spec.model, "base_model": trained.model, **(identity or {}),
        "layers": spec.layers, "total_layers": trained.total_layers, "origins": list(spec.origins),
        "parameters": trained.parameters, "parameters_full": trained.parameters_full,
        "parameters_removed_pct": trained.parameters_removed_pct,
        **scores,
        "final_loss": trained.final_loss, "first_loss": trained.first_loss, "steps": trained.steps,
        **throughput,
        "artifact": trained.artifact,
        "training_log": str(run_path(parent(trained.artifact), "training_log.csv")),
        "train_workers": trained.train_workers,  # rank -> Ray node that trained it
        **(extra or {}),
    }
